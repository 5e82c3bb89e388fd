"""Evaluation during 2-process DeepSpeed LoRA runs (ZeRO-2, and ZeRO-3 with every parameter partitioned): eval_loss
at each evaluation and eval_generations.jsonl written once, by the main process, from generation on both ranks."""

from __future__ import annotations

import json

import pytest
from launch import REPO_ROOT, launch_deepspeed
from train_helpers import multimodal_flags

pytestmark = [pytest.mark.slow, pytest.mark.dist]

EVAL_STEPS = 2
MAX_STEPS = 4
GENERATION_SAMPLES = 2


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_lora_run_with_an_eval_split(stage, tiny, tmp_path):
    config = json.loads((REPO_ROOT / "configs" / f"{stage}.json").read_text())
    if stage == "zero3":
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    deepspeed_config = tmp_path / f"{stage}.json"
    deepspeed_config.write_text(json.dumps(config))
    output_dir = tmp_path / "run"
    argv = multimodal_flags(
        tiny, output_dir, deepspeed=deepspeed_config, eval_split_ratio=0.25, eval_strategy="steps", eval_steps=EVAL_STEPS,
        per_device_eval_batch_size=2, max_steps=MAX_STEPS, save_steps=MAX_STEPS,
        eval_generation_samples=GENERATION_SAMPLES, eval_generation_max_new_tokens=4,
    )  # fmt: skip
    launch_deepspeed(REPO_ROOT / "llava" / "train" / "train_mem.py", argv, num_procs=2)

    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    evaluations = [entry for entry in history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == list(range(EVAL_STEPS, MAX_STEPS + 1, EVAL_STEPS))
    assert all(entry["eval_loss"] > 0 for entry in evaluations)
    lines = [json.loads(line) for line in (output_dir / "eval_generations.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [step for step in (2, 4) for _ in range(GENERATION_SAMPLES)]
    assert len({line["id"] for line in lines}) == GENERATION_SAMPLES
    assert all(line["reference"] and isinstance(line["answer"], str) for line in lines)
    assert (output_dir / "adapter_model.bin").is_file() and (output_dir / "non_lora_trainables.bin").is_file()
