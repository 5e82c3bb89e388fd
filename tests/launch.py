"""Launching `deepspeed` jobs from the tests: `llava.launch` with the tests' helper scripts importable."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from llava.launch import DEFAULT_TIMEOUT_S, REPO_ROOT, LaunchError, free_port, launch_env
from llava.launch import launch_deepspeed as _launch

TESTS_DIR = Path(__file__).resolve().parent
DIST_SCRIPTS = TESTS_DIR / "dist_scripts"

__all__ = ["DIST_SCRIPTS", "REPO_ROOT", "TESTS_DIR", "LaunchError", "free_port", "launch_deepspeed", "launch_env"]


def launch_deepspeed(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    num_procs: int = 2,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
):
    """`llava.launch.launch_deepspeed` with `tests/` on the workers' path (for `dist_scripts.*` helpers)."""
    return _launch(script, args, num_procs=num_procs, timeout_s=timeout_s, env=env, extra_pythonpath=[TESTS_DIR])
