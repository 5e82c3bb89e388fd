"""The training records in one read-only store that dataloader workers and the ranks of a node share without copying.

Why not a list of dicts: LLaVA-1.5's 665k-sample file is about 2 GB of Python objects. Every read of a record from a
forked dataloader worker writes its reference counts, so the kernel copies each touched page into the worker: over
an epoch every worker heads towards its own full copy (PyTorch issue #13246), and every rank of a node holds one more.

What it is instead: each record's JSON text, one after the other in a single uint8 buffer, an int64 array of where
each starts, and the small per-record arrays the trainer needs up front (upstream's ``lengths`` and
``modality_lengths``), written once to files and opened with ``np.memmap(mode="r")``. No per-record Python object
survives the build, so a forked worker touches no reference counts: the pages it reads stay the page cache's, shared
with the other workers and with every rank of the node that maps the same files. Indexing decodes one record into a
fresh dict. Subsets (samples dropped by ``--skip_invalid_samples``, the ``--eval_split_ratio`` hold-out) are int64
index arrays over the same buffers.

Why not Arrow or ``datasets``: both would be a new dependency, and a record here is a nested list of turns that a
columnar table stores as list<struct> columns only to be turned back into the same dicts per sample; the JSON bytes
are already the record's exact form, decode in microseconds and round-trip every field (also ones we do not know).

Where the files live: in a directory of its own under ``tempfile.gettempdir()`` (node-local storage), made for this
job only and removed once every process of the node has mapped it (on Linux, mapped pages stay valid after the
files are unlinked). Nothing is left behind, and no job can read a store built for another version of the data file
(a cache keyed by the file would have to be invalidated; a store made per job never is stale). A store also records
its source file's identity (path, size, modification time, inode), and opening it checks that identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llava.data.records import record_sources
from llava.distributed.state import gather_objects, get_node_rank

logger = logging.getLogger(__name__)

# Upstream's length heuristics for LengthGroupedSampler: words per conversation, plus this many for an image.
IMAGE_LENGTH_BONUS = 128
STORE_PREFIX = "llava-records-"
_BYTES, _OFFSETS, _LENGTHS, _MODALITY, _META = "records.bin", "offsets.npy", "lengths.npy", "modality.npy", "meta.json"


class StaleStoreError(RuntimeError):
    """A record store was opened for a data file that changed after the store was built."""


def record_lengths(record: Any) -> tuple[int, int]:
    """Upstream's (length, modality length) of one record: words over all turns, +128 with an image; the modality
    length is the word count, negative for text-only samples. Turns that are not {'value': text} count 0 words
    (such records fail the checks and are never trained on)."""
    if not isinstance(record, dict):
        return 0, 0
    turns = record.get("conversations")
    words = 0
    if isinstance(turns, list):
        words = sum(
            len(turn["value"].split())
            for turn in turns
            if isinstance(turn, dict) and isinstance(turn.get("value"), str)
        )
    has_image = "image" in record
    return words + (IMAGE_LENGTH_BONUS if has_image else 0), (words if has_image else -words)


def source_identity(data_path: str | os.PathLike) -> dict[str, Any]:
    """What tells one version of a data file from another: resolved path, size, modification time, inode."""
    path = Path(data_path).resolve()
    info = path.stat()
    return {"path": str(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino}


class RecordStore(Sequence):
    """Read-only sequence of records (dicts) over memory-mapped JSON bytes; see the module docstring.

    ``store[i]`` is a fresh dict (changing it changes nothing stored), ``len``, iteration and ``store[a:b]`` work as on
    a list; :meth:`subset` is a view of some records in a given order. ``lengths`` and ``modality_lengths`` are
    upstream's heuristics for the length-grouped sampler, computed once when the store was built.
    """

    def __init__(
        self,
        data: np.ndarray,
        offsets: np.ndarray,
        lengths: np.ndarray,
        modality_lengths: np.ndarray,
        indices: np.ndarray | None = None,
        source: dict | None = None,
    ) -> None:
        self._data, self._offsets = data, offsets
        self._lengths, self._modality = lengths, modality_lengths
        self._indices = indices
        self.source = source

    # -- building and opening ------------------------------------------------------------------------------------

    @classmethod
    def write(
        cls, records: Iterable[Any], directory: str | os.PathLike, source: dict | None = None, *, encoded: bool = False
    ) -> None:
        """Write ``records`` (JSON-serialisable objects; with ``encoded``, (record, its JSON text) pairs as
        `llava.data.records.record_sources` reads them) as a store into the new folder ``directory``."""
        directory = Path(directory)
        directory.mkdir()
        offsets, lengths, modality = array("q", [0]), array("q"), array("q")  # compact: 8 bytes per record
        with open(directory / _BYTES, "wb") as out:
            for item in records:
                if encoded:
                    record, text = item
                else:
                    record, text = item, json.dumps(item, ensure_ascii=False, separators=(",", ":"))
                blob = text.encode("utf-8")
                out.write(blob)
                offsets.append(offsets[-1] + len(blob))
                length, modality_length = record_lengths(record)
                lengths.append(length)
                modality.append(modality_length)
        np.save(directory / _OFFSETS, np.frombuffer(offsets, dtype=np.int64))
        np.save(directory / _LENGTHS, np.frombuffer(lengths, dtype=np.int64))
        np.save(directory / _MODALITY, np.frombuffer(modality, dtype=np.int64))
        (directory / _META).write_text(json.dumps({"count": len(lengths), "source": source}))

    @classmethod
    def open(cls, directory: str | os.PathLike, data_path: str | os.PathLike | None = None) -> RecordStore:
        """Map the store in ``directory``; with ``data_path``, refuse it unless it was built from that file as the
        file is now."""
        directory = Path(directory)
        meta = json.loads((directory / _META).read_text())
        if data_path is not None and meta["source"] != source_identity(data_path):
            raise StaleStoreError(
                f"the record store in {directory} was built from {meta['source']}, but {data_path} is now "
                f"{source_identity(data_path)}; the data file changed during start-up: restart the run"
            )
        offsets = np.load(directory / _OFFSETS, mmap_mode="r")
        # np.memmap cannot map an empty file (a data file without records).
        size = int(offsets[-1])
        data = np.memmap(directory / _BYTES, dtype=np.uint8, mode="r") if size else np.empty(0, dtype=np.uint8)
        return cls(
            data,
            offsets,
            np.load(directory / _LENGTHS, mmap_mode="r"),
            np.load(directory / _MODALITY, mmap_mode="r"),
            source=meta["source"],
        )

    @classmethod
    def from_records(cls, records: Iterable[Any]) -> RecordStore:
        """A store of ``records`` that lives only in this process's mappings (the files are removed at once)."""
        directory = Path(tempfile.mkdtemp(prefix=STORE_PREFIX))
        try:
            cls.write(records, directory / "store")
            return cls.open(directory / "store")
        finally:
            shutil.rmtree(directory)

    # -- the sequence -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._lengths) if self._indices is None else len(self._indices)

    def _position(self, index) -> int:
        """Position in the underlying buffers of record ``index`` of this view."""
        count = len(self)
        i = index.__index__()
        if i < 0:
            i += count
        if not 0 <= i < count:
            raise IndexError(f"record {index} out of range ({count} records)")
        return i if self._indices is None else int(self._indices[i])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        position = self._position(index)
        start, stop = int(self._offsets[position]), int(self._offsets[position + 1])
        return json.loads(self._data[start:stop].tobytes())

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, indices: Iterable[int]) -> RecordStore:
        """The records at ``indices`` of this view, in that order, sharing this store's buffers."""
        chosen = np.fromiter((self._position(i) for i in indices), dtype=np.int64)
        return RecordStore(self._data, self._offsets, self._lengths, self._modality, chosen, self.source)

    @property
    def lengths(self) -> list[int]:
        """Words per sample, +128 for samples with an image (upstream's heuristic for length grouping)."""
        return self._select(self._lengths).tolist()

    @property
    def modality_lengths(self) -> list[int]:
        """Words per sample, negative for text-only samples (upstream's LengthGroupedSampler convention)."""
        return self._select(self._modality).tolist()

    def _select(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values) if self._indices is None else np.asarray(values)[self._indices]

    def __repr__(self) -> str:
        source = (self.source or {}).get("path", "records")
        return f"RecordStore({len(self)} records of {source})"


def take(records: Sequence, indices: Iterable[int]) -> Sequence:
    """The records at ``indices``: a view for a :class:`RecordStore`, a new list for a list."""
    if isinstance(records, RecordStore):
        return records.subset(indices)
    return [records[i] for i in indices]


# ----------------------------------------------------------------------------------------------------------------
# One store per node


def load_store(data_path: str | os.PathLike, *, local_rank: int | None = None) -> RecordStore:
    """The records of ``data_path`` in a :class:`RecordStore`, read once per node.

    In a distributed job, local rank 0 of each node reads the file and writes the store into a directory named for
    this job (a token from rank 0), this node (host name and node rank: nodes that share a temp folder, such as
    several launchers on one machine or a shared ``/tmp``, each build their own) and this data file; the other ranks
    wait for it, then map it; once all have, local rank 0 removes the directory. A failure on the builder (a missing or malformed file) is raised on
    every rank with the builder's message, so no rank waits for a store that never comes. Without
    ``torch.distributed`` (or a world of 1), or without ``LOCAL_RANK`` from the launcher, each process builds and
    maps its own store.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _build_private(data_path)
    if local_rank is None and "LOCAL_RANK" in os.environ:
        local_rank = int(os.environ["LOCAL_RANK"])
    token = [secrets.token_hex(8) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(token, src=0)
    tag = hashlib.sha1(str(Path(data_path).resolve()).encode()).hexdigest()[:12]
    name = f"{STORE_PREFIX}{token[0]}-{socket.gethostname()}-node{get_node_rank()}-{tag}"
    if local_rank is None:  # no launcher said which processes share a node: each builds its own store
        name += f"-rank{dist.get_rank()}"
    directory = Path(tempfile.gettempdir()) / name
    builder = local_rank in (0, None)
    try:
        error = None
        if builder:
            try:
                _build(data_path, directory)
            except Exception as raised:  # re-raised below, after every rank has heard of it
                error = raised
        _raise_any(error, builder, "building the record store")
        store, error = None, None
        try:
            store = RecordStore.open(directory, data_path)
        except Exception as raised:
            error = raised
        _raise_any(error, True, "opening the record store")
    finally:
        if builder:
            shutil.rmtree(directory, ignore_errors=True)
    logger.info("%d records of %s in a shared store (built on local rank 0 of each node)", len(store), data_path)
    return store


def _build_private(data_path: str | os.PathLike) -> RecordStore:
    directory = Path(tempfile.mkdtemp(prefix=STORE_PREFIX))
    try:
        _build(data_path, directory / "store")
        return RecordStore.open(directory / "store", data_path)
    finally:
        shutil.rmtree(directory)


def _build(data_path: str | os.PathLike, directory: Path) -> None:
    # Identity taken before reading: a file changed while being read is caught when the store is opened.
    source = source_identity(data_path) if Path(data_path).is_file() else None
    # Each record's own text from the file: parsed once (for the lengths), never encoded again.
    RecordStore.write(record_sources(data_path), directory, source, encoded=True)


def _raise_any(error: Exception | None, mine: bool, what: str) -> None:
    """Every rank learns whether any rank failed (a collective, so it is also the barrier); the failing rank raises
    its own exception, the others one that names it."""
    errors = gather_objects(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None and mine:
        raise error
    failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
    if failed:
        rank, message = failed[0]
        raise RuntimeError(f"rank {rank} failed {what}: {message}")
