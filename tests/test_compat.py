"""The rewrites that make our files readable by upstream's stack keep their meaning in ours (llava.model.compat).

Upstream's side of the same files is read in test_upstream_loading.py, through the reference environment.
"""

from __future__ import annotations

import json
import logging

import pytest

from llava.model import compat

TEXTS = [
    "A chat. USER: Hi ASSISTANT: Red square, 12 px.</s>USER: more? ASSISTANT:",
    " leading space", "</s> it", "x</s> it", "a  b", "é 日本 🙂", "",
]  # fmt: skip


def _save_adapter_config(tmp_path, **kwargs):
    from peft import LoraConfig

    LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", **kwargs).save_pretrained(tmp_path)
    return json.loads((tmp_path / compat.ADAPTER_CONFIG_FILE).read_text())


def test_adapter_config_keeps_only_keys_peft_0_10_knows_when_the_rest_are_defaults(tmp_path):
    from peft import PeftConfig

    written = _save_adapter_config(tmp_path, target_modules=["q_proj", "v_proj"], lora_dropout=0.05)
    assert set(written) - compat.PEFT_0_10_LORA_FIELDS  # current peft writes keys peft 0.10 rejects
    before = PeftConfig.from_pretrained(str(tmp_path)).to_dict()
    assert compat.adapter_config_for_old_peft(tmp_path) == []
    rewritten = json.loads((tmp_path / compat.ADAPTER_CONFIG_FILE).read_text())
    assert set(rewritten) <= compat.PEFT_0_10_LORA_FIELDS
    after = PeftConfig.from_pretrained(str(tmp_path)).to_dict()
    before.pop("peft_version", None), after.pop("peft_version", None)
    assert after == before  # the same meaning for current peft


def test_adapter_config_keeps_a_key_that_changes_behaviour_and_says_so(tmp_path, caplog):
    _save_adapter_config(tmp_path, target_modules=["q_proj"], lora_bias=True)
    with caplog.at_level(logging.WARNING, logger="llava.model.compat"):
        assert compat.adapter_config_for_old_peft(tmp_path) == ["lora_bias"]
    assert json.loads((tmp_path / compat.ADAPTER_CONFIG_FILE).read_text())["lora_bias"] is True
    assert "keeps lora_bias" in caplog.text and "upstream's loader (peft 0.10) will refuse" in caplog.text


LORA_ARGS = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_bias="none", bits=16, bf16=False)
LM_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.mark.parametrize("tower_built_before_lora", [False, True], ids=["tower delay-loaded", "tower built"])
def test_adapter_config_holds_upstreams_list_of_leaf_names(tiny, tmp_path, caplog, tower_built_before_lora):
    """Upstream's form (the leaf names) wherever it selects the modules we adapt; where a vision tower built before
    wrapping shares those names, the list plus `exclude_modules` (which peft 0.10 does not know: said once)."""
    from types import SimpleNamespace

    from peft import PeftConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    from llava.model import LlavaLlamaForCausalLM
    from llava.train.lora import MULTIMODAL_EXCLUDE_PATTERN, add_lora

    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava)
    if tower_built_before_lora:  # as a LLaVA-1.6 checkpoint with unfreeze_mm_vision_tower builds it
        model.get_model().get_vision_tower().load_model()
    names = [name for name, _ in model.named_modules()]
    peft_model = add_lora(model, SimpleNamespace(**LORA_ARGS))
    peft_model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="llava.model.compat"):
        kept = compat.adapter_config_for_old_peft(tmp_path)
    written = json.loads((tmp_path / compat.ADAPTER_CONFIG_FILE).read_text())
    assert written["target_modules"] == LM_TARGETS
    adapted = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    assert len(adapted) == 14 and not any("vision_tower" in name or "mm_projector" in name for name in adapted)
    if tower_built_before_lora:
        assert written["exclude_modules"] == MULTIMODAL_EXCLUDE_PATTERN and kept == ["exclude_modules"]
        assert "keeps exclude_modules" in caplog.text
        # Without the exclusion the list would adapt the tower's q/k/v too; current peft reads both and agrees.
        read = PeftConfig.from_pretrained(str(tmp_path))
        listed = [name for name in names if check_target_module_exists(read, name)]
        assert [name.removeprefix("base_model.model.") for name in adapted] == listed
    else:
        assert "exclude_modules" not in written and kept == []


@pytest.mark.parametrize(
    "rope, transformers4",
    [
        (dict(rope_theta=10000.0), (10000.0, None)),
        (dict(rope_theta=500000.0, rope_scaling={"rope_type": "linear", "factor": 2.0}),
         (500000.0, {"type": "linear", "factor": 2.0})),
    ],
)  # fmt: skip
def test_config_carries_transformers4_names_that_transformers5_reads_back_the_same(tmp_path, rope, transformers4):
    import torch
    from transformers import AutoConfig

    from llava.model import LlavaConfig

    config = LlavaConfig(hidden_size=64, num_attention_heads=4, dtype=torch.bfloat16, **rope)
    config.save_pretrained(tmp_path)
    compat.config_for_transformers4(tmp_path)
    written = json.loads((tmp_path / compat.CONFIG_FILE).read_text())
    assert (written["rope_theta"], written["rope_scaling"]) == transformers4
    assert written["torch_dtype"] == written["dtype"] == "bfloat16"
    again = AutoConfig.from_pretrained(tmp_path)
    # transformers 5 folds rope_scaling into rope_parameters and keeps its "type" as an alias of "rope_type".
    assert {key: value for key, value in again.rope_parameters.items() if key != "type"} == config.rope_parameters
    assert again.rope_parameters.get("type", again.rope_parameters["rope_type"]) == again.rope_parameters["rope_type"]
    assert again.dtype == torch.bfloat16


@pytest.mark.parametrize("legacy", [False, True])
def test_saved_tokenizer_reloads_with_the_same_ids_and_keeps_the_sentencepiece_model(tiny, tmp_path, legacy):
    from transformers import AutoTokenizer

    from llava.tokenization import encode

    base = AutoTokenizer.from_pretrained(tiny.llm, legacy=legacy)
    compat.save_tokenizer(base, tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == (tiny.llm / "tokenizer.model").read_bytes()
    config = json.loads((tmp_path / compat.TOKENIZER_CONFIG_FILE).read_text())
    assert config["legacy"] is legacy and config["tokenizer_class"] == "LlamaTokenizer"
    data = json.loads((tmp_path / compat.TOKENIZER_JSON_FILE).read_text())
    assert all(isinstance(merge, str) for merge in data["model"]["merges"])  # tokenizers 0.15's form
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert encode(again, TEXTS).ids == encode(base, TEXTS).ids


def test_a_sequence_of_one_metaspace_is_unwrapped_for_tokenizers_0_15():
    """What transformers 5 writes for a release's tokenizer it converts from sentencepiece itself."""
    metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    data = {
        "model": {"type": "BPE", "merges": [["\u2581", "t"]]},
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [metaspace]},
    }
    converted = compat.tokenizer_json_for_tokenizers_0_15(data)
    assert converted["pre_tokenizer"] == {
        "type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "add_prefix_space": True
    }  # fmt: skip
    assert converted["model"]["merges"] == ["\u2581 t"]
