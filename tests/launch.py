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

from llava.launch import (
    REPO_ROOT,
    LaunchError,
    deepspeed_node_command,
    free_port,
    launch_env,
    torchrun_node_command,
)
from llava.launch import launch_deepspeed as _launch
from llava.launch import launch_nodes as _launch_nodes

TESTS_DIR = Path(__file__).resolve().parent
DIST_SCRIPTS = TESTS_DIR / "dist_scripts"
TEST_TIMEOUT_S = 420

__all__ = [
    "DIST_SCRIPTS",
    "REPO_ROOT",
    "TESTS_DIR",
    "LaunchError",
    "deepspeed_node_command",
    "free_port",
    "launch_deepspeed",
    "launch_env",
    "launch_nodes",
    "torchrun_node_command",
]

_timed_out: list[str] = []


def launch_deepspeed(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    num_procs: int = 2,
    timeout_s: float = TEST_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
):
    """`llava.launch.launch_deepspeed` with `tests/` on the workers' path (for `dist_scripts.*` helpers)."""
    return _guarded(
        f"{Path(script).name} {' '.join(map(str, args))}",
        lambda: _launch(script, args, num_procs=num_procs, timeout_s=timeout_s, env=env, extra_pythonpath=[TESTS_DIR]),
    )


def launch_nodes(
    commands: Sequence[Sequence[str]],
    port: int,
    envs: Sequence[Mapping[str, str] | None] | None = None,
    timeout_s: float = TEST_TIMEOUT_S,
):
    """`llava.launch.launch_nodes` (one launcher per node, all at once) with `tests/` on the workers' path."""
    return _guarded(
        " | ".join(" ".join(command[-3:]) for command in commands),
        lambda: _launch_nodes(commands, port, timeout_s=timeout_s, envs=envs, extra_pythonpath=[TESTS_DIR]),
    )


def _guarded(what: str, start):
    if _timed_out:
        raise LaunchError(f"not launched: an earlier launch in this session timed out ({_timed_out[0]})")
    try:
        return start()
    except LaunchError as error:
        if "timed out after" in str(error):
            _timed_out.append(what)
        raise
