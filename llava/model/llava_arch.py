"""What turns a causal language model into LLaVA: a vision tower, a projector, and the splice of image features
into the token embeddings (upstream's mixins ``LlavaMetaModel`` and ``LlavaMetaForCausalLM``, same names).

The splice (:meth:`LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal`) keeps upstream's semantics exactly:
every ``IMAGE_TOKEN_INDEX`` (-200) in ``input_ids`` is replaced by the features of the next image, a sample without
an image token still consumes one image (the zero image the data collator gives text-only samples), labels are
``IGNORE_INDEX`` over image features, padding is removed and re-applied on ``config.tokenizer_padding_side``, and
sequences are truncated to ``config.tokenizer_model_max_length``. Unlike upstream's per-sample Python loop it is
vectorised: output positions come from cumulative sums, all text tokens of the batch go through ONE embedding call
straight into the output tensor and the image features are written into it with one indexed copy; the only host
synchronisation is reading the batch's output length.

Packed batches (``--packing``; position ids and no attention mask, see :func:`is_packed_batch`) hold several samples
per row: there the position ids are carried through the image features and restart at every sample, which is how
transformers' attention keeps each sample to itself.

One deliberate difference: padding positions hold the embedding of token 0 instead of zeros. They are masked out of
attention and carry ``IGNORE_INDEX`` labels, so logits at real positions and the loss are unchanged, and skipping
the zero fill saves a full pass over the output.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn as nn

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_PATCH_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.distributed.zero3 import gathered_for_modification
from llava.mm_utils import get_anyres_image_grid_shape

from .multimodal_encoder.builder import build_vision_tower
from .multimodal_projector.builder import build_vision_projector

logger = logging.getLogger(__name__)

PROJECTOR_KEY = "mm_projector."


class LlavaMetaModel:
    """Mixed into the base model (``LlamaModel``): owns ``vision_tower``, ``mm_projector`` and ``image_newline``."""

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "mm_vision_tower", None) is not None:
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)
            if "unpad" in getattr(config, "mm_patch_merge_type", ""):
                self.image_newline = nn.Parameter(torch.zeros(config.hidden_size, dtype=self.dtype))

    def get_vision_tower(self):
        vision_tower = getattr(self, "vision_tower", None)
        if isinstance(vision_tower, list):  # kept out of the module tree under FSDP, as upstream
            vision_tower = vision_tower[0]
        return vision_tower

    def initialize_vision_modules(self, model_args, fsdp=None) -> None:
        """Attach (or load) the vision tower and projector described by training arguments.

        Records the ``mm_*`` fields in ``self.config`` as upstream does, creates the projector unless the model
        already has one (then it is made trainable again, in case LoRA froze it), and loads
        ``model_args.pretrain_mm_mlp_adapter`` (an ``mm_projector.bin``) into it.
        """
        vision_tower_name = model_args.vision_tower
        merge_type = model_args.mm_patch_merge_type
        self.config.mm_vision_tower = vision_tower_name
        use_fsdp = fsdp is not None and len(fsdp) > 0

        if self.get_vision_tower() is None:
            vision_tower = build_vision_tower(model_args)
            self.vision_tower = [vision_tower] if use_fsdp else vision_tower
        else:
            vision_tower = self.get_vision_tower()
            vision_tower.load_model()

        self.config.use_mm_proj = True
        self.config.mm_projector_type = getattr(model_args, "mm_projector_type", "linear")
        self.config.mm_hidden_size = vision_tower.hidden_size
        self.config.mm_vision_select_layer = model_args.mm_vision_select_layer
        self.config.mm_vision_select_feature = model_args.mm_vision_select_feature
        self.config.mm_patch_merge_type = merge_type
        if getattr(vision_tower, "s2_scales", None) is not None:  # what build_vision_tower reads back at load time
            self.config.s2, self.config.s2_scales = True, ",".join(map(str, vision_tower.s2_scales))

        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(self.config)
        else:
            for param in self.mm_projector.parameters():
                param.requires_grad = True
        if "unpad" in merge_type and getattr(self, "image_newline", None) is None:
            # Also when the projector came with the checkpoint: a LLaVA-1.5 model (flat merge, no newline) moved to
            # 1.6-style spatial_unpad tiles has none yet; it is trained from here and saved with the projector
            # (docs/upstream_differences.md #14).
            std = self.config.hidden_size**-0.5
            self.image_newline = nn.Parameter(torch.randn(self.config.hidden_size, dtype=self.dtype) * std)

        if model_args.pretrain_mm_mlp_adapter is not None:
            self.load_mm_projector(model_args.pretrain_mm_mlp_adapter)

    def load_mm_projector(self, path) -> None:
        """Load projector weights from an ``mm_projector.bin`` (keys containing ``mm_projector.``): a local file or
        ``owner/name/mm_projector.bin`` on the hub."""
        from llava.model.hub import resolve_file
        from llava.model.state_files import load_state_file

        path = resolve_file(path, what="--pretrain_mm_mlp_adapter")
        state = load_state_file(path)
        weights = {key.split(PROJECTOR_KEY, 1)[1]: value for key, value in state.items() if PROJECTOR_KEY in key}
        if not weights:
            raise ValueError(
                f"{path} holds no projector weights (no key contains {PROJECTOR_KEY!r}); pass the mm_projector.bin "
                "written by a projector-pretraining run (--tune_mm_mlp_adapter True)."
            )
        with gathered_for_modification(list(self.mm_projector.parameters())):
            try:
                self.mm_projector.load_state_dict(weights)
            except RuntimeError as error:
                raise ValueError(
                    f"The projector in {path} does not fit this model ({self.config.mm_projector_type}, "
                    f"{self.config.mm_hidden_size} -> {self.config.hidden_size}): {error}. Check --mm_projector_type "
                    "and that the adapter was pretrained for this language model and vision tower."
                ) from None


def unpad_image(tensor: torch.Tensor, original_size) -> torch.Tensor:
    """Crop the padding ``resize_and_pad_image`` added back off a (C, H, W) feature map.

    ``original_size`` is the image's (width, height) before anyres processing.
    """
    original_width, original_height = original_size
    height, width = tensor.shape[1:]
    if original_width / original_height > width / height:
        new_height = int(original_height * (width / original_width))
        padding = (height - new_height) // 2
        return tensor[:, padding : height - padding, :]
    new_width = int(original_width * (height / original_height))
    padding = (width - new_width) // 2
    return tensor[:, :, padding : width - padding]


class LlavaMetaForCausalLM(ABC):
    """Mixed into the causal LM: image encoding, the multimodal splice and vision-token setup."""

    @abstractmethod
    def get_model(self):
        """The base model carrying the LlavaMetaModel parts."""

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        features = self.get_model().get_vision_tower()(images)
        projector = self.get_model().mm_projector
        first_param = next(projector.parameters(), None)
        if first_param is not None:
            # The collator hands float32 pixels; the projector may be bf16 (or fp16 on GPU).
            features = features.to(first_param.dtype)
        return projector(features)

    # ------------------------------------------------------------------------------------------------------------
    # Image features

    def _image_features(self, images, image_sizes):
        """(N, P, D) for a plain 4-D batch; else one (P_i, D) tensor per image after the patch merge."""
        if not (isinstance(images, list) or images.ndim == 5):
            return self.encode_images(images)
        if isinstance(images, list):
            images = [image.unsqueeze(0) if image.ndim == 3 else image for image in images]
        split_sizes = [image.shape[0] for image in images]
        features = torch.split(self.encode_images(torch.cat(list(images), dim=0)), split_sizes, dim=0)
        return self._merge_patches(features, image_sizes)

    def _merge_patches(self, features, image_sizes) -> list[torch.Tensor]:
        merge_type = getattr(self.config, "mm_patch_merge_type", "flat")
        if merge_type == "flat":
            return [feature.flatten(0, 1) for feature in features]
        if not merge_type.startswith("spatial"):
            raise ValueError(f"Unexpected mm_patch_merge_type: {merge_type!r} (use flat, spatial or spatial_unpad)")
        unpad = "unpad" in merge_type
        merged = []
        for index, feature in enumerate(features):
            if feature.shape[0] == 1:
                feature = feature[0]
                if unpad:
                    feature = torch.cat((feature, self.get_model().image_newline[None].to(feature)), dim=0)
                merged.append(feature)
                continue
            base, tiles = feature[0], feature[1:]
            tiles = self._arrange_tiles(tiles, base, image_sizes, index, unpad)
            merged.append(torch.cat((base, tiles), dim=0))
        return merged

    def _arrange_tiles(self, tiles, base, image_sizes, index, unpad) -> torch.Tensor:
        """Lay anyres tile features out row by row (spatial), optionally cropped and with a newline per row."""
        vision_tower = self.get_vision_tower()
        side = vision_tower.num_patches_per_side
        if side * side != base.shape[0]:
            raise ValueError(f"the base image has {base.shape[0]} features; expected {side}x{side} patches")
        if getattr(self.config, "image_aspect_ratio", "square") != "anyres":
            raise NotImplementedError("spatial patch merging needs image_aspect_ratio 'anyres'")
        if image_sizes is None:
            raise ValueError("anyres images need image_sizes (each image's original (width, height))")
        columns, rows = get_anyres_image_grid_shape(
            image_sizes[index], self.config.image_grid_pinpoints, vision_tower.config.image_size
        )
        tiles = tiles.view(rows, columns, side, side, -1)
        if not unpad:
            return tiles.permute(0, 2, 1, 3, 4).flatten(0, 3)
        grid = tiles.permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # (D, rows*side, columns*side)
        grid = unpad_image(grid, image_sizes[index])
        newline = self.get_model().image_newline[:, None, None].expand(*grid.shape[:-1], 1).to(grid)
        return torch.cat((grid, newline), dim=-1).flatten(1, 2).transpose(0, 1)

    # ------------------------------------------------------------------------------------------------------------
    # The splice

    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None,
        padding_side=None,
    ):  # fmt: skip
        """Replace image tokens by image features; returns upstream's tuple
        ``(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)``.

        Inputs pass through unchanged (with ``inputs_embeds=None``) when there is no vision tower, no image, or a
        single-token step of generation. ``padding_side`` ("left"/"right") overrides
        ``config.tokenizer_padding_side`` (training's choice): batched generation needs the prompts left-padded.
        """
        vision_tower = self.get_vision_tower()
        packed = is_packed_batch(position_ids, attention_mask) and input_ids.shape[1] > 1
        if vision_tower is None or images is None or input_ids.shape[1] == 1:
            if packed:
                position_ids, labels = _unpad_packed_rows(input_ids, position_ids, labels)
                input_ids, position_ids, labels = self._rows_for_attention(input_ids, position_ids, labels)
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        if getattr(self.config, "tune_mm_mlp_adapter", False) and getattr(self.config, "mm_use_im_start_end", False):
            raise NotImplementedError("projector pretraining with mm_use_im_start_end is not supported (as upstream)")

        features = self._image_features(images, image_sizes)
        if packed:
            embeds, new_labels, _, new_positions = self._splice(
                input_ids, None, labels, features, packed_position_ids=position_ids
            )
            embeds, new_positions, new_labels = self._rows_for_attention(embeds, new_positions, new_labels)
            return None, new_positions, None, past_key_values, embeds, new_labels
        embeds, new_labels, new_mask, new_positions = self._splice(
            input_ids, attention_mask, labels, features, padding_side
        )
        return (
            None,
            new_positions if position_ids is not None else None,
            new_mask.to(attention_mask.dtype) if attention_mask is not None else None,
            past_key_values,
            embeds,
            new_labels if labels is not None else None,
        )

    def _rows_for_attention(self, values, position_ids, labels):
        """Packed rows as the attention implementation takes them: flash-attention reads packing from the position
        ids of ONE row only (transformers' varlen path), SDPA and eager from each row's position ids."""
        if values.shape[0] == 1 or not str(getattr(self.config, "_attn_implementation", "")).startswith("flash"):
            return values, position_ids, labels
        flat = values.reshape(1, -1, *values.shape[2:])
        return flat, position_ids.reshape(1, -1), labels.reshape(1, -1) if labels is not None else None

    def _splice(self, input_ids, attention_mask, labels, features, padding_side=None, packed_position_ids=None):
        """The vectorised splice, in three steps: where everything goes (:func:`splice_layout`, position arithmetic
        only), the writes of text embeddings, image features and labels there (:func:`write_embeddings`,
        :func:`place_labels`), and the output position ids.

        With ``packed_position_ids`` (a packed batch, see :func:`is_packed_batch`), rows hold several samples: image
        tokens take the images in order with no placeholder per row, row padding (position -1) is dropped, and the
        output position ids restart at every sample (:func:`packed_positions`), so that transformers' mask (or
        flash-attention's varlen split) keeps attention inside each sample."""
        packed = packed_position_ids is not None
        if packed:
            keep = packed_position_ids >= 0
        elif attention_mask is not None:
            keep = attention_mask.bool()
        else:
            keep = torch.ones_like(input_ids, dtype=torch.bool)
        if padding_side is None:
            padding_side = getattr(self.config, "tokenizer_padding_side", "right")
        flat, image_of_row, offset_in_image, feature_lengths = _flatten_features(features, input_ids.device)
        layout = splice_layout(
            input_ids, keep, feature_lengths, image_of_row, offset_in_image,
            placeholder_per_text_sample=not packed,
            left_padded=not packed and padding_side == "left",
            max_length=getattr(self.config, "tokenizer_model_max_length", None),
        )  # fmt: skip
        embeds = write_embeddings(self.get_model().embed_tokens, input_ids, flat, layout)
        new_labels = None if labels is None else place_labels(labels, layout)
        new_mask = layout.attention_mask()
        positions = packed_positions(layout, packed_position_ids) if packed else layout.padded_positions()
        return embeds, new_labels, new_mask, positions

    # ------------------------------------------------------------------------------------------------------------
    # Tokenizer

    def initialize_vision_tokenizer(self, model_args, tokenizer) -> None:
        """Add LLaVA's optional image tokens to ``tokenizer`` and size the embeddings to match (as upstream)."""
        start_end_ids = add_image_tokens(
            self, tokenizer, patch_token=model_args.mm_use_im_patch_token, start_end=model_args.mm_use_im_start_end
        )
        if model_args.mm_use_im_start_end:
            added = len(start_end_ids)
            init_rows_at_mean(self, start_end_ids)
            if model_args.tune_mm_mlp_adapter:
                self.get_input_embeddings().requires_grad_(True)
                self.get_output_embeddings().requires_grad_(False)
            if model_args.pretrain_mm_mlp_adapter:
                self._load_pretrained_image_token_embeddings(model_args.pretrain_mm_mlp_adapter, added)
        elif model_args.mm_use_im_patch_token and model_args.tune_mm_mlp_adapter:
            self.get_input_embeddings().requires_grad_(False)
            self.get_output_embeddings().requires_grad_(False)

    def _load_pretrained_image_token_embeddings(self, path, added: int) -> None:
        from llava.model.state_files import load_state_file

        pretrained = load_state_file(path).get("model.embed_tokens.weight")
        if pretrained is None:
            raise ValueError(
                f"{path} has no 'model.embed_tokens.weight', which --mm_use_im_start_end needs from a projector "
                "pretrained with --mm_use_im_start_end True."
            )
        if added != 2:
            raise ValueError(f"expected 2 new image start/end tokens in the tokenizer, {added} were added")
        embeddings = self.get_input_embeddings().weight
        with gathered_for_modification([embeddings]), torch.no_grad():
            if pretrained.shape == embeddings.shape:
                embeddings[-added:] = pretrained[-added:]
            elif pretrained.shape[0] == added:
                embeddings[-added:] = pretrained
            else:
                raise ValueError(
                    f"Unexpected embed_tokens_weight shape in {path}: {tuple(pretrained.shape)}; the model has "
                    f"{tuple(embeddings.shape)} and {added} new tokens."
                )


def add_image_tokens(model, tokenizer, *, patch_token: bool, start_end: bool) -> list[int]:
    """Add ``<im_patch>`` and/or ``<im_start>``/``<im_end>`` to ``tokenizer`` and grow ``model``'s embeddings to fit.

    The one place both training and the loader size the embeddings for LLaVA's image tokens. The embeddings are only
    ever grown (upstream resizes to the tokenizer's length, which would cut trained rows off a padded vocabulary).
    Returns the ids of the start/end tokens that were new to the tokenizer.
    """
    if patch_token:
        tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    new_ids: list[int] = []
    if start_end:
        known = set(tokenizer.get_vocab())
        new_tokens = [token for token in (DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN) if token not in known]
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
        new_ids = tokenizer.convert_tokens_to_ids(new_tokens)
    # `num_embeddings` is the full row count, also while ZeRO-3 holds only a slice of the weight.
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return new_ids


def init_rows_at_mean(model, token_ids: list[int]) -> None:
    """Start the input and output embedding rows of newly added tokens at the mean of the rows before them (as
    upstream does for every token it adds)."""
    if not token_ids:
        return
    weights = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    first_new = min(token_ids)
    with gathered_for_modification(weights), torch.no_grad():
        for weight in weights:
            weight[token_ids] = weight[:first_new].mean(dim=0, keepdim=True)


def image_feature_length(model) -> int | None:
    """How many features the splice puts in place of one image token for a square or padded image (the vision
    tower's patches, plus its CLS token with mm_vision_select_feature 'cls_patch'); None without a vision tower."""
    vision_tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
    if vision_tower is None:
        return None
    return vision_tower.num_patches + (1 if getattr(vision_tower, "select_feature", "patch") == "cls_patch" else 0)


def is_packed_batch(position_ids, attention_mask) -> bool:
    """Whether a batch is packed (several samples per row, ``DataCollatorForSupervisedDataset(packing=PackingConfig(...))``).

    transformers' own convention: position ids and no attention mask. The ids restart at 0 for every sample and are
    -1 on row padding; transformers then keeps attention inside each sample (SDPA and eager build a block-diagonal
    causal mask from the position ids, flash-attention-2 runs varlen on one row).
    """
    return position_ids is not None and attention_mask is None


def _unpad_packed_rows(input_ids, position_ids, labels):
    """Packed rows without images: the row padding (position -1) becomes a segment of its own (positions from 0,
    labels ignored), so that no sample attends to it."""
    padding = position_ids < 0
    if not bool(padding.any()):
        return position_ids, labels
    real_length = (~padding).sum(dim=1, keepdim=True)
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    position_ids = torch.where(padding, columns - real_length, position_ids)
    if labels is not None:
        labels = labels.masked_fill(padding, IGNORE_INDEX)
    return position_ids, labels


@dataclass(frozen=True)
class SpliceLayout:
    """Where the splice puts every input position and every image feature row (see :func:`splice_layout`).

    Output rows are ``out_length`` wide; column ``out_length`` (one past the end) is a trash column that collects
    what is not written (masked positions, image tokens, what truncation cuts) and is sliced off."""

    start: torch.Tensor  # (batch, length) offset in its unpadded output row where each input position starts
    row_length: torch.Tensor  # (batch,) output length of each row, after truncation
    shift: torch.Tensor  # (batch,) columns of left padding before each row
    out_length: int
    text_columns: torch.Tensor  # (batch, length) output column of each text token, the trash column for the rest
    image_rows: torch.Tensor  # (feature rows,) output row of each image feature row
    image_columns: torch.Tensor  # (feature rows,) its output column, the trash column where it is cut or unused

    def columns(self) -> torch.Tensor:
        return torch.arange(self.out_length, device=self.row_length.device)[None, :]

    def attention_mask(self) -> torch.Tensor:
        """(batch, out_length) True over each row's tokens, False over its padding."""
        columns = self.columns()
        return (columns >= self.shift[:, None]) & (columns < (self.shift + self.row_length)[:, None])

    def padded_positions(self) -> torch.Tensor:
        """Position ids of one sample per row: 0, 1, ... from the row's first token, 0 over padding."""
        return torch.where(self.attention_mask(), self.columns() - self.shift[:, None], 0)


def splice_layout(
    input_ids: torch.Tensor,
    keep: torch.Tensor,
    feature_lengths: torch.Tensor,
    image_of_row: torch.Tensor,
    offset_in_image: torch.Tensor,
    *,
    placeholder_per_text_sample: bool,
    left_padded: bool,
    max_length: int | None,
) -> SpliceLayout:
    """The splice's position arithmetic: which image each image token takes, the output length of every input
    position, each row's output length (cut at ``max_length``), and so each text token's and each image feature
    row's output place. Reads no embedding; the one host synchronisation is the batch's output length.

    ``keep`` marks the input positions that are tokens (not padding). Images are consumed in order; with
    ``placeholder_per_text_sample`` (one sample per row) a row without image tokens consumes one (upstream's
    convention for the zero image of text-only samples); packed rows hold many samples, and there the collator puts
    the images of image tokens first, in order, and the placeholders last."""
    batch, length = input_ids.shape
    device = input_ids.device
    num_images = feature_lengths.shape[0]
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & keep

    images_per_sample = is_image.sum(dim=1)
    consumed = images_per_sample.clamp(min=1) if placeholder_per_text_sample else images_per_sample
    first_image = torch.cumsum(consumed, dim=0) - consumed
    image_index = torch.where(is_image, first_image[:, None] + torch.cumsum(is_image, dim=1) - 1, 0)

    token_length = torch.where(is_image, feature_lengths[image_index.clamp(max=max(num_images - 1, 0))], keep.long())
    start = torch.cumsum(token_length, dim=1) - token_length
    row_length = token_length.sum(dim=1)
    if max_length is not None:
        row_length = row_length.clamp(max=max_length)

    out_length, images_needed = torch.stack([row_length.max(), consumed.sum()]).tolist()
    if images_needed > num_images:
        raise ValueError(
            f"The batch needs {images_needed} images ({int(is_image.sum())} image tokens; a sample without an "
            f"image token takes one placeholder image) but {num_images} were given."
        )
    shift = (out_length - row_length) if left_padded else torch.zeros_like(row_length)
    trash = out_length

    is_text = keep & ~is_image & (start < row_length[:, None])
    text_columns = torch.where(is_text, start + shift[:, None], trash)

    # Where each image starts (row, unshifted offset); images no token refers to stay out of range.
    slot = torch.where(is_image, image_index, num_images).flatten()
    image_row = torch.zeros(num_images + 1, dtype=torch.long, device=device)
    image_row.scatter_(0, slot, torch.arange(batch, device=device).repeat_interleave(length))
    image_start = torch.full((num_images + 1,), torch.iinfo(torch.long).max // 2, device=device)
    image_start.scatter_(0, slot, start.flatten())
    rows = image_row[image_of_row]
    position = image_start[image_of_row] + offset_in_image
    columns = torch.where(position < row_length[rows], position + shift[rows], trash)
    return SpliceLayout(start, row_length, shift, out_length, text_columns, rows, columns)


def write_embeddings(
    embed_tokens: nn.Module, input_ids: torch.Tensor, flat_features: torch.Tensor, layout: SpliceLayout
) -> torch.Tensor:
    """The spliced embeddings: all text tokens of the batch through ONE embedding call, straight into their output
    columns, then the image feature rows written into theirs with one indexed copy."""
    batch = input_ids.shape[0]
    token_ids = torch.zeros(batch, layout.out_length + 1, dtype=input_ids.dtype, device=input_ids.device)
    token_ids.scatter_(1, layout.text_columns, input_ids.clamp(min=0))
    embeds = embed_tokens(token_ids)
    values = flat_features.to(device=embeds.device, dtype=embeds.dtype)
    if embeds.is_leaf and embeds.requires_grad:
        # enable_input_require_grads() made the embedding output a leaf: no in-place writes allowed.
        embeds = embeds.index_put((layout.image_rows, layout.image_columns), values)
    else:
        embeds.index_put_((layout.image_rows, layout.image_columns), values)
    return embeds[:, : layout.out_length]


def place_labels(labels: torch.Tensor, layout: SpliceLayout) -> torch.Tensor:
    """The labels in the spliced layout: each text token's label in its column, ``IGNORE_INDEX`` elsewhere (image
    features, padding)."""
    batch = labels.shape[0]
    placed = torch.full((batch, layout.out_length + 1), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    placed.scatter_(1, layout.text_columns, labels)
    return placed[:, : layout.out_length]


def packed_positions(layout: SpliceLayout, packed_position_ids: torch.Tensor) -> torch.Tensor:
    """Output position ids of packed rows: a sample starts where its first token (input position 0) lands; the
    padding after a row's samples is a segment of its own. Each output position counts from the start of its
    segment."""
    batch = packed_position_ids.shape[0]
    trash = layout.out_length
    keep = packed_position_ids >= 0
    starts = (packed_position_ids == 0) & keep & (layout.start < layout.row_length[:, None])
    segment_start = torch.zeros(batch, trash + 1, dtype=torch.bool, device=packed_position_ids.device)
    segment_start.scatter_(1, torch.where(starts, layout.start, trash), True)
    segment_start.scatter_(1, layout.row_length[:, None], True)
    segment_start = segment_start[:, :trash]
    segment_start[:, 0] = True
    columns = layout.columns()
    first_column = torch.cummax(torch.where(segment_start, columns, 0), dim=1).values
    return columns - first_column


def _flatten_features(features, device):
    """All image feature rows as one (R, D) tensor, plus per row its image and offset, and per image its length."""
    if isinstance(features, torch.Tensor):
        count, per_image, hidden = features.shape
        rows = torch.arange(count * per_image, device=device)
        lengths = torch.full((count,), per_image, dtype=torch.long, device=device)
        return features.reshape(count * per_image, hidden), rows // per_image, rows % per_image, lengths
    host_lengths = [feature.shape[0] for feature in features]
    total = sum(host_lengths)
    lengths = torch.tensor(host_lengths, dtype=torch.long, device=device)
    image_of_row = torch.repeat_interleave(torch.arange(len(host_lengths), device=device), lengths, output_size=total)
    starts = torch.cumsum(lengths, dim=0) - lengths
    offsets = torch.arange(total, device=device) - starts[image_of_row]
    return torch.cat(list(features), dim=0), image_of_row, offsets, lengths
