"""Launching `deepspeed` jobs from the tests: `llava.launch` with the tests' helper scripts importable.

A tiny job takes well under two minutes (the first one on a machine also JIT-builds DeepSpeed's CPU op). One that
runs past `TEST_TIMEOUT_S` is stopped with its workers' stacks in the error. After one timeout, later launches in
the same session fail at once instead of waiting out their own timeouts: whatever hung the first (a machine
problem, most likely) would hang them too, and the session must end with a report, not be killed by CI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from llava.launch import REPO_ROOT, LaunchError, free_port, launch_env
from llava.launch import launch_deepspeed as _launch

TESTS_DIR = Path(__file__).resolve().parent
DIST_SCRIPTS = TESTS_DIR / "dist_scripts"
TEST_TIMEOUT_S = 420

__all__ = ["DIST_SCRIPTS", "REPO_ROOT", "TESTS_DIR", "LaunchError", "free_port", "launch_deepspeed", "launch_env"]

_timed_out: list[str] = []


def launch_deepspeed(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    num_procs: int = 2,
    timeout_s: float = TEST_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
):
    """`llava.launch.launch_deepspeed` with `tests/` on the workers' path (for `dist_scripts.*` helpers)."""
    if _timed_out:
        raise LaunchError(f"not launched: an earlier launch in this session timed out ({_timed_out[0]})")
    try:
        return _launch(script, args, num_procs=num_procs, timeout_s=timeout_s, env=env, extra_pythonpath=[TESTS_DIR])
    except LaunchError as error:
        if "timed out after" in str(error):
            _timed_out.append(f"{Path(script).name} {' '.join(map(str, args))}")
        raise
