"""Load what training produced (or an upstream LLaVA checkpoint) for inference: ``load_pretrained_model``.

Upstream decides what a directory holds from words in the model's name ("llava", "lora"), so a LoRA run saved as
``./checkpoints/my-run`` loads as a plain language model and its projector is silently lost (upstream #1021,
#1022, #730). Here the kind is read from the files in the directory:

====================  =========================================================================================
kind                  recognised by
====================  =========================================================================================
LoRA run              ``adapter_config.json`` (+ ``adapter_model.bin|safetensors``, ``non_lora_trainables.bin``,
                      ``config.json``); needs ``model_base``; LLaVA when the run's or the base's config is LLaVA's
projector only        ``mm_projector.bin`` and no model weights (projector pretraining); needs ``model_base``
full LLaVA            ``config.json`` with ``model_type`` ``llava*`` or an ``mm_vision_tower`` field, plus weights
language model        any other ``config.json`` with weights
====================  =========================================================================================

``model_path`` and ``model_base`` are local directories or hub ids (``liuhaotian/llava-v1.5-7b``,
``lmsys/vicuna-7b-v1.5``), resolved through the HF cache by :mod:`llava.model.hub` before the kind is decided.
The releases' ``"model_type": "llava"`` configs are read as this package's ``LlavaConfig``
(:func:`llava.model.families.load_checkpoint_config`). The class is the config's family's
(:func:`llava.model.families.family_of`: ``LlavaLlamaForCausalLM``, ``LlavaMistralForCausalLM``), never a guess from
the name (upstream builds ``LlavaMistralForCausalLM`` only when the name says "mistral", and its LoRA branch always a
Llama).

``model_name`` is still accepted (upstream passes ``get_model_name_from_path(model_path)``) but decides nothing.
"""

from __future__ import annotations

import copy
import enum
import json
import logging
import warnings
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from llava.model.added_tokens import restore_added_rows, split_added_rows
from llava.model.attention import select_attn_implementation
from llava.model.families import family_of, is_llava_config, load_checkpoint_config
from llava.model.files import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHT_FILES,
    CHECKPOINT_DIR_PREFIX,
    CONFIG_FILE,
    MODEL_WEIGHT_FILES,
    NON_LORA_TRAINABLES_FILE,
    PROJECTOR_FILE,
    TOKENIZER_CONFIG_FILE,
)
from llava.model.hub import resolve_model_dir
from llava.model.llava_arch import add_image_tokens
from llava.model.quantization import bnb_config
from llava.model.state_files import load_state_file, nonfinite_tensors
from llava.utils import quiet_transformers

logger = logging.getLogger(__name__)


# Upstream's fallback when the config has no `max_sequence_length` (Llama configs never do).
DEFAULT_CONTEXT_LEN = 2048


# Prefixes PEFT puts in front of parameter names: `base_model.model.<name in the wrapped model>`.
PEFT_PREFIX = "base_model."
# Upstream's non_lora_trainables written from a model wrapped twice carry `model.model.` after `base_model.`.
DOUBLE_MODEL_PREFIX = "model.model."
MODEL_PREFIX = "model."
# Every module of the vision tower (PEFT fullmatches a string against each module's name).
VISION_TOWER_PATTERN = r".*vision_tower.*"
# PEFT (>= 0.7) moves a wrapped layer's own weights under `.base_layer.`; the merged model has no such level.
PEFT_BASE_LAYER = ".base_layer."


class CheckpointKind(enum.Enum):
    """What a model directory holds, decided by :func:`detect_checkpoint_kind` from its files."""

    LORA = "lora"
    PROJECTOR = "projector"
    LLAVA = "llava"
    LANGUAGE_MODEL = "language_model"


@dataclass(frozen=True)
class _Loaded:
    tokenizer: Any
    model: Any


def detect_checkpoint_kind(model_path: str | PathLike[str]) -> CheckpointKind:
    """Classify ``model_path`` by the files in it (never by its name; upstream #1021, #1022, #730).

    Raises:
        FileNotFoundError: ``model_path`` is not a directory, or holds nothing this loader understands.
    """
    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model path {path} is not a directory; pass the output_dir of a training run, one of its checkpoint-N "
            "folders, a model directory, or a hub id (load_pretrained_model resolves hub ids first)"
        )
    if (path / ADAPTER_CONFIG_FILE).is_file():
        return CheckpointKind.LORA
    has_weights = any((path / name).is_file() for name in MODEL_WEIGHT_FILES)
    if (path / PROJECTOR_FILE).is_file() and not has_weights:
        return CheckpointKind.PROJECTOR
    config = _read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
    if config is None or not has_weights:
        raise FileNotFoundError(
            f"{path} holds no model this loader understands: expected {ADAPTER_CONFIG_FILE} (a LoRA run), "
            f"{PROJECTOR_FILE} (a pretrained projector), or {CONFIG_FILE} with model weights "
            f"({' or '.join(MODEL_WEIGHT_FILES)})"
        )
    return CheckpointKind.LLAVA if _is_llava_config(config) else CheckpointKind.LANGUAGE_MODEL


def load_pretrained_model(
    model_path: str | PathLike[str],
    model_base: str | PathLike[str] | None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict | None = "auto",
    device: str = "cuda",
    use_flash_attn: bool = False,
    **kwargs: Any,
) -> tuple[Any, torch.nn.Module, Any, int]:
    """Load a model for inference and return ``(tokenizer, model, image_processor, context_len)``.

    Args:
        model_path: a LoRA run's ``output_dir`` or any of its ``checkpoint-N/``, a projector-pretraining output, a
            full LLaVA model directory, or a language model directory (see the module docstring).
        model_base: the model LoRA or projector weights were trained over (upstream's ``--model-base``); required
            for those two kinds, ignored with a warning otherwise.
        model_name: accepted for compatibility with upstream callers; the kind is decided from files.
        load_8bit, load_4bit: quantise the language model with bitsandbytes (8-bit, or 4-bit nf4 with double
            quantisation), keeping :data:`llava.model.quantization.QUANTIZATION_SKIP_MODULES` in full precision like training does.
        device_map: passed to ``from_pretrained`` when ``device`` is ``"cuda"``; otherwise everything is put on
            ``device``, as upstream.
        device: ``"cuda"`` or ``"cpu"`` (or ``"cuda:N"``, ``"mps"``...).
        use_flash_attn: use flash-attention-2 (falls back to SDPA with a warning when ``flash_attn`` is absent).
        kwargs: passed on to ``from_pretrained`` (e.g. ``dtype``/``torch_dtype``, ``attn_implementation``).
            The default dtype is float16 on GPUs (as upstream) and float32 elsewhere, where half-precision
            matmuls are slow or unsupported. ``cache_dir`` and ``revision`` are used to resolve hub ids
            (``revision`` for ``model_path`` only).

    Returns:
        The tokenizer (with LLaVA's image tokens added as the config asks), the model in eval mode with LoRA merged,
        the vision tower's image processor (``None`` for language models) and the context length
        (``config.max_sequence_length`` or 2048, as upstream).

    Raises:
        llava.model.hub.HubResolutionError: ``model_path`` or ``model_base`` is neither a local directory nor in the
            HF cache / on the hub.
        ValueError: among others, the loaded weights hold NaN or inf (a run that diverged, or an fp16 overflow).
    """
    del model_name  # upstream decides from it; we decide from the files (upstream #1021, #1022, #730)
    cache_dir = kwargs.pop("cache_dir", None)
    revision = kwargs.pop("revision", None)
    model_path = resolve_model_dir(model_path, cache_dir=cache_dir, revision=revision, what="--model-path")
    if model_base is not None:
        model_base = resolve_model_dir(model_base, cache_dir=cache_dir, what="--model-base")
    kind = detect_checkpoint_kind(model_path)
    dtype = _resolve_dtype(kwargs, device)
    options = _from_pretrained_options(load_8bit, load_4bit, device_map, device, use_flash_attn, dtype, kwargs)
    logger.info("loading %s as %s", model_path, kind.value)

    if kind in (CheckpointKind.LORA, CheckpointKind.PROJECTOR):
        if model_base is None:
            raise ValueError(_missing_base_message(model_path, kind))
        if kind is CheckpointKind.LORA:
            loaded = _load_lora_run(model_path, model_base, options)
        else:
            loaded = _load_projector_over_base(model_path, model_base, options)
    else:
        if model_base is not None:
            warnings.warn(
                f"{model_path} is a complete model ({kind.value}); --model-base {model_base} is ignored",
                stacklevel=2,
            )
        loaded = _load_complete_model(model_path, options)

    tokenizer, model = loaded.tokenizer, loaded.model
    _refuse_nonfinite(model, model_path, model_base)
    image_processor = None
    if _is_llava_config(model.config.to_dict()):
        add_image_tokens(
            model,
            tokenizer,
            # absent from a config means True, as upstream
            patch_token=getattr(model.config, "mm_use_im_patch_token", True),
            start_end=getattr(model.config, "mm_use_im_start_end", False),
        )
        image_processor = _load_vision_tower(model, dtype, device)
    model.eval()
    context_len = getattr(model.config, "max_sequence_length", DEFAULT_CONTEXT_LEN)
    return tokenizer, model, image_processor, context_len


# ----------------------------------------------------------------------------------------------------------------
# The four kinds


def _load_lora_run(run_dir: Path, model_base: Path, options: dict[str, Any]) -> _Loaded:
    """Base model with the run's config -> non-LoRA trainables (projector) -> LoRA adapter merged in."""
    run_config_file = _run_config_file(run_dir)
    base_config = load_checkpoint_config(model_base)
    if run_config_file is not None:
        config = load_checkpoint_config(run_config_file.parent)
    else:
        # A plain PEFT adapter over a language model (or over a full LLaVA) carries no config of its own.
        config = base_config
    non_lora_file = run_dir / NON_LORA_TRAINABLES_FILE
    non_lora_state = _normalise_non_lora_keys(load_state_file(non_lora_file)) if non_lora_file.is_file() else {}
    non_lora_state, added_rows = split_added_rows(non_lora_state)

    model, missing = _load_base(model_base, config, base_config, options)
    if vision_tower_trained(config):
        # The run's tower weights (--unfreeze_mm_vision_tower) or tower LoRA (--lora_vision_tower) go into the
        # tower, which must hold its own weights first.
        _load_vision_tower(model, options["dtype"])
    _apply_state(model, non_lora_state, non_lora_file, model_base)
    _restore_added_tokens(model, added_rows, base_config, non_lora_file)
    still_missing = sorted(set(missing) - set(non_lora_state))
    if still_missing:
        raise ValueError(_missing_weights_message(model_base, still_missing, non_lora_file))
    if run_config_file is not None and _is_llava_config(config.to_dict()) and not non_lora_state:
        logger.info("%s has no %s: the projector comes from %s", run_dir, NON_LORA_TRAINABLES_FILE, model_base)

    # A fully trained tower is loaded now, and its linears share leaf names with the language model's (q_proj, ...):
    # an adapter that did not train the tower must not be put on them.
    tower_untouched = vision_tower_trained(config) and not getattr(config, "lora_vision_tower", False)
    model = _merge_adapter(model, run_dir, exclude=VISION_TOWER_PATTERN if tower_untouched else None)
    tokenizer = _load_tokenizer(run_dir if _has_tokenizer(run_dir) else model_base)
    return _Loaded(tokenizer, model)


def _load_projector_over_base(projector_dir: Path, model_base: Path, options: dict[str, Any]) -> _Loaded:
    """Projector pretraining output (``mm_projector.bin`` + config) over the language model it was trained on."""
    config_file = _run_config_file(projector_dir)
    if config_file is None:
        raise FileNotFoundError(
            f"{projector_dir} has {PROJECTOR_FILE} but no {CONFIG_FILE} (nor one in its parent run directory); the "
            "config says which vision tower and projector type the weights belong to. Copy config.json from the "
            "pretraining output_dir into it"
        )
    config = load_checkpoint_config(config_file.parent)
    base_config = load_checkpoint_config(model_base)
    projector_file = projector_dir / PROJECTOR_FILE
    projector_state, added_rows = split_added_rows(load_state_file(projector_file))

    model, missing = _load_base(model_base, config, base_config, options)
    _apply_state(model, projector_state, projector_file, model_base)
    _restore_added_tokens(model, added_rows, base_config, projector_file)
    still_missing = sorted(set(missing) - set(projector_state))
    if still_missing:
        raise ValueError(_missing_weights_message(model_base, still_missing, projector_file))
    tokenizer = _load_tokenizer(projector_dir if _has_tokenizer(projector_dir) else model_base)
    return _Loaded(tokenizer, model)


def _load_complete_model(model_dir: Path, options: dict[str, Any]) -> _Loaded:
    """A full LLaVA model or a language model, loaded through the Auto classes (LlavaConfig is registered).

    The config is read first: a release's ``"model_type": "llava"`` would otherwise name transformers' own LLaVA.
    """
    config = load_checkpoint_config(model_dir)
    model, info = _model_class(config).from_pretrained(model_dir, config=config, output_loading_info=True, **options)
    if info["missing_keys"]:
        raise ValueError(
            f"{model_dir} is incomplete: no weights for {_preview(info['missing_keys'])}. Re-save the model, or if "
            "it is a LoRA run / pretrained projector, check that its adapter_config.json / mm_projector.bin is there"
        )
    return _Loaded(_load_tokenizer(model_dir), model)


# ----------------------------------------------------------------------------------------------------------------
# Steps


def _load_base(
    model_base: Path, config: Any, base_config: Any, options: dict[str, Any]
) -> tuple[torch.nn.Module, list[str]]:
    """Load ``model_base``'s weights into a model built from ``config``; return it and the keys the base lacked.

    Training may have added tokens (``v0``'s ``[PAD]``, ``<im_start>``/``<im_end>``), so the run's vocabulary can be
    larger than the base's: the base is loaded at its own size and then resized, and the trained rows arrive with the
    non-LoRA trainables. Any other shape difference means the base is not the one the run was trained from.
    """
    if not hasattr(base_config, "vocab_size") or not hasattr(base_config, "hidden_size"):
        raise ValueError(
            f"--model-base {model_base} is not a language model (model_type {base_config.model_type!r}); pass the "
            "--model_name_or_path the run was trained from"
        )
    config = copy.deepcopy(config)
    run_vocab_size, run_pad_token_id = config.vocab_size, getattr(config, "pad_token_id", None)
    config.vocab_size = base_config.vocab_size
    if run_pad_token_id is not None and run_pad_token_id >= base_config.vocab_size:
        # `--version v0` pads with its own [PAD] token, one the base does not have yet: set back after the resize.
        config.pad_token_id = getattr(base_config, "pad_token_id", None)
    _check_base_matches(config, base_config, model_base)
    try:
        # The run's weights (projector, added tokens) are missing from the base by design; they are checked below.
        with quiet_transformers():
            model, info = _model_class(config).from_pretrained(
                model_base, config=config, output_loading_info=True, **options
            )
    except RuntimeError as err:
        if "size mismatch" not in str(err) and "shape" not in str(err):
            raise
        raise ValueError(
            f"the weights in --model-base {model_base} do not fit the model described by the run's config: {err}. "
            "Pass the --model-base the run was trained from"
        ) from err
    if info["mismatched_keys"]:
        raise ValueError(
            f"the weights in --model-base {model_base} have other shapes than the run's config: "
            f"{_preview([key for key, *_ in info['mismatched_keys']])}. Pass the --model-base the run was trained from"
        )
    if run_vocab_size != base_config.vocab_size:
        logger.info(
            "resizing embeddings from the base's %d to the run's %d tokens", base_config.vocab_size, run_vocab_size
        )
        model.resize_token_embeddings(run_vocab_size)
        model.config.vocab_size = run_vocab_size
    model.config.pad_token_id = run_pad_token_id
    return model, list(info["missing_keys"])


def _model_class(config: Any) -> type:
    """A LLaVA config's family's causal LM; any other config's transformers class."""
    if _is_llava_config(config.to_dict()):
        return family_of(config).causal_lm_class
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def _check_base_matches(config: Any, base_config: Any, model_base: Path) -> None:
    """Compare the sizes that decide every weight shape before spending time on loading."""
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    differing = [
        f"{field}: run {getattr(config, field, None)} vs base {getattr(base_config, field, None)}"
        for field in fields
        if getattr(config, field, None) != getattr(base_config, field, None)
    ]
    if differing:
        raise ValueError(
            f"--model-base {model_base} is not the model this run was trained from ({'; '.join(differing)}). "
            "Pass the --model-base used for training"
        )


def _restore_added_tokens(model: torch.nn.Module, rows: dict, base_config: Any, source: Path) -> None:
    """Put the rows of the tokens the run added (``<im_patch>``, ``<im_start>``/``<im_end>``, ``[PAD]``) back, so that
    the loaded model is the one that trained (docs/upstream_differences.md #20)."""
    added = model.get_input_embeddings().num_embeddings - base_config.vocab_size
    if rows:
        restore_added_rows(model, rows, source)
    elif added > 0:
        logger.warning(
            "%s has no rows for the %d token(s) the run added to the base's vocabulary (written before they were "
            "saved, or by upstream): they start from new random rows, so their logits (and everything after an "
            "added token in the input) differ from the trained model's",
            source,
            added,
        )


def _apply_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, model_base: Path) -> None:
    """Copy ``state`` into ``model`` after checking that every name exists there with the same shape."""
    if not state:
        return
    own = model.state_dict()
    unknown = sorted(key for key in state if key not in own)
    if unknown:
        raise ValueError(
            f"{source} has weights the model built from --model-base {model_base} does not have: "
            f"{_preview(unknown)}. Pass the --model-base the run was trained from"
        )
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in sorted(state)
        if state[key].shape != own[key].shape
    ]
    if wrong_shape:
        raise ValueError(
            f"{source} does not fit --model-base {model_base}: {_preview(wrong_shape)}. "
            "Pass the --model-base the run was trained from"
        )
    model.load_state_dict(state, strict=False)


def _merge_adapter(model: torch.nn.Module, run_dir: Path, exclude: str | None = None) -> torch.nn.Module:
    """Load the LoRA adapter over ``model`` (never on modules matching ``exclude``), check every tensor arrived, and
    merge it into the weights."""
    peft_model = attach_adapter(model, run_dir, exclude=exclude)
    logger.info("merging the LoRA adapter from %s", run_dir)
    return peft_model.merge_and_unload()


def attach_adapter(
    model: torch.nn.Module, run_dir: Path, exclude: str | None = None, adapter_name: str = "default"
) -> torch.nn.Module:
    """Load the LoRA adapter of ``run_dir`` over ``model`` as ``adapter_name`` (never on modules matching
    ``exclude``) and check that every tensor of its file arrived. ``model`` is a plain model (it comes back wrapped
    in a PeftModel) or a PeftModel already holding other adapters (it gets one more)."""
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict

    weight_file = next((run_dir / name for name in ADAPTER_WEIGHT_FILES if (run_dir / name).is_file()), None)
    if weight_file is None:
        raise FileNotFoundError(
            f"{run_dir} has {ADAPTER_CONFIG_FILE} but no adapter weights ({' or '.join(ADAPTER_WEIGHT_FILES)}); "
            "the run did not finish saving - use one of its checkpoint-N folders"
        )
    # Read it ourselves first: the one safe reader refuses pickles carrying code with a message naming the file
    # (docs/upstream_differences.md #9), and gives the reference to check what PEFT loaded against.
    expected = load_state_file(weight_file)
    try:
        adapter_config = PeftConfig.from_pretrained(run_dir)
        if exclude is not None and not getattr(adapter_config, "exclude_modules", None):
            adapter_config.exclude_modules = exclude
        if isinstance(model, PeftModel):
            adapter_config.inference_mode = True
            model.add_adapter(adapter_name, adapter_config)
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, expected, adapter_name=adapter_name)
            peft_model = model
        else:
            peft_model = PeftModel.from_pretrained(model, run_dir, adapter_name=adapter_name, config=adapter_config)
    except RuntimeError as err:
        raise ValueError(f"the LoRA weights in {weight_file} do not fit the base model: {err}") from err
    # The embedding matrices are never part of the adapter (training saves without them; a grown vocabulary would
    # otherwise make PEFT expect them here): their added rows come with the non-LoRA trainables.
    loaded = get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False)
    missing = sorted(set(loaded) - set(expected))
    unused = sorted(set(expected) - set(loaded))
    if missing or unused:
        raise ValueError(
            f"the LoRA adapter in {weight_file} does not match the base model: "
            f"layers without weights in the file: {_preview(missing)}; weights in the file with no layer: "
            f"{_preview(unused)}. Pass the --model-base the run was trained from"
        )
    return peft_model


def _refuse_nonfinite(model: torch.nn.Module, model_path: Path | str, model_base: Path | None) -> None:
    """Weights with NaN or inf answer garbage (a run that diverged, or values past fp16's range): refuse them."""
    bad = nonfinite_tensors(model.named_parameters())
    if bad:
        sources = f"{model_path}" + (f" over --model-base {model_base}" if model_base is not None else "")
        raise ValueError(
            f"{sources} has weights with NaN or inf values: {_preview(bad)}. The training run that wrote them "
            "diverged (or they were saved in float16 past its range); retrain from the last checkpoint with finite "
            "weights, in float32 or bf16 (--bf16 True), or with a lower --learning_rate"
        )


def vision_tower_trained(config: Any) -> bool:
    """Whether a run trained its vision tower: fully (LLaVA-NeXT's ``unfreeze_mm_vision_tower``; its weights are in
    the run's files) or with LoRA (``lora_vision_tower``; in the adapter)."""
    return bool(getattr(config, "unfreeze_mm_vision_tower", False) or getattr(config, "lora_vision_tower", False))


def _load_vision_tower(model: torch.nn.Module, dtype: torch.dtype, device: str | None = None) -> Any:
    """Load the tower named by ``mm_vision_tower`` (never quantised), onto ``device`` when given; return its image
    processor. A tower whose weights came with the checkpoint (``unfreeze_mm_vision_tower``) keeps them."""
    vision_tower = model.get_vision_tower()
    if not vision_tower.is_loaded:
        vision_tower.load_model()
    vision_tower.to(dtype=dtype, **({} if device is None else {"device": device}))
    return vision_tower.image_processor


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


# ----------------------------------------------------------------------------------------------------------------
# Options and small helpers


def _resolve_dtype(kwargs: dict[str, Any], device: str) -> torch.dtype:
    """``dtype``/``torch_dtype`` from the caller, else float16 on CUDA (upstream) and float32 elsewhere."""
    dtype = kwargs.pop("dtype", None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    dtype = dtype if dtype is not None else torch_dtype
    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use float16, bfloat16 or float32")
        return resolved
    return dtype


def _from_pretrained_options(
    load_8bit: bool,
    load_4bit: bool,
    device_map: str | dict | None,
    device: str,
    use_flash_attn: bool,
    dtype: torch.dtype,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The keyword arguments every ``from_pretrained`` call here gets."""
    if load_8bit and load_4bit:
        raise ValueError("pass at most one of load_8bit / load_4bit (--load-8bit / --load-4bit)")
    options: dict[str, Any] = {"device_map": device_map if device == "cuda" else {"": device}, "dtype": dtype}
    if load_8bit or load_4bit:
        options["quantization_config"] = bnb_config(8 if load_8bit else 4, compute_dtype=dtype)
    if use_flash_attn:
        options["attn_implementation"] = select_attn_implementation()
    options.update(extra)
    return options


def _normalise_non_lora_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map PEFT-wrapped names (``base_model.model.model.mm_projector.0.weight``) to the plain model's names.

    Upstream strips ``base_model.`` and then, when names start with ``model.model.``, one more ``model.``.
    PEFT's ``.base_layer.`` level (a bias trained with ``lora_bias="all"`` inside a LoRA layer) is removed too.
    """
    state = {key.removeprefix(PEFT_PREFIX): value for key, value in state.items()}
    if any(key.startswith(DOUBLE_MODEL_PREFIX) for key in state):
        state = {key.removeprefix(MODEL_PREFIX): value for key, value in state.items()}
    return {key.replace(PEFT_BASE_LAYER, "."): value for key, value in state.items()}


def _run_config_file(run_dir: Path) -> Path | None:
    """``config.json`` of a run directory; for an upstream ``checkpoint-N/`` without one, the run's own.

    Upstream's checkpoints lack config.json (#1010, #1245, #1566); ours always have it. The config does not change
    during a run, so the parent's is the right one; weights are never borrowed from the parent.
    """
    own = run_dir / CONFIG_FILE
    if own.is_file():
        return own
    parent = run_dir.parent / CONFIG_FILE
    if run_dir.name.startswith(CHECKPOINT_DIR_PREFIX) and parent.is_file():
        logger.info("%s has no %s; using the run's %s", run_dir, CONFIG_FILE, parent)
        return parent
    return None


def _missing_base_message(model_path: Path, kind: CheckpointKind) -> str:
    held = (
        f"a LoRA adapter ({ADAPTER_CONFIG_FILE})" if kind is CheckpointKind.LORA else f"a projector ({PROJECTOR_FILE})"
    )
    return (
        f"{model_path} holds {held}, not a complete model: pass the model it was trained over as model_base "
        "(--model-base), e.g. the --model_name_or_path used for training"
    )


def _missing_weights_message(model_base: Path, missing: list[str], expected_file: Path) -> str:
    return (
        f"no weights for {_preview(missing)}: they are neither in --model-base {model_base} nor in {expected_file}"
        f"{'' if expected_file.is_file() else ' (which does not exist)'}. Use a run directory that has "
        f"{expected_file.name} (every checkpoint-N of our training has it), or pass a --model-base that contains "
        "these weights"
    )


def _has_tokenizer(directory: Path) -> bool:
    return (directory / TOKENIZER_CONFIG_FILE).is_file()


def _is_llava_config(config: dict[str, Any]) -> bool:
    return is_llava_config(config)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _preview(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
