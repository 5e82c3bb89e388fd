"""A run killed with SIGKILL at any point - in the middle of a checkpoint save too - resumes from the last complete
checkpoint and ends exactly where an uninterrupted run ends. Checkpoints appear only when complete."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from launch import DIST_SCRIPTS, launch_env
from train_helpers import LORA_FILES, RESUME_FILES, checkpoints, files_in, load_bin, logged_losses, multimodal_flags

from llava.train.train import train

pytestmark = [pytest.mark.slow, pytest.mark.dist]
STEPS, SAVE_EVERY = 6, 2


def _flags(tiny, output_dir):
    return multimodal_flags(tiny, output_dir, max_steps=STEPS, save_steps=SAVE_EVERY)


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    train(argv=_flags(tiny, output_dir))
    return output_dir


def _complete(directory) -> bool:
    return files_in(directory) >= LORA_FILES | RESUME_FILES


@pytest.mark.parametrize(
    ("die_at", "survivors"),
    [("save:4", ["checkpoint-2"]), ("step:5", ["checkpoint-2", "checkpoint-4"]), ("save:2", [])],
)
def test_killed_run_resumes_and_finishes_exactly(die_at, survivors, tiny, uninterrupted, tmp_path):
    output_dir = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, str(DIST_SCRIPTS / "train_and_die.py"), *_flags(tiny, output_dir)],
        env={**launch_env([DIST_SCRIPTS.parent]), "LLAVA_TEST_DIE_AT": die_at},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Only complete checkpoints are visible; the one being written stayed aside.
    assert checkpoints(output_dir) == survivors
    assert all(_complete(output_dir / name) for name in survivors)
    if die_at.startswith("save"):
        staged = output_dir / ".staging" / f"checkpoint-{die_at.split(':')[1]}"
        assert "adapter_model.bin" in files_in(staged) and "trainer_state.json" not in files_in(staged)

    train(argv=_flags(tiny, output_dir))  # the same command again: resumes from the last complete checkpoint

    assert checkpoints(output_dir) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert all(_complete(output_dir / name) for name in checkpoints(output_dir))
    assert not (output_dir / ".staging").exists()
    for name in ("adapter_model.bin", "non_lora_trainables.bin"):
        final, reference = load_bin(output_dir / name), load_bin(uninterrupted / name)
        assert set(final) == set(reference) and all(torch.equal(final[k], reference[k]) for k in final), name
    state = json.loads((output_dir / "trainer_state.json").read_text())
    reference_state = json.loads((uninterrupted / "trainer_state.json").read_text())
    resumed_losses = logged_losses(state["log_history"])
    assert resumed_losses == {
        step: loss for step, loss in logged_losses(reference_state["log_history"]).items() if step in resumed_losses
    }
    assert max(resumed_losses) == STEPS
