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

Several nodes on one machine (how multi-node is tested on one box): one launcher per node, all started at once with
the same `--master_addr 127.0.0.1 --master_port P` and their own node rank: `deepspeed --hostfile H --no_ssh
--node_rank N` (H lists one line per node; with `--no_ssh` the host names in it are only labels) or `torchrun
--nnodes K --node_rank N` (`launch_nodes`).
Used by the demo (`python -m llava.demo`) and the tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from llava.distributed import hygiene
from llava.distributed.state import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 900
STOP_GRACE_S = 20
LOG_TAIL_CHARS = 6000
LOOPBACK = "127.0.0.1"
POLL_S = 0.5


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


def deepspeed_node_command(
    script: str | os.PathLike[str], args: Sequence[str], *, hostfile: str | os.PathLike[str], node_rank: int, port: int
) -> list[str]:
    """One node's `deepspeed --hostfile <hostfile> --no_ssh --node_rank <n>` launcher, master on the loopback."""
    return [
        *deepspeed_command(),
        *("--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node_rank)),
        *("--master_addr", LOOPBACK, "--master_port", str(port)),
        str(script),
        *args,
    ]


def torchrun_node_command(
    script: str | os.PathLike[str],
    args: Sequence[str],
    *,
    nnodes: int,
    node_rank: int,
    port: int,
    nproc_per_node: int = 1,
) -> list[str]:
    """One node's `torchrun --nnodes <k> --node_rank <n>` launcher (static rendezvous), master on the loopback."""
    return [
        *(sys.executable, "-m", "torch.distributed.run"),
        *("--nnodes", str(nnodes), "--nproc_per_node", str(nproc_per_node), "--node_rank", str(node_rank)),
        *("--master_addr", LOOPBACK, "--master_port", str(port)),
        str(script),
        *args,
    ]


def launch_nodes(
    commands: Sequence[Sequence[str]],
    port: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    envs: Sequence[Mapping[str, str] | None] | None = None,
    extra_pythonpath: Sequence[str | os.PathLike[str]] = (),
) -> list[subprocess.CompletedProcess[str]]:
    """Run one launcher per node (`commands[i]`, with `envs[i]` over `launch_env`) at once, from the repository root,
    and wait for all of them.

    When one exits non-zero the others are stopped (their peers are gone: they would wait in a collective until
    the timeout). Raises `LaunchError` naming every failed or stopped node, with the tail of each one's log; returns
    their results (output captured as text) when all exit 0. `port` is the job's `--master_port`, whose
    shared-memory segments are removed at the end.
    """
    envs = list(envs) if envs is not None else [None] * len(commands)
    if len(envs) != len(commands):
        raise ValueError(f"{len(commands)} commands but {len(envs)} environments")
    with tempfile.TemporaryDirectory(prefix="llava-launch-") as logs:
        processes, outputs = [], []
        try:
            for node, (command, env) in enumerate(zip(commands, envs)):
                child_env = launch_env(extra_pythonpath)
                child_env.update(env or {})
                # Files, not pipes: nothing to drain while several launchers run.
                out = open(os.path.join(logs, f"node{node}.log"), "w+")
                outputs.append(out)
                processes.append(
                    subprocess.Popen(
                        list(command),
                        cwd=REPO_ROOT,
                        env=child_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        text=True,
                        start_new_session=True,
                    )
                )
            failure = _wait_all(processes, timeout_s)
        except BaseException:
            for process in processes:  # e.g. Ctrl-C: leave no orphaned workers
                _kill_session(process, signal.SIGKILL)
            raise
        finally:
            hygiene.unlink_shm_segments(port)  # whatever the workers could not remove (killed ones)
        texts = []
        for out in outputs:
            out.seek(0)
            texts.append(out.read())
            out.close()
    results = [
        subprocess.CompletedProcess(list(command), process.returncode, text, "")
        for command, process, text in zip(commands, processes, texts)
    ]
    if failure is not None:
        report = "\n".join(
            f"--- node {node} ({' '.join(result.args)}) exited with {result.returncode}\n{_tail(result.stdout, None)}"
            for node, result in enumerate(results)
            if result.returncode != 0
        )
        raise LaunchError(f"{failure}\n{report}")
    return results


def _wait_all(processes: Sequence[subprocess.Popen], timeout_s: float) -> str | None:
    """Wait until every process has exited (None) or one failed or the deadline passed (what happened; then every
    process still running is stopped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [process.poll() for process in processes]
        failed = [node for node, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            what = f"node {failed[0]} exited with {codes[failed[0]]}: the other nodes were stopped"
            break
        if all(code == 0 for code in codes):
            return None
        if time.monotonic() > deadline:
            what = f"timed out after {timeout_s} s; each Python process's stack when it was stopped is in the logs"
            break
        time.sleep(POLL_S)
    for process in processes:
        if process.poll() is None:
            _stop_quietly(process)
    return what


def _kill_session(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _stop_quietly(process: subprocess.Popen) -> None:
    """`_stop` for a process whose output goes to a file: SIGABRT (stacks into the log), then SIGKILL."""
    for sig in (signal.SIGABRT, signal.SIGKILL):
        _kill_session(process, sig)
        try:
            process.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


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
