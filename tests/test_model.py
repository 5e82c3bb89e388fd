"""The LLaVA model: splice, forward, generate and loading, against references built by hand."""

from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import get_anyres_image_grid_shape
from llava.model import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.llava_arch import unpad_image
from llava.testing.sizes import IMAGE_GRID_PINPOINTS

IMG = IMAGE_TOKEN_INDEX
PINPOINTS = str(IMAGE_GRID_PINPOINTS)


@pytest.fixture(scope="module")
def llava(tiny):
    """The tiny upstream-layout LLaVA checkpoint, vision tower loaded, in eval mode."""
    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava)
    model.get_vision_tower().load_model()
    return model.eval()


def _image_features(model, images):
    """Vision features of each image by hand: CLIP layer -2 without CLS, then the projector."""
    clip = model.get_vision_tower().vision_tower
    hidden = clip(images, output_hidden_states=True).hidden_states[-2][:, 1:]
    return model.get_model().mm_projector(hidden)


def _reference(model, input_ids, attention_mask, labels, features, padding_side="right", max_length=None):
    """Upstream's splice written plainly, one sample at a time: returns (embeds, labels, mask) padded with zeros."""
    embed = model.get_model().embed_tokens
    rows, row_labels, image = [], [], 0
    for ids, mask, lab in zip(input_ids, attention_mask.bool(), labels):
        ids, lab = ids[mask], lab[mask]
        pieces, piece_labels, begin = [], [], 0
        positions = (ids == IMG).nonzero().flatten().tolist()
        for position in positions + [len(ids)]:
            pieces.append(embed(ids[begin:position]))
            piece_labels.append(lab[begin:position])
            if position < len(ids):
                pieces.append(features[image])
                piece_labels.append(torch.full((len(features[image]),), IGNORE_INDEX))
                image += 1
            begin = position + 1
        if not positions:
            image += 1  # a text-only sample consumes its placeholder image
        row, row_label = torch.cat(pieces), torch.cat(piece_labels)
        if max_length is not None:
            row, row_label = row[:max_length], row_label[:max_length]
        rows.append(row)
        row_labels.append(row_label)
    width = max(len(row) for row in rows)
    embeds = torch.zeros(len(rows), width, rows[0].shape[1])
    out_labels = torch.full((len(rows), width), IGNORE_INDEX)
    out_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, (row, label) in enumerate(zip(rows, row_labels)):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        embeds[index, span], out_labels[index, span], out_mask[index, span] = row, label, True
    return embeds, out_labels, out_mask


def _loss_by_hand(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def _check_against_reference(model, input_ids, attention_mask, images, features, padding_side="right", max_length=None):
    labels = torch.where(input_ids == IMG, IGNORE_INDEX, input_ids)
    labels[:, :2] = IGNORE_INDEX  # a masked prefix, as the data pipeline produces
    model.config.tokenizer_padding_side = padding_side
    model.config.tokenizer_model_max_length = max_length
    embeds, ref_labels, ref_mask = _reference(
        model, input_ids, attention_mask, labels, features, padding_side, max_length
    )
    position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    with torch.no_grad():
        _, positions, mask, _, got_embeds, got_labels = model.prepare_inputs_labels_for_multimodal(
            input_ids, position_ids, attention_mask, None, labels, images
        )
        assert torch.equal(mask, ref_mask)
        assert torch.equal(got_labels, ref_labels)
        # Real positions are identical; padding holds token 0's embedding instead of zeros (masked out).
        assert torch.equal(got_embeds[ref_mask], embeds[ref_mask])
        expected_positions = torch.cumsum(ref_mask, 1) - 1
        assert torch.equal(positions[ref_mask], expected_positions[ref_mask])
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, images=images)
        ref = LlamaForCausalLM.forward(
            model, inputs_embeds=embeds, attention_mask=ref_mask.long(), position_ids=positions
        )
    torch.testing.assert_close(out.logits[ref_mask], ref.logits[ref_mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, _loss_by_hand(ref.logits, ref_labels), rtol=0, atol=1e-6)
    return out


def _batch(rows, pad_id=0, padding_side="right"):
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[index, span] = torch.tensor(row)
        mask[index, span] = 1
    return ids, mask


ROWS_IMAGE = [[1, 30, IMG, 40, 41, 42], [1, 31, 32, IMG, 43]]
ROWS_TEXT = [[1, 50, 51, 52], [1, 53, 54]]
ROWS_MIXED = [[1, 30, IMG, 40, 41], [1, 53, 54, 55, 56, 57, 58]]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("rows", [ROWS_IMAGE, ROWS_TEXT, ROWS_MIXED], ids=["image", "text", "mixed"])
def test_splice_and_loss_match_hand_reference(llava, rows, padding_side):
    torch.manual_seed(0)
    images = torch.randn(len(rows), 3, 32, 32)  # text-only samples get (and consume) a placeholder image
    input_ids, mask = _batch(rows, padding_side=padding_side)
    with torch.no_grad():
        features = _image_features(llava, images)
    _check_against_reference(llava, input_ids, mask, images, features, padding_side)


def test_truncation_to_tokenizer_model_max_length(llava):
    images = torch.randn(2, 3, 32, 32)
    input_ids, mask = _batch(ROWS_IMAGE)
    with torch.no_grad():
        features = _image_features(llava, images)
    out = _check_against_reference(llava, input_ids, mask, images, features, max_length=12)
    assert out.logits.shape[1] == 12


def test_two_images_in_one_sample_and_list_input(llava):
    rows = [[1, IMG, 30, IMG, 31], [1, 32, IMG]]
    images = [torch.randn(3, 32, 32) for _ in range(3)]
    input_ids, mask = _batch(rows)
    with torch.no_grad():
        features = _image_features(llava, torch.stack(images))
    _check_against_reference(llava, input_ids, mask, images, features)
    _check_against_reference(llava, input_ids, mask, torch.stack(images), features)


def test_too_few_images_is_a_clear_error(llava):
    input_ids, mask = _batch([[1, IMG, 30, IMG]])
    with pytest.raises(ValueError, match="needs 2 images .* but 1 were given"):
        llava(input_ids=input_ids, attention_mask=mask, images=torch.randn(1, 3, 32, 32))


def _anyres_features(model, images, image_sizes, unpad):
    """The spatial(_unpad) merge by hand for 5-D anyres images."""
    side = model.get_vision_tower().num_patches_per_side
    merged = []
    for views, size in zip(images, image_sizes):
        features = _image_features(model, views)
        base, tiles = features[0], features[1:]
        columns, rows = get_anyres_image_grid_shape(size, PINPOINTS, 32)
        grid = tiles.view(rows, columns, side, side, -1)
        if unpad:
            dense = torch.zeros(grid.shape[-1], rows * side, columns * side)
            for r in range(rows):
                for c in range(columns):
                    dense[:, r * side : (r + 1) * side, c * side : (c + 1) * side] = grid[r, c].permute(2, 0, 1)
            dense = unpad_image(dense, size)
            newline = model.get_model().image_newline[:, None, None].expand(-1, dense.shape[1], 1)
            tiles = torch.cat([dense, newline], dim=2).permute(1, 2, 0).reshape(-1, dense.shape[0])
        else:
            tiles = torch.cat(
                [grid[r, :, y, :, :].reshape(-1, grid.shape[-1]) for r in range(rows) for y in range(side)]
            )
        merged.append(torch.cat([base, tiles]))
    return merged


@pytest.mark.parametrize("merge", ["spatial", "spatial_unpad"])
def test_anyres_spatial_merges_match_hand_reference(tiny, merge):
    config = LlavaConfig.from_pretrained(tiny.llava)
    config.mm_patch_merge_type = merge
    config.image_aspect_ratio = "anyres"
    config.image_grid_pinpoints = PINPOINTS
    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava, config=config).eval()
    model.get_vision_tower().load_model()
    torch.manual_seed(1)
    if merge == "spatial_unpad":
        with torch.no_grad():
            model.get_model().image_newline.normal_()
    image_sizes = [(60, 30), (40, 90)]  # wide -> 2x1 tiles, tall -> 1x3 tiles
    tile_counts = [1 + c * r for c, r in (get_anyres_image_grid_shape(s, PINPOINTS, 32) for s in image_sizes)]
    assert tile_counts == [3, 4]
    images = [torch.randn(n, 3, 32, 32) for n in tile_counts]
    input_ids, mask = _batch([[1, IMG, 30, 31], [1, 32, IMG, 33]])
    with torch.no_grad():
        features = _anyres_features(model, images, image_sizes, unpad=merge == "spatial_unpad")
        labels = input_ids.clone()
        _, _, got_mask, _, got_embeds, _ = model.prepare_inputs_labels_for_multimodal(
            input_ids, None, mask, None, labels, images, image_sizes
        )
    embeds, _, ref_mask = _reference(model, input_ids, mask, labels, features)
    assert torch.equal(got_mask, ref_mask)
    torch.testing.assert_close(got_embeds[ref_mask], embeds[ref_mask], rtol=0, atol=1e-6)
    # A 5-D tensor works too when every image has the same number of tiles.
    same = torch.stack([images[0], torch.randn_like(images[0])])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, images=same, image_sizes=[(60, 30), (64, 30)])
    assert torch.isfinite(out.logits).all()


def test_upstream_layout_checkpoint_loads_every_weight(tiny):
    model, info = LlavaLlamaForCausalLM.from_pretrained(tiny.llava, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    from safetensors.torch import load_file

    stored = load_file(tiny.llava / "model.safetensors")
    state = model.state_dict()
    assert set(stored) == set(state)
    for key, value in stored.items():
        assert torch.equal(state[key], value), key
    assert isinstance(AutoModelForCausalLM.from_pretrained(tiny.llava), LlavaLlamaForCausalLM)
    config = json.loads((tiny.llava / "config.json").read_text())
    assert model.config.model_type == config["model_type"] == "llava_llama"
    assert model.get_vision_tower().is_loaded is False  # delay-loaded, as upstream


def test_generate_with_image_returns_new_tokens_and_image_matters(llava, tiny_tokenizer):
    from llava.mm_utils import tokenizer_image_token

    ids = tokenizer_image_token("USER: <image>\nWhat is it? ASSISTANT:", tiny_tokenizer, return_tensors="pt")[None]
    torch.manual_seed(0)
    red, blue = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    tokens = llava.generate(ids, images=red, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert tokens.shape == (1, 5) and (tokens >= 0).all()
    with torch.no_grad():
        logits_red = llava(input_ids=ids, images=red).logits[0, -1]
        logits_blue = llava(input_ids=ids, images=blue).logits[0, -1]
    assert (logits_red - logits_blue).abs().max() > 1e-4


def test_initialize_vision_modules_from_plain_llama(tiny):
    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llm)
    assert model.get_vision_tower() is None
    args = types.SimpleNamespace(
        vision_tower=str(tiny.vision_tower),
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=str(tiny.projector),
        mm_patch_merge_type="flat",
        mm_projector_type="mlp2x_gelu",
    )
    model.get_model().initialize_vision_modules(args)
    config = model.config
    assert (config.mm_vision_tower, config.mm_hidden_size, config.mm_projector_type) == (
        str(tiny.vision_tower),
        32,
        "mlp2x_gelu",
    )
    assert config.use_mm_proj is True and config.mm_vision_select_layer == -2
    assert model.get_vision_tower().is_loaded
    pretrained = torch.load(tiny.projector, weights_only=True)
    for key, value in model.get_model().mm_projector.state_dict().items():
        assert torch.equal(value, pretrained[f"model.mm_projector.{key}"])
    with pytest.raises(ValueError, match="holds no projector weights"):
        bad = tiny.root / "no_projector.bin"
        torch.save({"x": torch.zeros(1)}, bad)
        model.get_model().load_mm_projector(bad)


def test_lora_and_gradient_checkpointing_reach_lora_and_projector(tiny):
    from peft import LoraConfig, get_peft_model

    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava)
    model.get_vision_tower().load_model()
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    # A full-match regex keeps LoRA on the language model (the loaded CLIP tower has q_proj/v_proj too).
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)")
    peft_model = get_peft_model(model, lora)
    for param in model.get_model().mm_projector.parameters():
        param.requires_grad = True
    peft_model.train()
    input_ids, mask = _batch(ROWS_MIXED)
    labels = torch.where(input_ids == IMG, IGNORE_INDEX, input_ids)
    loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels, images=torch.randn(2, 3, 32, 32)).loss
    loss.backward()
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    projector = list(model.get_model().mm_projector.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector)
    assert all(p.grad is None for p in model.get_vision_tower().parameters())


@pytest.mark.parametrize(
    ("projector_type", "keys"),
    [
        ("linear", {"weight": (64, 32), "bias": (64,)}),
        ("mlp2x_gelu", {"0.weight": (64, 32), "0.bias": (64,), "2.weight": (64, 64), "2.bias": (64,)}),
        ("mlp3x_gelu", {"0.weight": (64, 32), "0.bias": (64,), "2.weight": (64, 64), "2.bias": (64,),
                        "4.weight": (64, 64), "4.bias": (64,)}),
        ("identity", {}),
    ],
)  # fmt: skip
def test_projector_types_have_upstream_keys(projector_type, keys):
    from llava.model.multimodal_projector.builder import build_vision_projector

    config = types.SimpleNamespace(mm_projector_type=projector_type, mm_hidden_size=32, hidden_size=64)
    projector = build_vision_projector(config)
    assert {k: tuple(v.shape) for k, v in projector.state_dict().items()} == keys
    with pytest.raises(ValueError, match="Unknown projector type"):
        build_vision_projector(types.SimpleNamespace(mm_projector_type="mlp_relu", mm_hidden_size=1, hidden_size=1))


def test_vision_tower_delay_load_and_errors(tiny):
    from llava.model.multimodal_encoder.builder import build_vision_tower

    args = types.SimpleNamespace(mm_vision_tower=str(tiny.vision_tower), mm_vision_select_layer=-2)
    tower = build_vision_tower(args, delay_load=True)
    assert not tower.is_loaded and (tower.hidden_size, tower.num_patches_per_side, tower.num_patches) == (32, 4, 16)
    tower.load_model()
    features = tower(torch.zeros(2, 3, 32, 32))
    assert features.shape == (2, 16, 32)
    tower.select_feature = "cls_patch"
    assert tower(torch.zeros(1, 3, 32, 32)).shape == (1, 17, 32)
    with pytest.raises(FileNotFoundError, match="'/nowhere/clip' does not exist: it is not a local directory"):
        build_vision_tower(types.SimpleNamespace(mm_vision_tower="/nowhere/clip", mm_vision_select_layer=-2))
