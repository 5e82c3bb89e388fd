"""End-to-end training on the tiny model in this process: `train(argv=...)` as the command line would run it.

One LoRA run (4 steps, checkpoints at 2 and 4) is shared by many assertions; a second run resumes it from
checkpoint-2. Smaller runs cover the lora_bias modes, QLoRA (4 and 8 bit), projector pretraining followed by LoRA
from its mm_projector.bin, and a full fine-tune.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import (
    LEARNING_RATE,
    LORA_FILES,
    MODEL_MAX_LENGTH,
    PROJECTOR_FILES,
    PROJECTOR_KEYS,
    PROJECTOR_LR,
    RESUME_FILES,
    adapter_key,
    base_llm_weights,
    checkpoints,
    expected_adapter_keys,
    files_in,
    load_bin,
    load_config,
    logged_losses,
    multimodal_flags,
    write_caption_data,
)

from llava.train.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("lora")
    trainer = train(argv=multimodal_flags(tiny, output_dir))
    return trainer, output_dir


def _named_trainables(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().cpu() for name, param in model.named_parameters() if param.requires_grad}


# ----------------------------------------------------------------------------------------------------------------
# The LoRA run


def test_lora_run_writes_the_full_file_set_everywhere(lora_run):
    _, output_dir = lora_run
    assert checkpoints(output_dir) == ["checkpoint-2", "checkpoint-4"]
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    for checkpoint in checkpoints(output_dir):
        assert files_in(output_dir / checkpoint) == LORA_FILES | RESUME_FILES, checkpoint


def test_adapter_keys_are_exactly_peft_keys(lora_run):
    from peft import get_peft_model_state_dict

    trainer, output_dir = lora_run
    peft_keys = set(get_peft_model_state_dict(trainer.model))
    for directory in (output_dir, output_dir / "checkpoint-2"):
        adapter = load_bin(directory / "adapter_model.bin")
        assert set(adapter) == expected_adapter_keys() == peft_keys
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in adapter


def test_non_lora_trainables_hold_the_projector(lora_run):
    _, output_dir = lora_run
    expected_shapes = {"0.weight": (64, 32), "0.bias": (64,), "2.weight": (64, 64), "2.bias": (64,)}
    for directory in (output_dir, output_dir / "checkpoint-2"):
        state = load_bin(directory / "non_lora_trainables.bin")
        assert {k: tuple(v.shape) for k, v in state.items()} == {
            f"base_model.model.model.mm_projector.{suffix}": shape for suffix, shape in expected_shapes.items()
        }
        assert all(v.device.type == "cpu" for v in state.values())


def test_config_records_the_run(lora_run, tiny):
    _, output_dir = lora_run
    for directory in (output_dir, output_dir / "checkpoint-2"):
        config = load_config(directory)
        assert config["model_type"] == "llava_llama"
        assert config["use_cache"] is True
        assert {k: config[k] for k in (
            "mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer",
            "mm_vision_select_feature", "mm_patch_merge_type", "mm_use_im_start_end", "mm_use_im_patch_token",
            "mm_projector_lr", "image_aspect_ratio", "tokenizer_model_max_length", "tokenizer_padding_side",
            "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "use_mm_proj",
        )} == {
            "mm_vision_tower": str(tiny.vision_tower), "mm_hidden_size": 32, "mm_projector_type": "mlp2x_gelu",
            "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat",
            "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_projector_lr": PROJECTOR_LR,
            "image_aspect_ratio": "pad", "tokenizer_model_max_length": MODEL_MAX_LENGTH,
            "tokenizer_padding_side": "right", "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
            "use_mm_proj": True,
        }  # fmt: skip
        assert "quantization_config" not in config


def test_final_save_equals_the_trained_model(lora_run):
    trainer, output_dir = lora_run
    trained = _named_trainables(trainer.model)
    adapter = load_bin(output_dir / "adapter_model.bin")
    non_lora = load_bin(output_dir / "non_lora_trainables.bin")
    assert {adapter_key(k) for k in trained if "lora_" in k} == set(adapter)
    assert {k for k in trained if "lora_" not in k} == set(non_lora)
    for name, value in trained.items():
        saved = adapter[adapter_key(name)] if "lora_" in name else non_lora[name]
        assert torch.equal(saved, value), name


def test_last_checkpoint_equals_the_final_save(lora_run):
    _, output_dir = lora_run
    for name in ("adapter_model.bin", "non_lora_trainables.bin"):
        final, last = load_bin(output_dir / name), load_bin(output_dir / "checkpoint-4" / name)
        assert final.keys() == last.keys()
        assert all(torch.equal(final[k], last[k]) for k in final), name


def test_base_weights_unchanged_and_every_trained_weight_changed(lora_run, tiny):
    trainer, output_dir = lora_run
    base = base_llm_weights(tiny)
    model_state = {name: param.detach() for name, param in trainer.model.named_parameters()}
    for name, original in base.items():
        module, _, leaf = name.rpartition(".")
        candidates = [f"base_model.model.{module}.base_layer.{leaf}", f"base_model.model.{name}"]
        current = next(model_state[c] for c in candidates if c in model_state)
        assert torch.equal(current, original), name
    middle = load_bin(output_dir / "checkpoint-2" / "adapter_model.bin")
    final = load_bin(output_dir / "adapter_model.bin")
    assert all(not torch.equal(middle[k], final[k]) for k in final)
    assert all(final[k].abs().sum() > 0 for k in final if "lora_B" in k)  # lora_B starts at zero


def test_projector_was_loaded_then_trained(lora_run, tiny):
    _, output_dir = lora_run
    pretrained = load_bin(tiny.projector)
    trained = load_bin(output_dir / "non_lora_trainables.bin")
    for key in PROJECTOR_KEYS:
        before, after = pretrained[f"model.{key}"], trained[f"base_model.model.model.{key}"]
        assert not torch.equal(before, after)
        # 4 Adam steps move each weight by at most a few learning rates: the run started from the file.
        assert (before - after).abs().max() < 4 * 3 * PROJECTOR_LR


def test_projector_has_its_own_learning_rate(lora_run):
    trainer, _ = lora_run
    names = {id(param): name for name, param in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        group_names = [names[id(param)] for param in group["params"]]
        is_projector = {"mm_projector" in name for name in group_names}
        assert len(is_projector) == 1
        assert group["initial_lr"] == (PROJECTOR_LR if is_projector.pop() else LEARNING_RATE)


def test_label_statistics_are_logged(lora_run):
    trainer, _ = lora_run
    stats = trainer.label_statistics()
    assert stats["masked_samples"] == 0
    assert 0 < stats["supervised_token_share"] < 1
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert last["supervised_tokens"] == stats["supervised_tokens"]


# ----------------------------------------------------------------------------------------------------------------
# Resume (upstream #1200)


def test_resumed_run_continues_exactly(lora_run, tiny, tmp_path):
    """A run stopped after checkpoint-2 and resumed logs the same losses and ends with the same files."""
    trainer, output_dir = lora_run
    shutil.copytree(output_dir / "checkpoint-2", tmp_path / "checkpoint-2")
    resumed = train(argv=multimodal_flags(tiny, tmp_path))
    original_losses = logged_losses(trainer.state.log_history)
    resumed_losses = logged_losses(resumed.state.log_history)
    assert sorted(resumed_losses) == [1, 2, 3, 4]
    assert resumed_losses == original_losses
    for name in ("adapter_model.bin", "non_lora_trainables.bin"):
        expected, actual = load_bin(output_dir / name), load_bin(tmp_path / name)
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[k], actual[k]) for k in expected), name


# ----------------------------------------------------------------------------------------------------------------
# lora_bias modes (upstream's lora_only crashed, docs/upstream_differences.md #7)


@pytest.fixture(scope="module")
def biased_llm(tiny, tmp_path_factory):
    """A copy of the tiny LLM whose attention projections have biases, so the three modes differ."""
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("biased-llm")
    config = LlamaConfig.from_pretrained(tiny.llm, attention_bias=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    for module in model.modules():
        if getattr(module, "bias", None) is not None:
            torch.nn.init.uniform_(module.bias, -0.1, 0.1)
    model.save_pretrained(directory)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(Path(tiny.llm) / name, directory / name)
    return directory


@pytest.mark.parametrize("lora_bias", ["none", "all", "lora_only"])
def test_lora_bias_modes(lora_bias, biased_llm, tiny, tmp_path):
    argv = multimodal_flags(
        tiny, tmp_path, model_name_or_path=biased_llm, lora_bias=lora_bias, max_steps=1, save_strategy="no"
    )
    train(argv=argv)
    adapter = load_bin(tmp_path / "adapter_model.bin")
    bias_keys = {k for k in adapter if k.endswith(".bias")}
    attention_biases = {
        f"base_model.model.model.layers.{layer}.self_attn.{proj}.base_layer.bias"
        for layer in range(2)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    assert {k for k in adapter if not k.endswith(".bias")} == expected_adapter_keys()
    if lora_bias == "none":
        assert bias_keys == set()
    elif lora_bias == "lora_only":
        assert bias_keys == attention_biases
    else:  # every bias of the model, the projector's and the (frozen) vision tower's included
        assert attention_biases < bias_keys
        assert "base_model.model.model.mm_projector.0.bias" in bias_keys
        assert any("vision_tower" in k for k in bias_keys)
    original = load_file(biased_llm / "model.safetensors")["model.layers.0.self_attn.q_proj.bias"]
    saved = adapter.get("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias")
    if saved is not None:
        assert not torch.equal(saved, original)  # trained


# ----------------------------------------------------------------------------------------------------------------
# QLoRA on CPU (bitsandbytes 0.50.2)


@pytest.mark.parametrize("bits, layer_class", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_qlora(bits, layer_class, tiny, tmp_path):
    # From the full LLaVA checkpoint, so that the projector exists when the model is quantized.
    argv = multimodal_flags(tiny, tmp_path, bits=bits, max_steps=2, save_steps=1, model_name_or_path=tiny.llava)
    trainer = train(argv=argv)
    q_proj = trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == layer_class
    assert type(trainer.model.base_model.model.model.mm_projector[0]) is torch.nn.Linear
    assert checkpoints(tmp_path) == ["checkpoint-1", "checkpoint-2"]
    assert files_in(tmp_path / "checkpoint-1") == LORA_FILES | RESUME_FILES
    adapter = load_bin(tmp_path / "adapter_model.bin")
    assert set(adapter) == expected_adapter_keys()
    assert all(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k)
    non_lora = load_bin(tmp_path / "non_lora_trainables.bin")
    assert set(non_lora) == {f"base_model.model.model.{key}" for key in PROJECTOR_KEYS}
    assert "quantization_config" not in load_config(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Projector pretraining -> LoRA from its mm_projector.bin


@pytest.fixture(scope="module")
def pretrain_run(tiny, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("pretrain")
    argv = multimodal_flags(
        tiny,
        output_dir,
        data_path=write_caption_data(tiny, tmp_path_factory.mktemp("captions") / "captions.json"),
        version="plain",
        tune_mm_mlp_adapter=True,
        lora_enable=False,
        pretrain_mm_mlp_adapter=None,
        mm_projector_lr=None,
        group_by_modality_length=False,
        learning_rate=1e-2,
        max_steps=2,
        save_steps=1,
    )
    return train(argv=argv), output_dir


def test_pretraining_writes_the_projector(pretrain_run, tiny):
    trainer, output_dir = pretrain_run
    assert checkpoints(output_dir) == ["checkpoint-1", "checkpoint-2"]
    assert files_in(output_dir) == PROJECTOR_FILES | {"trainer_state.json"}
    assert files_in(output_dir / "checkpoint-1") == PROJECTOR_FILES | RESUME_FILES
    projector = load_bin(output_dir / "mm_projector.bin")
    assert set(projector) == {f"model.{key}" for key in PROJECTOR_KEYS}
    model_state = dict(trainer.model.named_parameters())
    assert all(torch.equal(value, model_state[key].detach()) for key, value in projector.items())
    config = load_config(output_dir)
    assert (config["model_type"], config["tune_mm_mlp_adapter"], config["mm_projector_type"]) == (
        "llava_llama", True, "mlp2x_gelu",
    )  # fmt: skip


def test_pretraining_trains_only_the_projector(pretrain_run, tiny):
    trainer, _ = pretrain_run
    trainable = {name for name, param in trainer.model.named_parameters() if param.requires_grad}
    assert trainable == {f"model.{key}" for key in PROJECTOR_KEYS}
    base = base_llm_weights(tiny)
    model_state = dict(trainer.model.named_parameters())
    assert all(torch.equal(model_state[name].detach(), value) for name, value in base.items())


def test_lora_starts_from_the_pretrained_projector(pretrain_run, tiny, tmp_path):
    _, pretrain_dir = pretrain_run
    # projector lr 0: the projector must come out exactly as it was loaded
    argv = multimodal_flags(
        tiny, tmp_path, pretrain_mm_mlp_adapter=pretrain_dir / "mm_projector.bin", mm_projector_lr=0.0,
        max_steps=1, save_strategy="no",
    )  # fmt: skip
    train(argv=argv)
    pretrained = load_bin(pretrain_dir / "mm_projector.bin")
    non_lora = load_bin(tmp_path / "non_lora_trainables.bin")
    assert {k.removeprefix("base_model.model.") for k in non_lora} == set(pretrained)
    assert all(torch.equal(non_lora[f"base_model.model.{k}"], v) for k, v in pretrained.items())


# ----------------------------------------------------------------------------------------------------------------
# Full fine-tune (and upstream's v0: a [PAD] token and the vicuna_v1 template)


def test_full_finetune_saves_a_whole_model(tiny, tmp_path, caplog):
    argv = multimodal_flags(
        tiny, tmp_path, lora_enable=False, version="v0", mm_projector_lr=None, max_steps=1, save_strategy="no"
    )
    with caplog.at_level("INFO", logger="llava"):
        trainer = train(argv=argv)
    assert "Conversation template: vicuna_v1 (--version v0)" in caplog.text
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files_in(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert "model.mm_projector.0.weight" in state
    assert state["model.embed_tokens.weight"].shape[0] == len(trainer.processing_class) == 1025
    assert trainer.processing_class.pad_token == "[PAD]"
    config = load_config(tmp_path)
    assert (config["model_type"], config["vocab_size"]) == ("llava_llama", 1025)
    base = base_llm_weights(tiny)
    assert not torch.equal(state["model.layers.0.mlp.down_proj.weight"], base["model.layers.0.mlp.down_proj.weight"])


def test_same_seed_same_run(tiny, tmp_path):
    """Upstream creates the model and LoRA before the seed is set (docs/upstream_differences.md #8), so two runs never match."""
    runs = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        train(argv=multimodal_flags(tiny, tmp_path / name, max_steps=1, save_steps=10, seed=seed))
        runs[name] = {**load_bin(tmp_path / name / "adapter_model.bin"),
                      **load_bin(tmp_path / name / "non_lora_trainables.bin")}  # fmt: skip
    assert all(torch.equal(runs["a"][key], runs["b"][key]) for key in runs["a"])
    lora_a = [key for key in runs["a"] if "lora_A" in key]
    assert lora_a and all(not torch.equal(runs["a"][key], runs["c"][key]) for key in lora_a)
