"""Two things a DeepSpeed job can leave behind on a machine, and how we clean them up.

1. **A stale build lock.** DeepSpeed JIT-builds its C++ ops (on CPU: `deepspeed_shm_comm`, `cpu_adam`) through
   `torch.utils.cpp_extension.load`, which every process - also when nothing needs rebuilding - enters by creating
   `<torch extensions dir>/<op>/lock` and leaves by deleting it. A process killed in between (OOM killer, SIGKILL,
   a timeout) leaves the file behind, and every later job waits for it forever, silently. The holder keeps the
   lock file open while it holds it, so a lock file that no process has open is stale: `remove_stale_build_locks`
   removes those (and logs each).
2. **Shared-memory segments.** On CPU, DeepSpeed's communication op creates one `/dev/shm` segment per rank
   (about 69 MB each, named after uid, `MASTER_ADDR`, `MASTER_PORT` and rank) and never unlinks it, so every job
   leaks them until the machine reboots (tmpfs is RAM). `unlink_shm_segments` removes a job's segments: the
   workers call it once every rank has mapped them (the mappings stay valid), the launcher after the job ends.
   `remove_orphaned_shm_segments` clears what earlier jobs (or other tools) left: segments no process maps.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "deepspeed_allreduce_buffer"
"""DeepSpeed's name for its shared-memory all-reduce segments: `<prefix>_<uid>_<addr>_<port>_<rank>`."""

LOCK_NAME = "lock"


def torch_extensions_root() -> Path:
    """Where torch keeps JIT-built extensions (`TORCH_EXTENSIONS_DIR`, else `~/.cache/torch_extensions`)."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return Path(configured)
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def _open_files() -> set[Path]:
    """Every file some process we can see has open (read from /proc; empty where /proc is unavailable)."""
    opened: set[Path] = set()
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        try:
            names = os.listdir(fd_dir)
        except OSError:  # the process ended, or is not ours to inspect
            continue
        for name in names:
            try:
                opened.add(Path(os.readlink(os.path.join(fd_dir, name))))
            except OSError:
                continue
    return opened


def _mapped_files() -> set[Path]:
    """Every file some process we can see has mapped into memory (from /proc/<pid>/maps)."""
    mapped: set[Path] = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            lines = Path(maps).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                mapped.add(Path(fields[5].removesuffix(" (deleted)")))
    return mapped


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def remove_stale_build_locks(root: Path | None = None, recheck_after_s: float = 0.5) -> list[Path]:
    """Delete JIT build locks under `root` that no live process holds; returns the removed paths.

    A lock counts as stale only if it is unheld in two looks `recheck_after_s` apart and is the same file both
    times, so a holder that is just releasing (close, then delete) or a new holder is never disturbed.
    """
    root = torch_extensions_root() if root is None else root
    if not Path("/proc/self/fd").is_dir():
        return []  # cannot tell who holds a lock: leave them all alone
    candidates = {path: _identity(path) for path in root.glob(f"*/*/{LOCK_NAME}")}
    candidates = {path: ident for path, ident in candidates.items() if ident is not None}
    if not candidates:
        return []
    unheld = set(candidates) - {path.resolve() for path in _open_files()}
    if not unheld:
        return []
    time.sleep(recheck_after_s)
    held_now = {path.resolve() for path in _open_files()}
    removed = []
    for path in sorted(unheld):
        if path.resolve() in held_now or _identity(path) != candidates[path]:
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another rank removed it first
            continue
        logger.warning(
            "Removed a stale build lock %s: the process that held it died while building or loading the op, and "
            "every later DeepSpeed job would have waited for it forever.",
            path,
        )
        removed.append(path)
    return removed


def shm_segments(port: int | str | None = None, addr: str | None = None) -> list[Path]:
    """DeepSpeed all-reduce segments of this user, of one job (`port`, `addr`) or of all jobs."""
    port_part = "*" if port is None else str(port)
    addr_part = "*" if addr is None else addr
    return sorted(SHM_DIR.glob(f"{SHM_PREFIX}_{os.getuid()}_{addr_part}_{port_part}_*"))


def unlink_shm_segments(port: int | str, addr: str | None = None, rank: int | None = None) -> int:
    """Remove the job's segments (one rank's, or all ranks'); returns how many were removed."""
    paths = shm_segments(port, addr)
    if rank is not None:
        paths = [path for path in paths if path.name.endswith(f"_{rank}")]
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
    return removed


def remove_orphaned_shm_segments(min_age_s: float = 60.0) -> list[Path]:
    """Delete this user's DeepSpeed segments that no process maps and that are older than `min_age_s`.

    The age keeps a job that is starting alone: between creating its segment and mapping it a rank holds it
    unmapped for a moment, and its peers wait for the name to exist.
    """
    if not Path("/proc/self/maps").is_file():
        return []
    segments = shm_segments()
    if not segments:
        return []
    mapped = _mapped_files()
    removed = []
    for path in segments:
        try:
            old_enough = time.time() - path.stat().st_mtime >= min_age_s
        except FileNotFoundError:
            continue
        if old_enough and path not in mapped:
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("Removed %d DeepSpeed shared-memory segments that no process uses", len(removed))
    return removed
