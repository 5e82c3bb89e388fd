"""Export a LLaVA run or checkpoint to transformers' own Llava layout, for vLLM, SGLang, TGI and transformers.

    python scripts/convert_to_hf.py --model-path ./checkpoints/llava-v1.5-13b-lora \\
        --model-base lmsys/vicuna-13b-v1.5 --save-model-path ./llava-v1.5-13b-lora-hf

The source is anything :func:`llava.model.builder.load_pretrained_model` loads: a LoRA run (its ``output_dir`` or
any ``checkpoint-N/``) with its ``--model-base``, a merged or fully fine-tuned model, or a released checkpoint by
hub id (``liuhaotian/llava-v1.5-7b``). The folder written holds everything ``LlavaForConditionalGeneration`` (or
``LlavaNextForConditionalGeneration`` for anyres runs) and ``AutoProcessor`` need: the weights with the vision
tower in safetensors shards, ``config.json``, the tokenizer with ``<image>`` and ``<pad>``, the processor configs
and the chat template of ``--conv-mode``.

The steps: check the output folder -> load the model (LoRA merged in float32) -> decide the target class ->
tokenizer and chat template -> stream the weights into shards, each cast to ``--dtype`` as it is written -> the
config, tokenizer and processor files. Everything is written into a hidden folder beside the output and moved
into place at the end, so a failed export leaves nothing half-written behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llava.conversation import Conversation, SeparatorStyle, conv_templates, get_conv_template
from llava.export import keys
from llava.export.chat_template import chat_template
from llava.export.processor import write_processor_files
from llava.export.shards import PlannedTensor, write_shards
from llava.export.target import hf_config_dict, target_for
from llava.export.tokenizer import exported_tokenizer, padded_rows
from llava.inference import MODEL_TYPE_TO_CONV_MODE, NAME_TO_CONV_MODE, resolve_conv_mode
from llava.mm_utils import get_model_name_from_path
from llava.model import compat
from llava.model.builder import CheckpointKind, detect_checkpoint_kind, load_pretrained_model
from llava.model.files import CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_JSON_FILE
from llava.model.hub import resolve_model_dir
from llava.model.state_files import nonfinite_tensors

logger = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_DTYPE = "float16"  # as scripts/merge_lora_weights.py (and upstream's releases)
DEFAULT_MAX_SHARD_SIZE = "5GB"  # the llava-hf repos' shards
# Kinds whose weights are combined on load (LoRA merged, projector added): done in float32, then cast per tensor.
MERGED_KINDS = (CheckpointKind.LORA, CheckpointKind.PROJECTOR)
GENERIC_TOKENIZER_CLASS = "TokenizersBackend"
LLAMA_TOKENIZER_CLASS = "LlamaTokenizer"
PROBE_QUESTION = "What is shown in the image? Answer briefly."
PROBE_REPLY = "A red square, on a gray background."
PROBE_FOLLOW_UP = "And what colour is  it?"


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how (the command line's flags)."""

    model_path: str
    save_model_path: str
    model_base: str | None = None
    dtype: str = DEFAULT_DTYPE
    conv_mode: str | None = None
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE
    overwrite: bool = False


def export(options: ExportOptions) -> Path:
    """Write the export of ``options.model_path`` into ``options.save_model_path``; returns that folder.

    Raises:
        FileExistsError: the output folder is not empty and ``overwrite`` is off, or it is one of the sources.
        ValueError: the source cannot be exported (the message names the flag), or loading it failed (a LoRA run
            without ``model_base``, a base whose shapes do not match, non-finite weights, ...).
    """
    out_dir = Path(options.save_model_path).expanduser().resolve()
    dtype = _dtype(options.dtype)
    max_shard_bytes = _shard_bytes(options.max_shard_size)
    model_dir = resolve_model_dir(options.model_path, what="--model-path")
    base_dir = resolve_model_dir(options.model_base, what="--model-base") if options.model_base else None
    _check_output_dir(out_dir, [model_dir] + ([base_dir] if base_dir else []), options.overwrite)

    model_name = get_model_name_from_path(options.model_path)
    tokenizer, model, image_processor = _load(model_dir, base_dir, options.model_path, dtype)
    vision_config = model.get_vision_tower().config
    target = target_for(model.config, vision_config)
    conv_mode = _conv_mode(options.conv_mode, model_name, model.config)
    conv = get_conv_template(conv_mode)
    template = chat_template(conv, conv_mode)
    hf_tokenizer = exported_tokenizer(tokenizer, probe_prompts(conv))
    hf_tokenizer.chat_template = template
    rows = padded_rows(max(len(hf_tokenizer), model.get_input_embeddings().num_embeddings))
    logger.info(
        "exporting to %s (%s, chat template %s, %d vocabulary rows, %s)",
        out_dir, target.architecture, conv_mode, rows, options.dtype,
    )  # fmt: skip

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    staging.chmod(_default_dir_mode())  # mkdtemp's folder is private (0700); the export is an ordinary folder
    try:
        files = write_shards(plan_tensors(model, rows, dtype), staging, max_shard_bytes)
        config = hf_config_dict(
            target, model.config, vision_config, vocab_rows=rows,
            image_token_id=hf_tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=hf_tokenizer.pad_token_id,
            dtype=dtype,
        )  # fmt: skip
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        compat.config_for_transformers4(staging)
        _write_generation_config(model, hf_tokenizer, staging)
        _write_tokenizer(hf_tokenizer, staging, template, target.processor_class)
        write_processor_files(staging, target, image_processor, template)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s: %s", out_dir, ", ".join(files))
    return out_dir


# ----------------------------------------------------------------------------------------------------------------
# Steps


def _check_output_dir(out_dir: Path, sources: list[Path], overwrite: bool) -> None:
    for source in sources:
        source = source.resolve()
        if out_dir == source or out_dir in source.parents or source in out_dir.parents:
            raise FileExistsError(
                f"--save-model-path {out_dir} overlaps the model it exports ({source}); choose a folder of its own"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--save-model-path {out_dir} is a file; pass a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--save-model-path {out_dir} is not empty; pass --overwrite to replace what is in it, or choose an "
            "empty or new folder"
        )


def _load(model_dir: Path, base_dir: Path | None, model_path: str, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """Our model as ``load_pretrained_model`` gives it, on the CPU: LoRA merged (in float32), vision tower loaded.

    A complete model already stored in ``dtype`` (a float16 release exported to float16) loads in it: half the
    memory of float32 and nothing lost. Anything else loads in float32 and each tensor is cast once, as it is
    written: the vision tower comes from its own (float32) files, and a cast through another half type would
    round it twice.
    """
    kind = detect_checkpoint_kind(model_dir)
    same = kind not in MERGED_KINDS and _checkpoint_dtype(model_dir) == dtype
    load_dtype = dtype if same else torch.float32
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_dir, base_dir, get_model_name_from_path(model_path), device="cpu", dtype=load_dtype
    )
    if image_processor is None:
        raise ValueError(
            f"--model-path {model_path} is a language model without a vision tower (no mm_vision_tower in its "
            "config); there is no LLaVA to export"
        )
    return tokenizer, model, image_processor


def _conv_mode(requested: str | None, model_name: str, config: Any) -> str:
    """``--conv-mode``, else what the model's name or config says (as run_llava infers it). A name that says
    nothing is an error here, not upstream's silent llava_v0: the chat template is baked into the export."""
    names_one = getattr(config, "model_type", "") in MODEL_TYPE_TO_CONV_MODE or any(
        fragment in model_name.lower() for fragment, _ in NAME_TO_CONV_MODE
    )
    if requested is None and not names_one:
        raise ValueError(
            f"--conv-mode is needed: neither the name {model_name!r} nor the config says which conversation template "
            "the model was trained with. Pass the run's --version (e.g. --conv-mode vicuna_v1 for --version v1; "
            "llava_v1 for liuhaotian's LLaVA-1.5 releases)"
        )
    return resolve_conv_mode(requested, model_name, config)


def _checkpoint_dtype(model_dir: Path) -> torch.dtype:
    """The dtype ``config.json`` says the weights are stored in (``dtype``, or transformers 4's ``torch_dtype``);
    float32 when it says none of ours."""
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    return DTYPES.get(str(name).removeprefix("torch."), torch.float32)


def probe_prompts(conv: Conversation) -> list[str]:
    """Prompts of ``conv`` (as our inference renders them) that the exported tokenizer must tokenize as we do."""
    single = conv.copy()
    single.append_message(conv.roles[0], "<image>\n" + PROBE_QUESTION)
    single.append_message(conv.roles[1], None)
    prompts = [single.get_prompt()]
    if conv.sep_style is not SeparatorStyle.PLAIN:  # upstream's plain template cannot render a reply
        rounds = conv.copy()
        for message in ("<image>\n" + PROBE_QUESTION, PROBE_REPLY, PROBE_FOLLOW_UP, None):
            rounds.append_message(conv.roles[len(rounds.messages) % 2], message)
        prompts.append(rounds.get_prompt())
    return prompts


def plan_tensors(model: torch.nn.Module, rows: int, dtype: torch.dtype) -> list[PlannedTensor]:
    """Every weight under its llava-hf name, produced in ``dtype`` when written; the embeddings and the LM head
    grown to ``rows``, the new rows (``<image>``, ``<pad>``, padding) at the mean of the trained ones."""
    state = model.state_dict()
    names = keys.hf_names(state)
    planned = []
    for name, hf_name in names.items():
        shape = tuple(state[name].shape)
        if hf_name in (keys.HF_EMBED_TOKENS, keys.HF_LM_HEAD_WEIGHT):
            shape = (rows, *shape[1:])
        planned.append(PlannedTensor(hf_name, dtype, shape, _producer(state, name, hf_name, rows, dtype)))
    return planned


def _producer(state: dict[str, torch.Tensor], name: str, hf_name: str, rows: int, dtype: torch.dtype):
    def produce() -> torch.Tensor:
        value = state[name].detach()
        if value.shape[0] < rows and hf_name in (keys.HF_EMBED_TOKENS, keys.HF_LM_HEAD_WEIGHT):
            mean = value.float().mean(dim=0, keepdim=True).to(value.dtype)
            value = torch.cat([value, mean.expand(rows - value.shape[0], -1)], dim=0)
        value = value.to(dtype)
        if nonfinite_tensors([(name, value)]):
            raise ValueError(
                f"the weight {name} exceeds the range of {dtype} (inf after the cast); nothing was saved. Pass "
                "--dtype bfloat16 or --dtype float32"
            )
        return value

    return produce


def _write_generation_config(model: Any, tokenizer: Any, out_dir: Path) -> None:
    generation_config = model.generation_config
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.save_pretrained(out_dir)


def _write_tokenizer(tokenizer: Any, out_dir: Path, template: str, processor_class: str) -> None:
    """The fast tokenizer only (``tokenizer.json``): the slow sentencepiece one would lose the "▁" after
    ``<image>`` (see :mod:`llava.export.tokenizer`). Readable by transformers 4.37's tokenizers 0.15 too."""
    tokenizer.save_pretrained(out_dir)
    config_path = out_dir / TOKENIZER_CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template  # where transformers 4 reads it
    config["processor_class"] = processor_class
    config["padding_side"] = "left"  # batched generation, as our own inference pads
    if config.get("tokenizer_class") == GENERIC_TOKENIZER_CLASS:
        # What transformers 5 calls a tokenizer it read for a config of its own Llava (a release's "llava");
        # transformers 4 knows no such class. The file is a Llama tokenizer.json either way.
        config["tokenizer_class"] = LLAMA_TOKENIZER_CLASS
    # transformers 4 takes a list here as a tokenizer argument of the wrong type (see llava.model.compat).
    if isinstance(config.get("extra_special_tokens"), list):
        del config["extra_special_tokens"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer_json = out_dir / TOKENIZER_JSON_FILE
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    tokenizer_json.write_text(
        json.dumps(compat.tokenizer_json_for_tokenizers_0_15(data), ensure_ascii=False), encoding="utf-8"
    )


def _default_dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if out_dir.is_dir():
        shutil.rmtree(out_dir)  # empty, or --overwrite (checked before anything was loaded)
    os.replace(staging, out_dir)


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: use one of {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def _shard_bytes(size: str) -> int:
    from transformers.utils.hub import convert_file_size_to_int

    try:
        value = convert_file_size_to_int(size)
    except (ValueError, TypeError) as err:
        raise ValueError(f"--max-shard-size {size!r}: write a size such as 5GB or 500MB") from err
    if value <= 0:
        raise ValueError(f"--max-shard-size {size!r} must be positive")
    return value


# ----------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert_to_hf.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=str, required=True, help="the run, checkpoint-N, model dir or hub id")
    parser.add_argument("--model-base", type=str, default=None, help="the base of a LoRA run or projector")
    parser.add_argument("--save-model-path", type=str, required=True, help="the folder to write the export into")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=DEFAULT_DTYPE, help="dtype of the saved weights")
    parser.add_argument(
        "--conv-mode",
        choices=sorted(conv_templates),
        default=None,
        help="the conversation template the chat template renders: the run's --version (--version v0 and v0.5 "
        "train with vicuna_v1); default: inferred from the model's name and config, as run_llava does",
    )
    parser.add_argument(
        "--max-shard-size", type=str, default=DEFAULT_MAX_SHARD_SIZE, help="largest safetensors shard (e.g. 5GB)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace what --save-model-path holds")
    return parser


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(
        model_path=args.model_path,
        save_model_path=args.save_model_path,
        model_base=args.model_base,
        dtype=args.dtype,
        conv_mode=args.conv_mode,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return export(options_from_args(build_parser().parse_args(argv)))
