"""Command-line parsing and validation of `llava.train.arguments` (no model is loaded)."""

from __future__ import annotations

import dataclasses
import importlib.util
import warnings
from typing import Literal, Optional

import pytest

from llava.mm_utils import parse_grid_pinpoints
from llava.train.arguments import (
    LITERAL_FIELDS,
    ArgumentsError,
    DataArguments,
    TrainingArguments,
    literal_choices,
    parse_args,
)


@pytest.fixture
def base_argv(tiny, tmp_path):
    """A valid LoRA command line on the tiny model."""
    return [
        "--model_name_or_path", str(tiny.llm),
        "--version", "v1",
        "--data_path", str(tiny.data),
        "--image_folder", str(tiny.image_folder),
        "--vision_tower", str(tiny.vision_tower),
        "--lora_enable", "True",
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip


def test_valid_command_line_parses(base_argv):
    model_args, data_args, training_args = parse_args(base_argv)
    assert model_args.version == "v1"
    assert data_args.data_path.endswith("llava_tiny.json")
    assert training_args.lora_enable is True
    # upstream's defaults
    assert (training_args.lora_r, training_args.lora_alpha, training_args.lora_dropout) == (64, 16, 0.05)
    assert (training_args.bits, training_args.model_max_length, training_args.optim) == (16, 512, "adamw_torch")
    assert training_args.remove_unused_columns is False


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--version", "vicuna_v9"], "--version 'vicuna_v9' is not a conversation template; valid names: "),
        (["--bits", "3"], "--bits 3 is not one of 4, 8, 16."),
        (["--quant_type", "int4"], "--quant_type 'int4' is not one of 'fp4', 'nf4'."),
        (["--lora_bias", "some"], "--lora_bias 'some' is not one of 'none', 'all', 'lora_only'."),
        (["--image_aspect_ratio", "wide"], "--image_aspect_ratio 'wide' is not one of 'square', 'pad', 'anyres'."),
        (["--mm_projector_type", "mlp2x_relu"], "--mm_projector_type 'mlp2x_relu' is unknown"),
        (["--mm_vision_select_feature", "cls"], "--mm_vision_select_feature 'cls' is not one of"),
        (["--mm_patch_merge_type", "unpad"], "--mm_patch_merge_type 'unpad' is not one of"),
        (["--lora_r", "0"], "--lora_r must be a positive rank, got 0."),
        (["--lora_dropout", "1.5"], "--lora_dropout must be in [0, 1), got 1.5."),
        (["--image_aspect_ratio", "anyres"], "--image_aspect_ratio anyres needs --image_grid_pinpoints"),
        (["--image_grid_pinpoints", "[[336,672],[672]]"], "--image_grid_pinpoints '[[336,672],[672]]' is not a list"),
        (["--data_path", "/nonexistent/data.json"], "--data_path '/nonexistent/data.json' does not exist"),
        (["--image_folder", "/nonexistent/images"], "--image_folder '/nonexistent/images' does not exist"),
        (["--pretrain_mm_mlp_adapter", "/nonexistent/mm_projector.bin"], "does not exist; pass the mm_projector.bin"),
        (["--lora_enable", "False", "--bits", "4"], "--bits 4 quantizes the language model"),
        (
            ["--lora_enable", "False", "--tune_mm_mlp_adapter", "True", "--freeze_mm_mlp_adapter", "True"],
            "leaves nothing to train",
        ),
        (["--tune_mm_mlp_adapter", "True"], "drop --lora_enable for projector pretraining"),
        # The peers' flags (issue 20)
        (["--init_lora_weights", "loftq"], "--init_lora_weights 'loftq' is not one of 'true', 'gaussian', 'pissa'"),
        (["--loraplus_lr_ratio", "0"], "--loraplus_lr_ratio must be positive, got 0.0."),
        (
            ["--lora_enable", "False", "--use_dora", "True", "--use_rslora", "True"],
            "--use_dora, --use_rslora configure LoRA adapters: add --lora_enable True or drop them.",
        ),
        (["--lora_enable", "False", "--loraplus_lr_ratio", "16"], "--loraplus_lr_ratio configure LoRA adapters"),
        (["--init_lora_weights", "pissa", "--use_dora", "True"], "which DoRA's magnitudes cannot be"),
        (["--init_lora_weights", "pissa_niter_4", "--bits", "4"], "PiSSA decomposes full-precision weights"),
        (["--unfreeze_mm_vision_tower", "True", "--lora_vision_tower", "True"], "pass one."),
        (["--use_dora", "True", "--bits", "8"], "DoRA over bitsandbytes' 8-bit weights fails at the second step"),
        (["--mm_vision_tower_lr", "2e-6"], "--mm_vision_tower_lr sets the learning rate of a trained vision tower"),
        (
            ["--lora_enable", "False", "--tune_mm_mlp_adapter", "True", "--unfreeze_mm_vision_tower", "True"],
            "--tune_mm_mlp_adapter trains the projector alone; drop --unfreeze_mm_vision_tower.",
        ),
    ],
)
def test_each_problem_is_reported(base_argv, extra, expected):
    with pytest.raises(ArgumentsError) as caught:
        parse_args(base_argv + extra)
    assert expected in str(caught.value)
    assert str(caught.value).startswith("1 problem(s) with the training arguments:")


def test_all_problems_are_reported_at_once(base_argv):
    with pytest.raises(ArgumentsError) as caught:
        parse_args(base_argv + ["--version", "nope", "--bits", "5", "--lora_bias", "x"])
    message = str(caught.value)
    assert message.startswith("3 problem(s)")
    assert "--version 'nope'" in message and "--bits 5" in message and "--lora_bias 'x'" in message


def test_the_peers_flags_are_off_by_default_and_parse(base_argv):
    model_args, _, training_args = parse_args(base_argv)
    assert (training_args.use_dora, training_args.use_rslora, training_args.init_lora_weights) == (False, False, "true")
    assert (training_args.loraplus_lr_ratio, training_args.lora_vision_tower, training_args.mm_vision_tower_lr) == (
        None, False, None,
    )  # fmt: skip
    assert model_args.unfreeze_mm_vision_tower is False and training_args.neftune_noise_alpha is None
    flags = ["--use_dora", "True", "--use_rslora", "True", "--loraplus_lr_ratio", "16", "--init_lora_weights",
             "gaussian", "--unfreeze_mm_vision_tower", "True", "--mm_vision_tower_lr", "2e-6"]  # fmt: skip
    model_args, _, training_args = parse_args(base_argv + flags)
    assert (training_args.use_dora, training_args.use_rslora, training_args.init_lora_weights) == (
        True, True, "gaussian",
    )  # fmt: skip
    assert (training_args.loraplus_lr_ratio, training_args.mm_vision_tower_lr) == (16.0, 2e-6)
    assert model_args.unfreeze_mm_vision_tower is True


def test_liger_without_a_gpu_says_so_and_keeps_the_chunked_loss(base_argv):
    with pytest.warns(UserWarning, match="no GPU found, so the loss is the chunked cross-entropy instead"):
        _, _, training_args = parse_args(base_argv + ["--use_liger_kernel", "True"])
    assert training_args.use_liger_kernel is False  # transformers must not try (and stop on the missing package)


def test_unknown_version_lists_every_template(base_argv):
    from llava.conversation import conv_templates

    with pytest.raises(ArgumentsError) as caught:
        parse_args(base_argv + ["--version", "llava_v2"])
    listed = str(caught.value).split("valid names: ")[1].rstrip(".")
    assert listed.split(", ") == sorted({*conv_templates, "v0.5"})


def test_projector_pretraining_needs_a_vision_tower(tiny, tmp_path):
    argv = ["--model_name_or_path", str(tiny.llm), "--data_path", str(tiny.data), "--tune_mm_mlp_adapter", "True",
            "--output_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(ArgumentsError, match="--tune_mm_mlp_adapter trains the projector, which needs --vision_tower"):
        parse_args(argv)


def test_upstream_gpu_flags_run_on_cpu(base_argv):
    """upstream's scripts pass --bf16 --tf32 --evaluation_strategy --report_to wandb: all accepted on CPU."""
    argv = base_argv + ["--bf16", "True", "--tf32", "True", "--evaluation_strategy", "no", "--report_to", "wandb"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, training_args = parse_args(argv)
    assert training_args.bf16 is True and training_args.use_cpu is True
    assert training_args.tf32 is None
    assert training_args.eval_strategy == "no"
    wandb_installed = importlib.util.find_spec("wandb") is not None
    assert training_args.report_to == (["wandb"] if wandb_installed else [])
    messages = [str(w.message) for w in caught]
    assert sum("wandb is not installed" in m for m in messages) == (0 if wandb_installed else 1)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[[336,672],[672,336],[672,672]]", [[336, 672], [672, 336], [672, 672]]),
        ("[(32, 64)]", [[32, 64]]),
        ("[]", None),
        ("[[32, 64, 1]]", None),
        ("[[32, -1]]", None),
        ("not a list", None),
    ],
)
def test_parse_grid_pinpoints(text, expected):
    assert parse_grid_pinpoints(text) == expected


def test_flag_combinations_from_the_data_issue_are_rejected_together(tiny, tmp_path):
    argv = ["--model_name_or_path", str(tiny.llm), "--data_path", str(tiny.data), "--output_dir", str(tmp_path),
            "--bits", "4", "--tune_mm_mlp_adapter", "True", "--mm_projector_lr", "2e-5"]  # fmt: skip
    with pytest.raises(ArgumentsError) as caught:
        parse_args(argv)
    message = str(caught.value)
    assert message.startswith("4 problem(s)")
    assert "--bits 4 with --tune_mm_mlp_adapter" in message
    assert "--mm_projector_lr sets the projector's learning rate, but there is no projector" in message
    assert "--tune_mm_mlp_adapter trains the projector, which needs --vision_tower" in message
    assert "--bits 4 quantizes the language model" in message


PURITY_PROBE = """
import json, os, sys
import torch
from accelerate import PartialState
from transformers.integrations import is_deepspeed_zero3_enabled
import llava.distributed.hygiene as hygiene

def refuse(*args, **kwargs):
    raise AssertionError("parsing scanned /proc")

scanners = (hygiene._open_files, hygiene._mapped_files)
hygiene._open_files = hygiene._mapped_files = refuse
from llava.train.arguments import parse_args

environment = dict(os.environ)
_, _, training_args = parse_args(sys.argv[1:])
after_parse = {
    "environment_unchanged": dict(os.environ) == environment,
    "process_group": torch.distributed.is_initialized(),
    "accelerate_state": bool(PartialState._shared_state),
    "zero3": is_deepspeed_zero3_enabled(),
}
hygiene._open_files, hygiene._mapped_files = scanners
training_args.setup_distributed()
after_setup = {
    "process_group": torch.distributed.is_initialized(),
    "accelerate_state": bool(PartialState._shared_state),
    "zero3": is_deepspeed_zero3_enabled(),
    "world_size": training_args.world_size,
    "device": str(training_args.device),
}
print(json.dumps({"after_parse": after_parse, "after_setup": after_setup}))
"""


@pytest.mark.dist
def test_parsing_is_pure_and_setup_distributed_makes_the_state(base_argv):
    """Building the arguments starts no process group, touches no environment variable and scans nothing; the
    explicit `setup_distributed` step then creates the DeepSpeed state ZeRO-3 needs (on CPU: over gloo)."""
    import json
    import subprocess
    import sys

    from llava.launch import REPO_ROOT

    argv = base_argv + ["--deepspeed", str(REPO_ROOT / "configs" / "zero3.json"), "--bf16", "True"]
    env = {key: value for key, value in __import__("os").environ.items()
           if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", PURITY_PROBE, *argv], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    states = json.loads(result.stdout.strip().splitlines()[-1])
    assert states["after_parse"] == {
        "environment_unchanged": True, "process_group": False, "accelerate_state": False, "zero3": False,
    }  # fmt: skip
    assert states["after_setup"] == {
        "process_group": True, "accelerate_state": True, "zero3": True, "world_size": 1, "device": "cpu",
    }  # fmt: skip


@pytest.mark.parametrize("form", ["none", "json", "file"])
def test_deepspeed_on_cpu_keeps_the_users_accelerator_config(base_argv, tmp_path, form):
    """On CPU, DeepSpeed needs `use_configured_state`; the user's own accelerator settings stay."""
    user = '{"even_batches": false}'
    if form == "file":
        (tmp_path / "accelerator.json").write_text(user)
    extra = {
        "none": [],
        "json": ["--accelerator_config", user],
        "file": ["--accelerator_config", str(tmp_path / "accelerator.json")],
    }
    _, _, training_args = parse_args(base_argv + ["--deepspeed", "configs/zero3.json", *extra[form]])
    config = training_args.accelerator_config
    assert config.use_configured_state is True
    assert config.even_batches is (form == "none")


def test_literal_fields_are_read_from_the_annotations():
    """LITERAL_FIELDS (whose argparse choices give way to validate_args' report) is derived, not kept by hand: the
    six Literal-typed flags, and a fork's new Literal field (Optional too) with its choices, in declaration order."""
    assert LITERAL_FIELDS == {
        "image_aspect_ratio", "lora_bias", "bits", "quant_type", "mm_vision_select_feature", "mm_patch_merge_type",
    }  # fmt: skip
    assert literal_choices(TrainingArguments) == {
        "quant_type": ("fp4", "nf4"), "bits": (4, 8, 16), "lora_bias": ("none", "all", "lora_only"),
    }  # fmt: skip

    @dataclasses.dataclass
    class ForkDataArguments(DataArguments):
        crop: Optional[Literal["center", "none"]] = None
        note: str = ""
        resample: Literal["bicubic", "bilinear"] = "bicubic"

    assert literal_choices(ForkDataArguments) == {"crop": ("center", "none"), "resample": ("bicubic", "bilinear")}
