"""The offline tiny models and data have the properties tests and the demo rely on."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from llava.testing import build as tiny_build
from llava.testing import files as tiny_files
from llava.testing import sizes as tiny_sizes


def test_tokenizer_is_llama2_style(tiny_tokenizer):
    tok = tiny_tokenizer
    assert len(tok) >= 1000
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert tok.pad_token is None
    assert tok.legacy is False
    # BOS is added, EOS is not; a dummy prefix "▁" starts the text.
    ids = tok("hello").input_ids
    assert ids[0] == 1 and ids[-1] != 2
    assert tok.convert_ids_to_tokens(ids)[1].startswith("▁")


def test_user_after_eos_is_one_piece_but_with_space_is_two(tiny_tokenizer):
    """The property of the real Llama-2 vocabulary that upstream's vicuna_v1 masking depends on."""
    tok = tiny_tokenizer
    after_eos = tok.convert_ids_to_tokens(tok("ok</s>USER: hi").input_ids)
    assert after_eos[after_eos.index("</s>") + 1] == "USER"
    alone = tok.convert_ids_to_tokens(tok("USER", add_special_tokens=False).input_ids)
    assert len(alone) == 2 and "".join(alone) == "▁USER"


def test_tokenizer_falls_back_to_bytes(tiny_tokenizer):
    tok = tiny_tokenizer
    pieces = tok.convert_ids_to_tokens(tok("€", add_special_tokens=False).input_ids)
    assert pieces[-3:] == ["<0xE2>", "<0x82>", "<0xAC>"]
    assert tok.decode(tok("a € b", add_special_tokens=False).input_ids) == "a € b"


def test_vision_tower_and_processor(tiny, tiny_image_processor):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig.from_pretrained(tiny.vision_tower)
    assert (config.image_size, config.patch_size, config.hidden_size) == (32, 8, 32)
    model = CLIPVisionModel.from_pretrained(tiny.vision_tower)
    pixels = tiny_image_processor(Image.new("RGB", (48, 32), (255, 0, 0)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    out = model(pixels, output_hidden_states=True)
    assert out.hidden_states[-2].shape == (1, 1 + 16, 32)


def test_llm_and_llava_checkpoint_layout(tiny):
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    lm = LlamaForCausalLM.from_pretrained(tiny.llm)
    assert lm.config.vocab_size == tiny_sizes.VOCAB_SIZE
    config = json.loads((tiny.llava / "config.json").read_text())
    assert config["model_type"] == "llava_llama"
    assert config["mm_vision_tower"] == str(tiny.vision_tower)
    assert (config["mm_hidden_size"], config["hidden_size"]) == (32, 64)
    assert config["mm_projector_type"] == "mlp2x_gelu" and config["mm_vision_select_layer"] == -2
    state = load_file(tiny.llava / "model.safetensors")
    projector = {k: tuple(v.shape) for k, v in state.items() if "mm_projector" in k}
    assert projector == {
        "model.mm_projector.0.weight": (64, 32),
        "model.mm_projector.0.bias": (64,),
        "model.mm_projector.2.weight": (64, 64),
        "model.mm_projector.2.bias": (64,),
    }
    # The language model part is exactly the tiny LM.
    for key, value in lm.state_dict().items():
        assert torch.equal(state[key], value), key
    pretrain = torch.load(tiny.projector, weights_only=True)
    assert sorted(pretrain) == sorted(projector)


def test_dataset_variety(tiny):
    samples = json.loads(tiny.data.read_text())
    assert len(samples) == 48 and len({s["id"] for s in samples}) == 48
    with_image = [s for s in samples if "image" in s]
    assert 0 < len(with_image) < len(samples)
    modes, sizes = set(), set()
    for sample in with_image:
        with Image.open(tiny.image_folder / sample["image"]) as image:
            modes.add(image.mode)
            sizes.add(image.size)
        first = sample["conversations"][0]["value"]
        assert first.count("<image>") == 1
    assert modes == {"RGB", "L", "RGBA", "P"}
    assert len(sizes) >= 4
    rounds = {len(s["conversations"]) // 2 for s in samples}
    assert rounds == {1, 2, 3}
    for sample in samples:
        roles = [turn["from"] for turn in sample["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2)


@pytest.mark.slow
def test_same_seed_same_bytes(tmp_path):
    first = tiny_build.build_all(tmp_path / "x")
    digest = tiny_files.tree_digest(first.root)
    shutil.move(tmp_path / "x", tmp_path / "y")
    second = tiny_build.build_all(tmp_path / "x")
    assert tiny_files.tree_digest(second.root) == digest
    other = tiny_build.build_all(tmp_path / "z", seed=1)
    assert (other.llm / "model.safetensors").read_bytes() != (second.llm / "model.safetensors").read_bytes()


def test_llava_tiny_command_reuses_a_build_and_names_its_parts(tiny, caplog):
    from pathlib import Path

    import tomllib

    from llava.testing import cli

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["llava-tiny"] == "llava.testing.cli:main"
    before = sorted(p.name for p in tiny.root.iterdir())
    with caplog.at_level("INFO", logger=cli.logger.name):
        cli.main([str(tiny.root)])
    assert sorted(p.name for p in tiny.root.iterdir()) == before
    logged = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in caplog.messages}
    assert logged == {field: str(value) for field, value in tiny.__dict__.items()}
