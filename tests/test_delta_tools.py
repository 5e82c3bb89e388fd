"""Upstream's checkpoint tools under its module paths and flags: ``make_delta`` / ``apply_delta`` (LLaVA weights as a
delta over the base), ``consolidate`` (a checkpoint saved with its frozen tower, re-saved without it) and
``auto_upgrade`` (a v0 config)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava.model.apply_delta import main as apply_delta_main
from llava.model.consolidate import main as consolidate_main
from llava.model.make_delta import main as make_delta_main
from llava.model.utils import auto_upgrade

FP16_STEP = 2.0**-10  # relative


def _state(directory) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def _grown_llava(tiny, root):
    """The tiny LLaVA with one token added (as --mm_use_im_patch_token grows it): embeddings 1025 rows."""
    from llava.model import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava)
    model.resize_token_embeddings(model.config.vocab_size + 1)
    model.save_pretrained(root / "llava-grown")
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tiny.llava / name, root / "llava-grown" / name)
    return root / "llava-grown"


def test_make_then_apply_delta_gives_the_target_back(tiny, tmp_path):
    target = _grown_llava(tiny, tmp_path)
    delta, rebuilt = tmp_path / "delta", tmp_path / "rebuilt"
    make_delta_main(
        ["--base-model-path", str(tiny.llm), "--target-model-path", str(target), "--delta-path", str(delta)]
    )
    base, wanted, stored = _state(tiny.llm), _state(target), _state(delta)
    assert set(stored) == set(wanted)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(stored[q_proj].float(), (wanted[q_proj].half() - base[q_proj].half()).float())
    assert torch.equal(stored["model.mm_projector.0.weight"], wanted["model.mm_projector.0.weight"].half())
    apply_delta_main(
        ["--base-model-path", str(tiny.llm), "--target-model-path", str(rebuilt), "--delta-path", str(delta)]
    )
    result = _state(rebuilt)
    for key, value in wanted.items():  # fp16 arithmetic, as upstream: within one fp16 step of the target
        tolerance = FP16_STEP * (value.abs().max().item() + base.get(key, value).abs().max().item())
        torch.testing.assert_close(result[key].float(), value.float(), rtol=0, atol=tolerance)
    assert json.loads((rebuilt / "config.json").read_text())["model_type"] == "llava_llama"


def test_a_delta_over_the_wrong_base_is_refused(tiny, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny.llm)
    config.hidden_size, config.head_dim = 32, 8
    LlamaForCausalLM(config).save_pretrained(tmp_path / "other-base")
    with pytest.raises(ValueError, match=r"q_proj.weight has shape \(64, 64\) here and \(32, 32\) in the base"):
        make_delta_main(
            ["--base-model-path", str(tmp_path / "other-base"), "--target-model-path", str(tiny.llava),
             "--delta-path", str(tmp_path / "delta")]
        )  # fmt: skip


def test_consolidate_drops_a_stored_frozen_tower(tiny, tmp_path):
    source = tmp_path / "with-tower"
    shutil.copytree(tiny.llava, source)
    state = _state(source)
    tower = {f"model.vision_tower.vision_tower.{k}": v for k, v in _state(tiny.vision_tower).items() if "vision" in k}
    save_file({**state, **tower}, source / "model.safetensors", metadata={"format": "pt"})
    consolidate_main(["--src", str(source), "--dst", str(tmp_path / "consolidated")])
    consolidated = _state(tmp_path / "consolidated")
    assert not any("vision_tower" in key for key in consolidated)
    assert all(torch.equal(consolidated[key], value.half()) for key, value in state.items())


def test_auto_upgrade_turns_a_v0_config_into_the_familys_llava_type(tiny, tmp_path, capsys):
    old = tmp_path / "llava-v0"
    shutil.copytree(tiny.llava, old)
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(
        json.dumps({**config, "model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    with pytest.raises(SystemExit):
        auto_upgrade(old, confirm=lambda prompt: "n")
    assert json.loads((old / "config.json").read_text())["model_type"] == "llama"
    assert auto_upgrade(old, confirm=lambda prompt: "Y") is True
    upgraded = json.loads((old / "config.json").read_text())
    assert (upgraded["model_type"], upgraded["architectures"]) == ("llava_llama", ["LlavaLlamaForCausalLM"])
    assert "Checkpoint upgraded." in capsys.readouterr().out
    assert auto_upgrade(old, confirm=True) is False and auto_upgrade(tiny.llm, confirm=True) is False
