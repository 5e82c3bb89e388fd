"""Checks on LLaVA training data, shared by the data checker (`python -m llava.data.check`), the training run
(before the model loads) and the dataset: one implementation of every rule, one wording of every message.

Upstream finds bad samples late, deep inside the model (an IndexError in the splice, upstream #677, #732) or not at
all (a sample whose labels end up fully masked). Here each problem names the sample id, its record number, the data
file and what to do.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import Conversation
from llava.data.preprocess import ROLES, STRUCTURE, ConversationError, validate_conversation
from llava.data.store import RecordStore, take

# How many problems an exception message lists before summarising the rest.
MAX_LISTED_PROBLEMS = 10
# Threads for image-file checks: they wait on the file system, not the CPU. Sized for network file systems (NFS,
# Lustre), where one stat waits a round trip to the server; on a local disk the extra threads only idle.
IO_WORKERS = 32
# Image checks per task given to a thread: one future per file costs more than the stat itself on a local disk
# (66.5k files on 2 cores: 3.2 s with a future each, 0.8 s in chunks).
IO_CHUNK = 256

IMAGE_FIELD = "image_field"
IMAGE_TOKENS = "image_tokens"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
FULLY_MASKED = "fully_masked"
TRUNCATED = "truncated"
DUPLICATE_ID = "duplicate_id"
KIND_FIXES = {
    STRUCTURE: "each record needs 'conversations': a list of {'from': 'human'|'gpt', 'value': text}",
    ROLES: "turns must alternate human, gpt, human, ... (a first gpt turn is dropped)",
    IMAGE_FIELD: "'image' must be one path relative to --image_folder, and the run needs --vision_tower",
    IMAGE_TOKENS: f"a sample with an image needs exactly one turn with '{DEFAULT_IMAGE_TOKEN}', one without none",
    MISSING_IMAGE: "check --image_folder and the samples' 'image' fields",
    UNREADABLE_IMAGE: "replace the file or drop the sample",
    FULLY_MASKED: "the sample has no assistant reply to learn from; fill in the replies or drop it",
    TRUNCATED: "every reply lies beyond --model_max_length; raise it or shorten the sample",
    DUPLICATE_ID: "give every sample its own id (only a warning)",
}
WARNING_KINDS = frozenset({DUPLICATE_ID})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one sample."""

    index: int
    sample_id: str
    kind: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.kind not in WARNING_KINDS

    def format(self) -> str:
        return f"sample {self.sample_id!r} (record {self.index}): {self.message}"


@dataclass
class Report:
    """What a check found in one data file."""

    data_path: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.is_error]

    @property
    def warnings(self) -> list[Problem]:
        return [problem for problem in self.problems if not problem.is_error]

    def counts(self) -> dict[str, int]:
        return dict(Counter(problem.kind for problem in self.problems))

    def error_message(self, limit: int = MAX_LISTED_PROBLEMS) -> str:
        errors = sorted(self.errors, key=lambda problem: problem.index)
        samples = len({problem.index for problem in errors})
        listed = "\n  ".join(problem.format() for problem in errors[:limit])
        more = len(errors) - limit
        fixes = "\n  ".join(f"{kind}: {KIND_FIXES[kind]}" for kind in sorted({p.kind for p in errors}))
        return (
            f"{self.data_path}: {samples} invalid sample(s); fix or remove them:\n  {listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + f"\nWhat to do:\n  {fixes}"
            + f"\nFor the full list: python -m llava.data.check --data_path {self.data_path} ..."
            + "\nOr train on the valid samples only: --skip_invalid_samples True (each one dropped is logged)."
        )

    def raise_if_problems(self) -> None:
        if self.errors:
            raise DataValidationError(self.error_message())

    def enforce(self, logger: logging.Logger) -> None:
        """What training does with a report: log every warning, stop on any error."""
        self._log_warnings(logger)
        self.raise_if_problems()

    def drop_invalid(self, records: Sequence, logger: logging.Logger) -> list:
        """What training does with a report under ``--skip_invalid_samples``: log every warning, drop every sample
        with an error (logging its id and reason, and the count), and return the others. Stops when nothing is
        left to train on."""
        self._log_warnings(logger)
        invalid = {problem.index for problem in self.errors}
        if not invalid:
            return records if isinstance(records, RecordStore) else list(records)
        if len(invalid) == len(records):
            raise DataValidationError(
                f"every sample in {self.data_path} is invalid, so --skip_invalid_samples would leave nothing to "
                f"train on:\n{self.error_message()}"
            )
        for problem in sorted(self.errors, key=lambda problem: problem.index):
            logger.warning("%s: skipping %s", self.data_path, problem.format())
        logger.warning(
            "--skip_invalid_samples: dropped %d of %d samples of %s; training on the other %d",
            len(invalid), len(records), self.data_path, len(records) - len(invalid),
        )  # fmt: skip
        return take(records, [index for index in range(len(records)) if index not in invalid])

    def _log_warnings(self, logger: logging.Logger) -> None:
        for problem in self.warnings:
            logger.warning("%s: %s", self.data_path, problem.format())


class DataValidationError(ValueError):
    """The training data has samples that cannot be trained on as they are."""


def sample_id(record, index: int) -> str:
    if isinstance(record, dict) and "id" in record:
        return str(record["id"])
    return f"#{index}"


def check_record(record, index: int, *, conv: Conversation, is_multimodal: bool) -> list[Problem]:
    """Structure, roles, a reply to learn from and the image placeholders of one record (cheap: no files, no
    tokenizer)."""
    ident = sample_id(record, index)

    def problem(kind: str, message: str) -> list[Problem]:
        return [Problem(index, ident, kind, message)]

    if not isinstance(record, dict):
        return problem(STRUCTURE, f"the record is a {type(record).__name__}, not an object")
    turns = record.get("conversations")
    try:
        rendered = validate_conversation(turns, conv)
    except ConversationError as error:
        return problem(error.kind, str(error))
    image_problem = _image_problem(record, turns, is_multimodal)
    if image_problem is not None:
        return problem(*image_problem)
    if not any(not turn.from_human and turn.value for turn in rendered):
        # Upstream trains such a sample with every label masked (upstream #661): it costs a step and teaches nothing.
        return problem(FULLY_MASKED, "no assistant turn after the first human turn has any text")
    return []


def _image_problem(record: dict, turns: list[dict], is_multimodal: bool) -> tuple[str, str] | None:
    """(kind, message) when the sample's image field and ``<image>`` placeholders do not fit each other or the run."""
    placeholders = sum(DEFAULT_IMAGE_TOKEN in turn["value"] for turn in turns)
    if "image" not in record:
        if placeholders and is_multimodal:
            return IMAGE_TOKENS, f"{placeholders} turn(s) contain '{DEFAULT_IMAGE_TOKEN}' but the sample has no 'image'"
        return None
    if not isinstance(record["image"], str):
        return IMAGE_FIELD, f"'image' must be one file path (a string); got {type(record['image']).__name__}"
    if not is_multimodal:
        return IMAGE_FIELD, "the sample has an image but the run is text-only; set --vision_tower or drop it"
    # The model splices one image per placeholder: another count crashes deep inside it upstream (#677, #732).
    if placeholders != 1:
        return (
            IMAGE_TOKENS,
            f"{placeholders} turns contain '{DEFAULT_IMAGE_TOKEN}'; a sample with an image needs exactly one "
            "(usually at the start of the first human turn)",
        )
    return None


def check_records(records: Sequence, *, conv: Conversation, is_multimodal: bool) -> list[Problem]:
    """`check_record` for every record, plus duplicate ids (a warning)."""
    problems = []
    ids = []
    for index, record in enumerate(records):
        problems.extend(check_record(record, index, conv=conv, is_multimodal=is_multimodal))
        ids.append(_record_id(record))
    return problems + duplicate_ids(ids)


def _record_id(record) -> str | None:
    return str(record["id"]) if isinstance(record, dict) and "id" in record else None


def duplicate_ids(ids: Sequence[str | None]) -> list[Problem]:
    """A warning for every record (by index) whose id an earlier record already has; None: a record without id."""
    problems = []
    seen: dict[str, int] = {}
    for index, ident in enumerate(ids):
        if ident is None:
            continue
        if ident in seen:
            problems.append(Problem(index, ident, DUPLICATE_ID, f"the id is used by record {seen[ident]} too"))
        else:
            seen[ident] = index
    return problems


def image_path(record: dict, image_folder: str | os.PathLike | None) -> str:
    return os.path.join(image_folder or "", record["image"])


def check_image_files(
    records: Sequence,
    image_folder: str | os.PathLike | None,
    *,
    indices: Iterable[int] | None = None,
    decode: bool = False,
    workers: int | None = None,
    progress: Iterable | None = None,
) -> list[Problem]:
    """Every referenced image exists (and, with ``decode``, opens and verifies as an image), for the records at
    ``indices`` (default: all). Threads, each taking `IO_CHUNK` records at a time: the work waits on I/O.

    ``progress`` may wrap the work items (e.g. ``tqdm``); it receives an iterator and must yield its items.
    ``workers``: threads (default `IO_WORKERS`).
    """
    items = []
    for index in range(len(records)) if indices is None else indices:
        items.extend(_image_item(records[index], index, image_folder))
    return _check_image_items(items, decode=decode, workers=workers, progress=progress)


def _image_item(record, index: int, image_folder: str | os.PathLike | None) -> list[tuple[int, str, str]]:
    """[(index, path, id)] for a record with an image, else []: what an image check needs, not the record itself
    (at 665k samples a list of every record is gigabytes)."""
    if isinstance(record, dict) and isinstance(record.get("image"), str):
        return [(index, image_path(record, image_folder), sample_id(record, index))]
    return []


def _check_image_items(
    items: list[tuple[int, str, str]], *, decode: bool, workers: int | None, progress: Iterable | None
) -> list[Problem]:
    def check(item) -> Problem | None:
        index, path, ident = item
        if not os.path.isfile(path):
            return Problem(index, ident, MISSING_IMAGE, f"image {path!r} not found")
        if decode:
            from PIL import Image

            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as error:  # PIL raises many types for broken files
                return Problem(index, ident, UNREADABLE_IMAGE, f"image {path!r} cannot be read ({error})")
        return None

    chunks = [items[start : start + IO_CHUNK] for start in range(0, len(items), IO_CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, IO_WORKERS if workers is None else workers)) as pool:
        checked = pool.map(lambda chunk: [check(item) for item in chunk], chunks)
        results = (result for chunk in checked for result in chunk)
        if progress is not None:
            results = progress(results)
        return [problem for problem in results if problem is not None]


@dataclass
class Shard:
    """What one process found in its share of the records (see `check_shard`): problems by record index, and the
    ids of its records in order (for the duplicate check over all shards)."""

    start: int
    problems: list[Problem]
    ids: list[str | None]


def shard_range(count: int, rank: int, world: int) -> range:
    """The contiguous share of ``count`` records that process ``rank`` of ``world`` checks (sizes differ by <= 1)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return range(count * rank // world, count * (rank + 1) // world)


def check_shard(
    records: Sequence,
    *,
    rank: int,
    world: int,
    image_folder: str | os.PathLike | None,
    conv: Conversation,
    is_multimodal: bool,
    decode: bool = False,
    progress: Iterable | None = None,
) -> Shard:
    """The pre-training checks (structure, roles, image placeholders, image files exist) of process ``rank``'s share
    of the records; `merge_shards` of every process's `Shard` is the whole file's `Report`."""
    share = shard_range(len(records), rank, world)
    problems, ids, images = [], [], []
    for index in share:
        record = records[index]  # decoded once (from a store) for all the checks
        problems.extend(check_record(record, index, conv=conv, is_multimodal=is_multimodal))
        ids.append(_record_id(record))
        if is_multimodal:
            images.extend(_image_item(record, index, image_folder))
    problems.extend(_check_image_items(images, decode=decode, workers=None, progress=progress))
    return Shard(share.start, problems, ids)


def merge_shards(data_path: str | os.PathLike, shards: Sequence[Shard]) -> Report:
    """One `Report` from the shards of every process (any order): their problems and the duplicate ids across all
    of them, sorted by record index (per record: its own check, its id, its image)."""
    shards = sorted(shards, key=lambda shard: shard.start)
    problems = [problem for shard in shards for problem in shard.problems]
    problems += duplicate_ids([ident for shard in shards for ident in shard.ids])
    order = {DUPLICATE_ID: 1, MISSING_IMAGE: 2, UNREADABLE_IMAGE: 2}
    problems.sort(key=lambda problem: (problem.index, order.get(problem.kind, 0)))
    return Report(str(data_path), problems)


def validate_for_training(
    records: Sequence,
    *,
    data_path: str | os.PathLike,
    image_folder: str | os.PathLike | None,
    conv: Conversation,
    is_multimodal: bool,
    decode: bool = False,
    progress: Iterable | None = None,
    rank: int = 0,
    world: int = 1,
    gather=None,
) -> Report:
    """Structure, roles, image placeholders and that every image file exists: the checks a training run makes
    before loading the model (cheap: no decoding, no tokenizer). The data checker adds ``decode`` (every image
    opens) and a ``progress`` bar over the image checks (see `check_image_files`).

    In a job of ``world`` processes each checks its share (`check_shard`) and ``gather`` (every process's object
    from its own, e.g. over ``torch.distributed.all_gather_object``) brings the shards together, so that every
    process holds the same whole `Report`."""
    if world > 1 and gather is None:
        raise ValueError(f"checking share {rank} of {world} needs gather= to bring every process's findings together")
    shard = check_shard(
        records, rank=rank, world=world, image_folder=image_folder, conv=conv, is_multimodal=is_multimodal,
        decode=decode, progress=progress,
    )  # fmt: skip
    return merge_shards(data_path, [shard] if gather is None else gather(shard))
