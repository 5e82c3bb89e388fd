"""What a DeepSpeed job leaves behind on a machine - a stale JIT build lock, `/dev/shm` segments - is cleaned up,
and a job that hangs is stopped with its stacks in the error (llava.distributed.hygiene, llava.launch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import DIST_SCRIPTS, TESTS_DIR

from llava import launch
from llava.distributed import hygiene

# A real torch FileBaton, taken by a child process that then either dies holding it or keeps holding it.
TAKE_BATON = """
import os, signal, sys, time
from torch.utils.file_baton import FileBaton
assert FileBaton(sys.argv[1]).try_acquire()
print("held", flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(600)
"""


def _lock_path(root: Path, op: str = "deepspeed_shm_comm") -> Path:
    build_dir = root / "py311_cpu" / op
    build_dir.mkdir(parents=True)
    return build_dir / "lock"


def _take_baton(lock: Path, mode: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", TAKE_BATON, str(lock), mode], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    return child


def test_lock_of_a_killed_holder_is_removed(tmp_path):
    lock = _lock_path(tmp_path)
    child = _take_baton(lock, "die")
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert lock.exists()  # what torch leaves: every later load of the op would wait for ever

    assert hygiene.remove_stale_build_locks(tmp_path, recheck_after_s=0.1) == [lock]
    assert not lock.exists()


def test_lock_that_is_held_stays(tmp_path):
    lock = _lock_path(tmp_path)
    child = _take_baton(lock, "hold")
    try:
        assert hygiene.remove_stale_build_locks(tmp_path, recheck_after_s=0.1) == []
        assert lock.exists()
    finally:
        child.kill()
        child.wait(timeout=60)
    assert hygiene.remove_stale_build_locks(tmp_path, recheck_after_s=0.1) == [lock]


def test_no_locks_no_wait(tmp_path):
    _lock_path(tmp_path)  # a build directory without a lock
    started = time.monotonic()
    assert hygiene.remove_stale_build_locks(tmp_path, recheck_after_s=5) == []
    assert time.monotonic() - started < 1


def test_torch_extensions_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert hygiene.torch_extensions_root() == tmp_path


def test_unlink_shm_segments_by_job_and_rank():
    uid, port, other_port = os.getuid(), 1, 2  # ports no real job can have
    names = [f"{hygiene.SHM_PREFIX}_{uid}_127.0.0.1_{p}_{rank}" for p in (port, other_port) for rank in (0, 1, 11)]
    paths = [hygiene.SHM_DIR / name for name in names]
    try:
        for path in paths:
            path.write_bytes(b"x")
        assert hygiene.unlink_shm_segments(port, "127.0.0.1", rank=1) == 1
        assert [path.exists() for path in paths] == [True, False, True, True, True, True]
        assert hygiene.shm_segments(port) == [paths[0], paths[2]]
        assert hygiene.unlink_shm_segments(port) == 2
        assert hygiene.shm_segments(other_port) == paths[3:]
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.dist
def test_a_hung_job_is_stopped_with_stacks_and_leaves_no_segments():
    # llava.launch directly: the tests' wrapper would stop launching after a timeout, by design.
    with pytest.raises(launch.LaunchError) as error:
        launch.launch_deepspeed(DIST_SCRIPTS / "hang_with_segment.py", timeout_s=45, extra_pythonpath=[TESTS_DIR])
    message = str(error.value)
    port = message.split("--master_port ", 1)[1].split()[0]
    assert "timed out after 45 s" in message
    assert "rank 0 waiting" in message and "rank 1 waiting" in message
    # faulthandler's dump from each worker names the function it was waiting in (the two workers share stderr,
    # so their lines interleave; each name is one write)
    assert "Fatal Python error: Aborted" in message
    assert message.count("wait_forever") == 2, message
    assert hygiene.shm_segments(port) == []


@pytest.mark.dist
@pytest.mark.parametrize("fails", [True, False], ids=["one-node-fails", "one-node-hangs"])
def test_launch_nodes_stops_the_other_nodes(fails):
    """One launcher per node (llava.launch.launch_nodes): when one exits non-zero the one still waiting for its peer
    is stopped at once, not at the timeout; a node that outlives the timeout is stopped with its stack; each
    node's log is in the error."""
    quit_or_hang = "import sys; print('node 0 gives up', flush=True); sys.exit(3)" if fails else _HANG
    commands = [[sys.executable, "-c", quit_or_hang], [sys.executable, "-c", _HANG]]
    started = time.monotonic()
    with pytest.raises(launch.LaunchError) as error:
        launch.launch_nodes(commands, port=launch.free_port(), timeout_s=60 if fails else 3)
    message = str(error.value)
    assert time.monotonic() - started < 30
    if fails:
        assert message.startswith("node 0 exited with 3: the other nodes were stopped")
        assert "node 0 gives up" in message and "--- node 1 " in message
    else:
        assert message.startswith("timed out after 3 s")
    assert "waiting for a peer" in message and "Fatal Python error: Aborted" in message


_HANG = "import time; print('waiting for a peer', flush=True); time.sleep(600)"


def test_orphaned_segments_go_mapped_and_young_ones_stay(tmp_path):
    uid = os.getuid()
    orphan, young, mapped = (hygiene.SHM_DIR / f"{hygiene.SHM_PREFIX}_{uid}_127.0.0.1_{port}_0" for port in (3, 4, 5))
    old = time.time() - 3600
    holder = None
    try:
        for path in (orphan, young, mapped):
            path.write_bytes(b"\0" * 4096)
        os.utime(orphan, (old, old))
        os.utime(mapped, (old, old))
        # another process maps `mapped`, as a live DeepSpeed rank does
        holder = subprocess.Popen(
            [sys.executable, "-c", "import mmap,sys,time; f=open(sys.argv[1],'r+b'); m=mmap.mmap(f.fileno(),4096); "
             "f.close(); print('mapped', flush=True); time.sleep(600)", str(mapped)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdout.readline() == "mapped\n"

        assert orphan in hygiene.remove_orphaned_shm_segments()
        assert not orphan.exists() and young.exists() and mapped.exists()
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(timeout=60)
        for path in (orphan, young, mapped):
            path.unlink(missing_ok=True)


# An entry point's end: exit handlers run, buffered output is flushed, the code is kept, and after `os._exit` no
# Python code runs any more (the `__del__` of a module global would run at a normal interpreter exit).
EXIT_PROCESS = """
import atexit, logging, sys
from pathlib import Path
from llava.distributed.state import exit_process

class Finaliser:
    def __del__(self):
        Path(sys.argv[1], "finalised").write_text("yes")

keep = Finaliser()
atexit.register(lambda: Path(sys.argv[1], "atexit").write_text("ran"))
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
logging.getLogger("entry").info("logged before exit")
sys.stdout.write("buffered, no newline")
exit_process(int(sys.argv[2]))
"""


@pytest.mark.parametrize("code", [0, 3])
def test_exit_process_runs_exit_handlers_flushes_and_skips_teardown(tmp_path, code):
    result = subprocess.run(
        [sys.executable, "-c", EXIT_PROCESS, str(tmp_path), str(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == code
    assert result.stdout == "buffered, no newline"
    assert "INFO:entry:logged before exit" in result.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "finalised").exists()
