"""Files that upstream LLaVA's own stack reads as ours does: transformers 4.37, tokenizers 0.15, peft 0.10.

Upstream loads runs with ``load_pretrained_model`` and merges them with ``scripts/merge_lora_weights.py`` in that
stack. What current libraries write does not load there, so every output folder (the final save, every
``checkpoint-N/``, projector runs, merged and fully fine-tuned models) goes through these functions after it is
written:

- :func:`adapter_config_for_old_peft`: peft 0.10 passes every key of ``adapter_config.json`` to
  ``LoraConfig(**kwargs)``, so the keys it does not know (current peft writes 17) are a ``TypeError`` there. Keys
  whose value is the field's default are dropped (current peft reads them back as the same default); a key that
  changes behaviour is kept, so that old peft refuses the file instead of loading it with another meaning.
- :func:`config_for_transformers4`: transformers 5 writes ``dtype`` and ``rope_parameters``; transformers 4 reads
  ``torch_dtype``, ``rope_theta`` and ``rope_scaling`` (and silently falls back to its default rope theta).
  Both sets are written; transformers 5 reads either and they agree.
- :func:`save_tokenizer`: transformers 4.37's slow ``LlamaTokenizer`` (upstream's ``use_fast=False``) needs the
  sentencepiece ``tokenizer.model`` and ``legacy`` as the base had it; its fast tokenizer (tokenizers 0.15) needs a
  ``tokenizer.json`` without the fields newer releases added.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from os import PathLike
from pathlib import Path
from typing import Any

from llava.model.files import (
    ADAPTER_CONFIG_FILE,
    CONFIG_FILE,
    SENTENCEPIECE_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_JSON_FILE,
)

logger = logging.getLogger(__name__)


# The fields of peft 0.10.0's LoraConfig (and PeftConfig), the release of upstream's era.
PEFT_0_10_LORA_FIELDS = frozenset(
    {
        "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode",
        "init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config",
        "lora_alpha", "lora_dropout", "megatron_config", "megatron_core", "modules_to_save", "peft_type", "r",
        "rank_pattern", "revision", "target_modules", "task_type", "use_dora", "use_rslora",
    }
)  # fmt: skip
# Written by current peft to record itself; it changes nothing about the adapter.
_PEFT_METADATA = frozenset({"peft_version"})


def adapter_config_for_old_peft(directory: str | PathLike) -> list[str]:
    """Rewrite ``adapter_config.json`` so that peft 0.10 loads it with the meaning current peft gives it.

    Returns the keys kept that peft 0.10 does not know (they change behaviour; old peft then refuses the file).
    """
    from peft import LoraConfig

    path = Path(directory) / ADAPTER_CONFIG_FILE
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        return []
    defaults = _field_defaults(LoraConfig)
    if isinstance(config.get("target_modules"), list):  # peft keeps a set: the same file for the same run
        config["target_modules"] = sorted(config["target_modules"])
    kept_unknown = []
    for key in sorted(set(config) - PEFT_0_10_LORA_FIELDS):
        if key in _PEFT_METADATA or (key in defaults and _same_json(config[key], defaults[key])):
            del config[key]
        else:
            kept_unknown.append(key)
    if kept_unknown:
        logger.warning(
            "%s keeps %s: they change how the adapter works and peft 0.10 does not know them, so upstream's "
            "loader (peft 0.10) will refuse this adapter",
            path,
            ", ".join(kept_unknown),
        )
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return kept_unknown


def _field_defaults(config_class) -> dict[str, Any]:
    defaults = {}
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def _same_json(value: Any, default: Any) -> bool:
    try:
        return json.dumps(value, sort_keys=True) == json.dumps(default, sort_keys=True, default=str)
    except TypeError:
        return False


def config_for_transformers4(directory: str | PathLike) -> None:
    """Add transformers 4's names (``torch_dtype``, ``rope_theta``, ``rope_scaling``) to ``config.json``."""
    path = Path(directory) / CONFIG_FILE
    config = json.loads(path.read_text())
    _add_transformers4_fields(config)
    for name in ("text_config",):  # nested language-model configs (transformers' own LLaVA layout)
        if isinstance(config.get(name), dict):
            _add_transformers4_fields(config[name])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _add_transformers4_fields(config: dict) -> None:
    if "dtype" in config:
        config["torch_dtype"] = config["dtype"]
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
        scaling = {key: value for key, value in rope.items() if key not in ("rope_theta", "rope_type")}
        rope_type = rope.get("rope_type", "default")
        # transformers 4.37 reads {"type": ..., "factor": ...}; "default" is its None.
        config["rope_scaling"] = None if rope_type == "default" else {"type": rope_type, **scaling}


def save_tokenizer(tokenizer, directory: str | PathLike) -> None:
    """``tokenizer.save_pretrained(directory)`` plus what transformers 4.37 needs to load the same tokenizer."""
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    source = getattr(tokenizer, "vocab_file", None)
    if not source or not Path(source).is_file():
        return  # not a sentencepiece tokenizer: nothing of the slow one to keep
    if Path(source).resolve() != (directory / SENTENCEPIECE_FILE).resolve():
        shutil.copyfile(source, directory / SENTENCEPIECE_FILE)
    config_path = directory / TOKENIZER_CONFIG_FILE
    config = json.loads(config_path.read_text())
    legacy = getattr(tokenizer, "legacy", None)
    if legacy is not None:
        config["legacy"] = bool(legacy)
    # transformers 4 takes a list here as a tokenizer argument of the wrong type; the tokens are in
    # special_tokens_map.json / added_tokens_decoder already.
    if isinstance(config.get("extra_special_tokens"), list):
        del config["extra_special_tokens"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_json = directory / TOKENIZER_JSON_FILE
    if tokenizer_json.is_file():
        tokenizer_json.write_text(
            json.dumps(tokenizer_json_for_tokenizers_0_15(json.loads(tokenizer_json.read_text())), ensure_ascii=False)
        )


def tokenizer_json_for_tokenizers_0_15(data: dict) -> dict:
    """The same tokenizer in the form tokenizers 0.15 parses: merges as "a b" strings, no fields added since."""
    model = data.get("model", {})
    merges = model.get("merges")
    if merges and isinstance(merges[0], list) and not any(" " in piece for pair in merges for piece in pair):
        model["merges"] = [" ".join(pair) for pair in merges]
    if model.get("ignore_merges") is False:
        del model["ignore_merges"]
    pre_tokenizer = data.get("pre_tokenizer") or {}
    inner = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else None
    if inner and len(inner) == 1 and inner[0].get("type") == "Metaspace":
        # A sequence of one (how transformers 5 converts a sentencepiece model it reads without a Llama class):
        # the same pre-tokenizer, in a form the rules below and 0.15 read.
        pre_tokenizer = data["pre_tokenizer"] = inner[0]
    if pre_tokenizer.get("type") == "Metaspace":
        if pre_tokenizer.get("prepend_scheme") == "always" and data.get("normalizer") is None:
            # legacy: true. tokenizers 0.15's Metaspace would split at spaces and skip the prefix of a piece that
            # starts with one; the slow tokenizer prefixes every piece and merges across spaces. This is the form
            # transformers 4.37 converts legacy Llama tokenizers to itself, exact for the slow tokenizer's ids.
            replacement = pre_tokenizer.get("replacement", "\u2581")
            data["normalizer"] = {
                "type": "Sequence",
                "normalizers": [
                    {"type": "Prepend", "prepend": replacement},
                    {"type": "Replace", "pattern": {"String": " "}, "content": replacement},
                ],
            }
            data["pre_tokenizer"] = None
        else:
            # legacy: false. 0.15 has no "split": false (it always splits at spaces), the nearest it can read.
            pre_tokenizer.pop("split", None)
            pre_tokenizer.setdefault("add_prefix_space", pre_tokenizer.get("prepend_scheme") != "never")
    return data
