"""The peers' LoRA options on upstream's flags, below a whole run: the `LoraConfig` the flags build (PEFT's names and
meaning), the PiSSA/OLoRA conversion into an ordinary LoRA over the original base (against PEFT's own conversion),
the vision-tower LoRA targets, and NEFTune's noise (text positions only, never the spliced image features)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from train_helpers import load_bin

from llava.constants import IMAGE_TOKEN_INDEX
from llava.train.lora import add_lora, initial_adapter, lora_config

FLAGS = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_bias="none", bits=16, bf16=False)


def _flags(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{**FLAGS, **overrides})


@pytest.fixture
def llama(tiny):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny.llm, dtype=torch.float32)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({}, dict(use_dora=False, use_rslora=False, init_lora_weights=True)),
        (dict(use_dora=True, use_rslora=True, init_lora_weights="gaussian"),
         dict(use_dora=True, use_rslora=True, init_lora_weights="gaussian")),
        (dict(init_lora_weights="pissa_niter_2"), dict(init_lora_weights="pissa_niter_2")),
        (dict(init_lora_weights="olora"), dict(init_lora_weights="olora")),
    ],
)  # fmt: skip
def test_flags_build_peft_s_config(llama, flags, expected):
    config = lora_config(llama, _flags(**flags))
    assert {key: getattr(config, key) for key in expected} == expected
    assert (config.r, config.lora_alpha, config.task_type) == (4, 8, "CAUSAL_LM")


def test_rslora_scales_by_the_square_root_of_the_rank(llama):
    model = add_lora(llama, _flags(use_rslora=True))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)


def test_lora_on_the_vision_tower_targets_its_linears_too(tiny):
    from llava.model import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava, dtype=torch.float32)
    model.get_vision_tower().load_model()
    without = lora_config(model, _flags())
    assert sorted(without.target_modules) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    model = add_lora(model, _flags(lora_vision_tower=True))
    adapted = {name.rpartition(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    tower = {name for name in adapted if "vision_tower" in name}
    assert {name.rpartition(".")[2] for name in tower} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert len(adapted - tower) == 2 * 7 and not any("mm_projector" in name for name in adapted)
    assert model.config.lora_vision_tower is True


# ----------------------------------------------------------------------------------------------------------------
# PiSSA / OLoRA: saved as an ordinary LoRA over the original base


def _train_a_little(model) -> None:
    """Move every LoRA weight as training would (deterministic)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.mark.parametrize("init, rslora", [("pissa", False), ("olora", True)])
def test_conversion_equals_peft_s_own_and_reproduces_the_trained_model(llama, tiny, tmp_path, init, rslora):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from llava.train.saving import save_lora_outputs

    model = add_lora(llama, _flags(init_lora_weights=init, use_rslora=rslora))
    assert initial_adapter(model) is not None
    # peft's recipe: the initial adapter saved (with an ordinary init) before training, then the conversion at save
    model.peft_config["default"].init_lora_weights = True
    model.save_pretrained(tmp_path / "peft" / "initial", safe_serialization=False)
    model.peft_config["default"].init_lora_weights = init
    _train_a_little(model)
    ids = torch.tensor([[1, 37, 5, 900, 4, 17, 256]])
    with torch.no_grad():
        trained_logits = model(input_ids=ids).logits
    model.save_pretrained(
        tmp_path / "peft" / "final", safe_serialization=False,
        path_initial_model_for_weight_conversion=str(tmp_path / "peft" / "initial"),
    )  # fmt: skip
    save_lora_outputs(model, str(tmp_path / "ours"), "none", is_main_process=True)

    ours, theirs = (
        load_bin(tmp_path / "ours" / "adapter_model.bin"),
        load_bin(tmp_path / "peft" / "final" / "adapter_model.bin"),
    )
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert ours["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (8, 64)  # rank 2r
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_config = json.loads((tmp_path / "peft" / "final" / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "init_lora_weights", "use_rslora"):
        assert config[key] == peft_config[key], key
    assert (config["r"], config["init_lora_weights"]) == (8, True)

    # On the ORIGINAL base, the converted adapter is the trained model.
    base = LlamaForCausalLM.from_pretrained(tiny.llm, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, tmp_path / "ours")
    with torch.no_grad():
        logits = loaded(input_ids=ids).logits
    assert (logits - trained_logits).abs().max() < 1e-4


def test_resume_reads_the_converted_adapter_back(llama, tiny, tmp_path):
    from peft import get_peft_model_state_dict

    from llava.train.saving import load_lora_outputs, save_lora_outputs

    model = add_lora(llama, _flags(init_lora_weights="pissa"))
    _train_a_little(model)
    trained = {key: value.clone() for key, value in get_peft_model_state_dict(model).items()}
    save_lora_outputs(model, str(tmp_path), "none", is_main_process=True)
    from transformers import LlamaForCausalLM

    fresh = add_lora(LlamaForCausalLM.from_pretrained(tiny.llm, dtype=torch.float32), _flags(init_lora_weights="pissa"))
    load_lora_outputs(fresh, str(tmp_path))
    restored = get_peft_model_state_dict(fresh)
    assert all(torch.equal(restored[key], trained[key]) for key in trained)


# ----------------------------------------------------------------------------------------------------------------
# NEFTune: transformers' hook on the embedding layer; the splice writes the image features over its output


def test_neftune_noises_text_positions_only(tiny):
    from transformers.integrations.neftune import activate_neftune

    from llava.model import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava, dtype=torch.float32)
    model.get_vision_tower().load_model()
    alpha = 5.0
    activate_neftune(model, alpha)  # what Trainer.train() does for --neftune_noise_alpha
    ids = torch.tensor(
        [[1, 319, 13, IMAGE_TOKEN_INDEX, 13, 172, 338, 445, 299, 2], [1, 22, IMAGE_TOKEN_INDEX, 7, 8, 0, 0, 0, 0, 0]]
    )
    mask = ids != 0
    images = torch.randn(2, 3, 32, 32)

    def embeds(training: bool) -> torch.Tensor:
        model.train(training)
        with torch.no_grad():
            return model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, None, images)[4]

    clean, noisy = embeds(False), embeds(True)
    features = model.get_vision_tower().num_patches
    is_image = torch.zeros(clean.shape[:2], dtype=torch.bool)
    is_image[0, 3 : 3 + features] = True
    is_image[1, 2 : 2 + features] = True
    is_text = torch.zeros_like(is_image)
    is_text[0, : 9 + features] = True
    is_text[1, : 4 + features] = True
    is_text &= ~is_image
    noise = noisy - clean
    assert torch.equal(noise[is_image], torch.zeros_like(noise[is_image]))  # image features exactly as computed
    assert (noise[is_text].abs().amax(dim=-1) > 0).all()  # every text position got noise
    # transformers' magnitude, uniform in +-alpha / sqrt(L * d): L is the row the splice embeds (its output length
    # plus the one column where it collects what it drops)
    bound = alpha / ((clean.shape[1] + 1) * model.config.hidden_size) ** 0.5
    assert bound / 2 < noise.abs().max() <= bound
