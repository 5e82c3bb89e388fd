"""Run a script under the real `deepspeed` launcher with N CPU worker processes (tests only).

What makes `deepspeed --num_gpus N` start N processes on a machine without a GPU (deepspeed 0.19.8):
- `DS_ACCELERATOR=cpu` selects DeepSpeed's CPU accelerator (otherwise it is picked after failed
  detection, with a warning); the process group then uses gloo (oneCCL is not installed).
- `--num_gpus N` sets the per-host slot list to `[0, N)` without checking a device count (the CPU
  accelerator reports one device per NUMA node, 1 here).
- `--master_port` must differ between concurrent runs: besides the TCP store, DeepSpeed's shared-memory
  all-reduce names its `/dev/shm` segments after uid, `MASTER_ADDR` and `MASTER_PORT`.
- `OMP_NUM_THREADS=1` keeps N workers from oversubscribing a small machine.
- The first launch on a machine JIT-compiles `deepspeed_shm_comm` into `~/.cache/torch_extensions`
  (about 1.5 minutes); later launches reuse it.
The launcher appends `--local_rank=<i>` to each worker's arguments.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
DIST_SCRIPTS = TESTS_DIR / "dist_scripts"
DEFAULT_TIMEOUT_S = 900
LOG_TAIL_CHARS = 6000


class LaunchError(RuntimeError):
    """The launched job failed or timed out; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port that is free right now on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_command() -> list[str]:
    """The `deepspeed` console script of this interpreter's environment, or its module form."""
    script = Path(sys.executable).parent / "deepspeed"
    if script.exists():
        return [str(script)]
    found = shutil.which("deepspeed")
    if found:
        return [found]
    return [sys.executable, "-m", "deepspeed.launcher.runner"]


def launch_deepspeed(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    num_procs: int = 2,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `deepspeed --num_gpus <num_procs> --master_port <free> <script> <args>` on CPU workers.

    Returns the completed process (stdout and stderr as text). Raises `LaunchError` with the tail
    of the combined log when the job exits non-zero or runs past `timeout_s`.
    """
    command = [
        *deepspeed_command(),
        "--num_gpus",
        str(num_procs),
        "--master_port",
        str(free_port()),
        str(script),
        *args,
    ]
    child_env = dict(os.environ)
    child_env.update(
        {
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": "1",
            # `llava` and the scripts' shared helpers (`dist_scripts.*`) importable in the workers.
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), str(TESTS_DIR), child_env.get("PYTHONPATH")])
            ),
            # No tokenizer fork warnings in worker logs.
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    if env:
        child_env.update(env)
    # A session of its own, so that a timeout ends the launcher *and* its workers (and nothing else).
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise LaunchError(f"{' '.join(command)} timed out after {timeout_s} s\n{_tail(stdout + stderr)}") from None
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if result.returncode != 0:
        raise LaunchError(
            f"{' '.join(command)} exited with {result.returncode}\n{_tail(result.stdout + result.stderr)}"
        )
    return result


def _tail(log: str) -> str:
    return log[-LOG_TAIL_CHARS:]
