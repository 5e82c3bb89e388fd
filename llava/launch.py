"""Start a script under the real `deepspeed` launcher, also on a machine without a GPU.

What makes `deepspeed --num_gpus N` start N processes on a CPU-only machine (deepspeed 0.19.8):
- `DS_ACCELERATOR=cpu` selects DeepSpeed's CPU accelerator (otherwise it is picked after failed
  detection, with a warning); the process group then uses gloo (oneCCL is not installed).
- `--num_gpus N` sets the per-host slot list to `[0, N)` without checking a device count (the CPU
  accelerator reports one device per NUMA node).
- `--master_port` must differ between concurrent runs: besides the TCP store, DeepSpeed's shared-memory
  all-reduce names its `/dev/shm` segments after uid, `MASTER_ADDR` and `MASTER_PORT`.
- `OMP_NUM_THREADS=1` keeps N workers from oversubscribing a small machine.
- The first launch on a machine JIT-compiles `deepspeed_shm_comm` into `~/.cache/torch_extensions`
  (about 1.5 minutes); later launches reuse it.
The launcher appends `--local_rank=<i>` to each worker's arguments.
Used by the demo (`python -m llava.demo`) and the tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from llava.distributed import hygiene
from llava.distributed.state import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 900
STOP_GRACE_S = 20
LOG_TAIL_CHARS = 6000


class LaunchError(RuntimeError):
    """The launched job failed or timed out; the message ends with the tail of its log (when captured)."""


def deepspeed_command() -> list[str]:
    """The `deepspeed` console script of this interpreter's environment, or its module form."""
    script = Path(sys.executable).parent / "deepspeed"
    if script.exists():
        return [str(script)]
    found = shutil.which("deepspeed")
    if found:
        return [found]
    return [sys.executable, "-m", "deepspeed.launcher.runner"]


def launch_env(extra_pythonpath: Sequence[str | os.PathLike[str]] = ()) -> dict[str, str]:
    """The environment for the launcher: this environment plus what CPU workers need."""
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", "1")
    paths = [str(REPO_ROOT), *map(str, extra_pythonpath), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")  # no tokenizer fork warnings in worker logs
    env.setdefault("PYTHONFAULTHANDLER", "1")  # a stack trace on a crash, and on the SIGABRT of a timeout
    # The launcher finds `python` and `deepspeed` on PATH: put this interpreter's first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def launch_deepspeed(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    num_procs: int = 2,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    extra_pythonpath: Sequence[str | os.PathLike[str]] = (),
    capture: bool = True,
    launcher_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run `deepspeed --num_gpus <num_procs> --master_port <free> <script> <args>` from the repository root.

    With `capture`, stdout and stderr come back as text; otherwise they go to this process's terminal (progress
    bars stay live). `launcher_args` go to the launcher itself (e.g. `--log_level warning`). Raises `LaunchError` when
    the job exits non-zero or runs past `timeout_s`.
    """
    port = free_port()
    command = [
        *deepspeed_command(),
        *launcher_args,
        "--num_gpus",
        str(num_procs),
        "--master_port",
        str(port),
        str(script),
        *args,
    ]
    child_env = launch_env(extra_pythonpath)
    if env:
        child_env.update(env)
    pipe = subprocess.PIPE if capture else None
    # A session of its own, so that a timeout ends the launcher *and* its workers (and nothing else).
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=child_env, stdout=pipe, stderr=pipe, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stop(process)
        raise LaunchError(
            f"{' '.join(command)} timed out after {timeout_s} s; each Python process's stack when it was stopped "
            f"is in the log below\n{_tail(stdout, stderr)}"
        ) from None
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)  # e.g. Ctrl-C: leave no orphaned workers
        raise
    finally:
        hygiene.unlink_shm_segments(port)  # whatever the workers could not remove (killed ones)
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if result.returncode != 0:
        raise LaunchError(f"{' '.join(command)} exited with {result.returncode}\n{_tail(stdout, stderr)}")
    return result


def _stop(process: subprocess.Popen) -> tuple[str | None, str | None]:
    """End a job that ran too long: SIGABRT first (with `PYTHONFAULTHANDLER` set every Python process prints its
    stack on it), then SIGKILL; never waits unboundedly."""
    for sig in (signal.SIGABRT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return process.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            continue
    return None, "(no output: the job's pipes stayed open after SIGKILL)"


def _tail(stdout: str | None, stderr: str | None) -> str:
    return ((stdout or "") + (stderr or ""))[-LOG_TAIL_CHARS:]
