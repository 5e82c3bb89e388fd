"""Training data: LLaVA's JSON conversations as tokenised, masked samples with their images, and batching.

The dataset reads the whole file once (a JSON list, or JSON Lines), checks every record cheaply before training
starts (roles, ``<image>`` placeholders, image field) and works lazily per sample afterwards: one tokenisation of
the rendered prompt and one image preprocess, no deep copies. Training hands it the records in a
:class:`~llava.data.store.RecordStore` (memory-mapped, shared by dataloader workers and the ranks of a node).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from llava import conversation as conversation_lib
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import Conversation
from llava.data.packing import PACKING_STATS_KEY, PackingConfig, pack_rows
from llava.data.preprocess import preprocess, preprocess_multimodal
from llava.data.records import load_records
from llava.data.store import RecordStore, record_lengths
from llava.data.validation import Report, check_records, sample_id
from llava.data.vision import ANYRES, VisionSetup, anyres_problems, vision_setup
from llava.mm_utils import process_images
from llava.utils import one_torch_thread

logger = logging.getLogger(__name__)


class LazySupervisedDataset(Dataset):
    """Dataset for supervised fine-tuning, same items as upstream's.

    ``__getitem__`` returns ``input_ids`` and ``labels`` (1-D), and in a multimodal run ``image``: a (3, H, W)
    tensor for ``square``/``pad``, a (1 + patches, 3, H, W) tensor plus ``image_size`` (width, height) for
    ``anyres``, and a zero (3, crop, crop) image for text-only samples (with ``image_size`` under anyres).

    Everything beyond upstream's three arguments is explicit and keyword-only: the vision set-up
    (:class:`~llava.data.vision.VisionSetup`: image processor, ``<im_start>``/``<im_end>``, aspect ratio, anyres grid;
    or its parts as ``image_processor=``, ``mm_use_im_start_end=``, ``image_grid_pinpoints=``; without any of them,
    upstream's attributes on ``data_args``, see :func:`~llava.data.vision.vision_setup`), the conversation template
    (default: ``default_conversation``, as upstream), the records when already read from ``data_path`` (a list of
    dicts, or the :class:`~llava.data.store.RecordStore` training shares between dataloader workers and ranks), and
    ``checked=True`` when they already passed ``llava.data.validation.check_records`` with the same template
    (training checks them before loading the model). ``list_data_dict`` is those records, as upstream's attribute:
    ``dataset.list_data_dict[i]`` is record ``i``.
    """

    def __init__(
        self,
        data_path: str,
        tokenizer,
        data_args,
        *,
        vision: VisionSetup | None = None,
        image_processor=None,
        conv: Conversation | None = None,
        mm_use_im_start_end: bool | None = None,
        image_grid_pinpoints: str | list | None = None,
        records: Sequence[dict] | None = None,
        checked: bool = False,
    ) -> None:
        super().__init__()
        self.data_path = str(data_path)
        self.tokenizer = tokenizer
        self.data_args = data_args
        self.vision = vision_setup(
            data_args,
            vision,
            image_processor=image_processor,
            mm_use_im_start_end=mm_use_im_start_end,
            image_grid_pinpoints=image_grid_pinpoints,
        )
        self.conv = conv or conversation_lib.default_conversation
        # `records`: the file's records when the caller has read them already (training checks them before the model).
        self.list_data_dict = load_records(data_path) if records is None else records
        self._check_settings()
        self._lengths, self._modality_lengths = self._scan(checked)
        logger.info("%d samples from %s (template %r)", len(self), self.data_path, self.conv.version)

    # -- checks and lengths, once ------------------------------------------------------------------------------

    @property
    def is_multimodal(self) -> bool:
        return self.vision is not None

    def _check_settings(self) -> None:
        vision = self.vision
        problems = [] if vision is None else anyres_problems(vision.image_aspect_ratio, vision.image_grid_pinpoints)
        if problems:
            raise ValueError(" ".join(problems))

    def _scan(self, checked: bool) -> tuple[list[int], list[int]]:
        """Validate every record (the checks `python -m llava.data.check` makes; skipped when the caller already
        ran them, ``checked``) and compute upstream's lengths."""
        if not checked:
            Report(
                self.data_path,
                check_records(self.list_data_dict, conv=self.conv, is_multimodal=self.is_multimodal),
            ).enforce(logger)
        if isinstance(self.list_data_dict, RecordStore):  # computed once, when the store was built
            return self.list_data_dict.lengths, self.list_data_dict.modality_lengths
        pairs = [record_lengths(record) for record in self.list_data_dict]
        return [length for length, _ in pairs], [modality for _, modality in pairs]

    def __len__(self) -> int:
        return len(self.list_data_dict)

    @property
    def lengths(self) -> list[int]:
        """Words per sample, +128 for samples with an image (upstream's heuristic for length grouping)."""
        return self._lengths

    @property
    def modality_lengths(self) -> list[int]:
        """Words per sample, negative for text-only samples (upstream's LengthGroupedSampler convention)."""
        return self._modality_lengths

    # -- one sample --------------------------------------------------------------------------------------------

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.list_data_dict[i]
        has_image = "image" in record
        item: dict[str, Any] = {}
        sources = [record["conversations"]]
        if has_image:
            image = self._open_image(i, record)
            item.update(self._image_tensors(image))
            sources = preprocess_multimodal(sources, self.vision, conv=self.conv)
        elif self.is_multimodal:
            item.update(self._zero_image())
        # preprocess never modifies its input, so the record needs no copy.
        data = preprocess(sources, self.tokenizer, has_image=has_image, conv=self.conv)
        item["input_ids"], item["labels"] = data["input_ids"][0], data["labels"][0]
        return item

    def _open_image(self, i: int, record: dict) -> Image.Image:
        path = os.path.join(self.data_args.image_folder or "", record["image"])
        try:
            with Image.open(path) as image:
                image.load()  # decoded here, so that the file can close; an RGB image needs no converted copy
                return image if image.mode == "RGB" else image.convert("RGB")
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"sample {sample_id(record, i)!r} in {self.data_path}: image {path!r} not found; check --image_folder "
                f"(now {self.data_args.image_folder!r}) and the sample's 'image' field"
            ) from err
        except (UnidentifiedImageError, OSError) as err:
            raise OSError(
                f"sample {sample_id(record, i)!r} in {self.data_path}: image {path!r} cannot be read ({err}); "
                "replace the file or drop the sample"
            ) from err

    def _image_tensors(self, image: Image.Image) -> dict[str, Any]:
        if self.vision is None:
            raise ValueError(
                f"{self.data_path} has samples with images, but the dataset has no vision set-up: pass "
                "vision=VisionSetup(...) (or image_processor=), as training with --vision_tower does"
            )
        # process_images reads image_aspect_ratio and image_grid_pinpoints as from a model config.
        pixels = process_images([image], self.vision.image_processor, self.vision)[0]
        if self.vision.image_aspect_ratio == "anyres":
            return {"image": pixels, "image_size": image.size}
        return {"image": pixels}

    def _zero_image(self) -> dict[str, Any]:
        crop = self.vision.image_processor.crop_size
        item: dict[str, Any] = {"image": torch.zeros(3, crop["height"], crop["width"])}
        if self.vision.image_aspect_ratio == "anyres":
            item["image_size"] = (crop["width"], crop["height"])
        return item


@dataclass
class DataCollatorForSupervisedDataset:
    """Pad and truncate a list of samples into a batch (upstream's collator, plus ``image_sizes`` for anyres).

    With ``packing`` (``--packing``: a :class:`~llava.data.packing.PackingConfig`) the samples are packed instead,
    see :meth:`pack`.
    """

    tokenizer: Any
    packing: PackingConfig | None = None

    def __call__(self, instances: Sequence[dict]) -> dict[str, Any]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (LLaVA uses the unk token)")
        # One thread: see llava.utils.one_torch_thread (on 2 busy cores this halved the time per sample).
        with one_torch_thread():
            return self.pad(instances, pad_id) if self.packing is None else self.pack(instances, pad_id)

    def pad(self, instances: Sequence[dict], pad_id: int) -> dict[str, Any]:
        """Upstream's batch: samples right-padded to the longest (truncated to ``tokenizer.model_max_length``)."""
        limit = self.tokenizer.model_max_length
        input_ids = torch.nn.utils.rnn.pad_sequence(
            [instance["input_ids"] for instance in instances], batch_first=True, padding_value=pad_id
        )[:, :limit]
        labels = torch.nn.utils.rnn.pad_sequence(
            [instance["labels"] for instance in instances], batch_first=True, padding_value=IGNORE_INDEX
        )[:, :limit]
        # From the lengths, not `input_ids != pad_id` as upstream: with pad = unk, a real <unk> in the text would be
        # hidden from attention (docs/upstream_differences.md #25).
        lengths = torch.tensor([len(instance["input_ids"]) for instance in instances])
        attention_mask = torch.arange(input_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        batch = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
        if "image" in instances[0]:
            images = [instance["image"] for instance in instances]
            same_shape = all(image is not None and image.shape == images[0].shape for image in images)
            batch["images"] = torch.stack(images) if same_shape else images
        if "image_size" in instances[0]:
            batch["image_sizes"] = [instance["image_size"] for instance in instances]
        return batch

    def pack(self, instances: Sequence[dict], pad_id: int) -> dict[str, Any]:
        """Padding-free batch: the samples go into rows of at most ``tokenizer.model_max_length`` tokens, counted
        after image features are spliced in, one after the other, as many rows as cost least (see
        :func:`~llava.data.packing.pack_rows`).

        As transformers' ``DataCollatorWithFlattening``: ``position_ids`` restart at 0 for every sample and there is
        no ``attention_mask``, which is how transformers recognises packed rows and keeps attention inside each
        sample; the first label of each sample is ignored, so no sample is predicted from the one before it. Rows
        shorter than the longest are padded with position -1 (the model's splice drops that). ``images`` holds the
        images of the samples with an image token in row order, then the placeholder images of text-only samples
        (the vision tower still runs on them, which keeps ZeRO-3's gathers in step across ranks).

        ``packing_stats`` (for the trainer's log, not the model): real tokens after the splice, positions the rows
        take after the splice, real text tokens, samples with no supervised token.
        """
        config = self.packing
        if "image_size" in instances[0]:
            raise ValueError(config.problem(ANYRES))
        limit = self.tokenizer.model_max_length
        input_ids = [instance["input_ids"][:limit] for instance in instances]
        labels = [instance["labels"][:limit] for instance in instances]
        image_tokens = [int((ids == IMAGE_TOKEN_INDEX).sum()) for ids in input_ids]
        if any(image_tokens) and config.image_feature_length is None:
            raise ValueError("packing samples with images needs image_feature_length (features per image token)")
        per_image = (config.image_feature_length or 1) - 1
        lengths = [min(len(ids) + count * per_image, limit) for ids, count in zip(input_ids, image_tokens)]
        rows = pack_rows(lengths, limit, config.attention_cost)

        width = max(sum(len(input_ids[i]) for i in row) for row in rows)
        batch_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        batch_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.full((len(rows), width), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            offset = 0
            for i in row:
                n = len(input_ids[i])
                batch_ids[r, offset : offset + n] = input_ids[i]
                batch_labels[r, offset + 1 : offset + n] = labels[i][1:]
                positions[r, offset : offset + n] = torch.arange(n)
                offset += n
        batch: dict[str, Any] = dict(input_ids=batch_ids, labels=batch_labels, position_ids=positions)
        if "image" in instances[0]:
            order = [i for row in rows for i in row]
            images = [instances[i]["image"] for i in order if image_tokens[i]]
            images += [instances[i]["image"] for i in order if not image_tokens[i]]
            batch["images"] = torch.stack(images)
        row_lengths = [sum(lengths[i] for i in row) for row in rows]
        unsupervised = sum(1 for label in labels if not bool((label[1:] != IGNORE_INDEX).any()))
        batch[PACKING_STATS_KEY] = torch.tensor(
            [sum(row_lengths), len(rows) * min(max(row_lengths), limit), sum(map(len, input_ids)), unsupervised],
            dtype=torch.float64,
        )
        return batch


def make_supervised_data_module(
    tokenizer,
    data_args,
    eval_records: Sequence[dict] | None = None,
    *,
    vision: VisionSetup | None = None,
    image_processor=None,
    mm_use_im_start_end: bool | None = None,
    image_grid_pinpoints: str | list | None = None,
    conv: Conversation | None = None,
    records: Sequence[dict] | None = None,
    checked: bool = False,
    packing: PackingConfig | None = None,
) -> dict:
    """Datasets and collator for supervised fine-tuning (upstream's function; the keyword arguments are ours).

    ``records`` and the other keyword arguments but ``packing`` are :class:`LazySupervisedDataset`'s. ``eval_records``
    (already checked; from ``--eval_data_path`` or held out of ``--data_path``) become the evaluation dataset;
    without them there is none, as upstream. ``packing`` turns the collator's packing on (``--packing``).
    """
    options = dict(
        vision=vision_setup(
            data_args,
            vision,
            image_processor=image_processor,
            mm_use_im_start_end=mm_use_im_start_end,
            image_grid_pinpoints=image_grid_pinpoints,
        ),
        conv=conv,
        checked=checked,
    )
    train_dataset = LazySupervisedDataset(data_args.data_path, tokenizer, data_args, records=records, **options)
    eval_dataset = None
    if eval_records is not None:
        source = getattr(data_args, "eval_data_path", None) or data_args.data_path
        eval_dataset = LazySupervisedDataset(source, tokenizer, data_args, records=eval_records, **options)
    collator = DataCollatorForSupervisedDataset(tokenizer=tokenizer, packing=packing)
    return dict(train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=collator)
