"""The language-model families LLaVA is built on, in one table that the loader, the config readers and training read.

Upstream has one file per family (``llava/model/language_model/llava_{llama,mistral,mpt}.py``), each registering
its config and causal-LM class with transformers' Auto classes, and then picks the class from words in the model's
name (``'mistral' in model_name``, ``'mpt' in model_name``). Here each family file registers a
:class:`ModelFamily` with :func:`register_family`, and everything that builds a model asks :func:`family_of` with
the checkpoint's config: ``MODEL_FAMILIES`` maps ``model_type`` (``"llava_llama"``, ``"llava_mistral"``) to the
config class and the causal-LM class. Adding a family is one file plus its registration.

``import llava.model`` imports every family file, and importing this module imports ``llava.model`` first (it is
its package), so the table is complete whenever it is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from llava.model.files import CONFIG_FILE

# The field every upstream LLaVA config carries, whatever its model_type.
VISION_TOWER_FIELD = "mm_vision_tower"


@dataclass(frozen=True)
class ModelFamily:
    """One language-model family with LLaVA's vision modules on top.

    Attributes:
        model_type: the LLaVA config's ``model_type``, also upstream's (``"llava_llama"``); the table's key.
        config_class: the LLaVA config (a subclass of the language model's config).
        causal_lm_class: the LLaVA causal LM (``LlavaLlamaForCausalLM``).
        language_model_types: ``model_type`` of the plain language models the family starts from (``"llama"``).
        language_config_class: their config class, for text-only training (no ``--vision_tower``).
        language_causal_lm_class: their causal LM, for text-only training.
        checkpoint_model_types: other ``model_type`` names upstream's checkpoints carry for this family (the
            LLaVA-1.5 releases say ``"llava"``).
        unsupported: why the family is refused, when it is (the message names what to use instead).
    """

    model_type: str
    config_class: type
    causal_lm_class: type
    language_model_types: tuple[str, ...]
    language_config_class: type
    language_causal_lm_class: type
    checkpoint_model_types: tuple[str, ...] = ()
    unsupported: str | None = None

    @property
    def model_types(self) -> tuple[str, ...]:
        """Every ``model_type`` that means this family: LLaVA's own, the checkpoints', the plain models'."""
        return (self.model_type, *self.checkpoint_model_types, *self.language_model_types)

    def check_supported(self) -> None:
        if self.unsupported is not None:
            raise NotImplementedError(self.unsupported)


MODEL_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to the table and register its classes with transformers' Auto classes (as upstream)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    taken = {name: other.model_type for other in MODEL_FAMILIES.values() for name in other.model_types}
    clashes = sorted(name for name in family.model_types if taken.get(name, family.model_type) != family.model_type)
    if clashes:
        raise ValueError(f"model_type {', '.join(clashes)} already belongs to another family in MODEL_FAMILIES")
    MODEL_FAMILIES[family.model_type] = family
    AutoConfig.register(family.model_type, family.config_class, exist_ok=True)
    AutoModelForCausalLM.register(family.config_class, family.causal_lm_class, exist_ok=True)
    return family


def family_of(config: dict[str, Any] | Any) -> ModelFamily:
    """The family of a config (a ``config.json`` dict or a config object), by its ``model_type``.

    Raises:
        ValueError: no family knows the ``model_type``; the message lists the ones that exist.
        NotImplementedError: the family is refused (LLaVA-MPT; see its module).
    """
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    for family in MODEL_FAMILIES.values():
        if model_type in family.model_types:
            family.check_supported()
            return family
    known = ", ".join(sorted(name for family in MODEL_FAMILIES.values() for name in family.model_types))
    raise ValueError(
        f"model_type {model_type!r} is not a language model LLaVA is built on here (known: {known}); start from a "
        "Llama (Vicuna) or Mistral model, or a LLaVA checkpoint of one"
    )


def is_llava_config(config: dict[str, Any]) -> bool:
    """An upstream-format LLaVA config: a LLaVA ``model_type`` of any family, or any config naming a vision tower."""
    llava_types = {
        name for family in MODEL_FAMILIES.values() for name in (family.model_type, *family.checkpoint_model_types)
    }
    return config.get("model_type") in llava_types or VISION_TOWER_FIELD in config


def llava_config_from_dict(config: dict[str, Any]):
    """The family's LLaVA config from a LLaVA (or plain language model) config dict, whatever model_type it names."""
    family = family_of(config)
    config = {**config, "model_type": family.model_type}
    if "rope_scaling" in config and config["rope_scaling"] is None:
        del config["rope_scaling"]  # transformers 4.31 wrote null; transformers 5 warns about the key itself
    return family.config_class.from_dict(config)


def language_config(config):
    """A LLaVA (or plain) config object as its family's plain language-model config, for text-only training."""
    family = family_of(config)
    if isinstance(config, family.language_config_class) and not isinstance(config, family.config_class):
        return config
    return family.language_config_class.from_dict({**config.to_dict(), "model_type": family.language_model_types[0]})


def load_checkpoint_config(model_dir: str | PathLike[str], as_llava: bool = False):
    """The config of the model in ``model_dir`` (a local directory); LLaVA checkpoints as their family's config.

    Args:
        as_llava: build a LLaVA config from a plain language model's config (training a LLaVA model from a
            language model, as ``--vision_tower`` asks).

    Raises:
        ValueError: the directory holds transformers' own LLaVA format (``text_config``/``vision_config``, e.g.
            ``llava-hf/llava-1.5-7b-hf``), which upstream's classes cannot hold, or a family this package does not
            build LLaVA on.
    """
    path = Path(model_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; {model_dir} is not a model directory") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if config.get("model_type") == "llava" and "text_config" in config:
        raise ValueError(
            f"{model_dir} holds a LLaVA in transformers' own format (LlavaForConditionalGeneration, like "
            "llava-hf/llava-1.5-7b-hf); this package trains and loads upstream's format. Use the upstream release "
            "(e.g. liuhaotian/llava-v1.5-7b) or load this one with transformers.LlavaForConditionalGeneration"
        )
    if as_llava or is_llava_config(config):
        return llava_config_from_dict(config)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)
