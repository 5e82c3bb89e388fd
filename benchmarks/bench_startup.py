"""Start-up and dataloader-worker memory at LLaVA-1.5's scale: today's list of dicts against the shared record store.

The data is generated: a JSON list shaped like `llava_v1_5_mix665k.json` (665k samples, about 94% with an image,
1 to 20 rounds, mostly short VQA-style answers with a tail of long ones; about 700 bytes per sample against the
real file's 760), image paths
to empty files (the pre-check only stats them), each file named by about 4 samples as COCO images are in the mix.
`--quick` uses a tenth (66.5k samples), `--tiny` 2,000; the rows' notes give per-sample figures.

Rows:
- start-up in one process: read the file, check every sample (structure + image existence), build the dataset.
  Today's path: the records as a list of dicts in the process, the image stats one thread-pool task per file on
  16 threads. Ours: the records into a store (`load_store`: each record's text as in the file), the check over the
  store, image stats in chunks on 32 threads, the dataset over the store. Both run the same checks.
- start-up per rank at 8 ranks per node: today every rank runs the whole path above; with the store, local rank 0
  builds it while the others wait, then each rank checks its eighth (`check_shard`, measured here for rank 0) and
  the shards are gathered (one `all_gather_object` of the problems and ids, not measured here: milliseconds).
- private memory of a forked dataloader worker after reading every record once, as `LazySupervisedDataset`
  reads a sample (its turns and their text): list of dicts against the store. Counted as Private_Dirty of the
  worker's anonymous mappings (copy-on-write copies land there; the store's file pages are the page cache's).

Each path runs in a forked child, so that its peak memory (ru_maxrss over the child's start) can be given in the
note and nothing it leaves in the heap falsifies the next measurement.
"""

from __future__ import annotations

import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from common import Row

SAMPLES = {"tiny": 2_000, "quick": 66_500, "full": 665_000}
IMAGE_SHARE = 0.94
SAMPLES_PER_IMAGE = 4
RANKS_PER_NODE = 8
PAGE_KIB = 4
WORDS = "the a man woman dog cat red blue bus street sign table sitting standing near behind holding what is".split()


def make_data(root: Path, size: str, seed: int = 0) -> tuple[Path, Path, int]:
    """(data file, image folder, number of image entries) of a 665k-shaped file scaled to ``size``."""
    rng = random.Random(seed)
    count = SAMPLES[size]
    images = root / "images"
    distinct = max(1, int(count * IMAGE_SHARE) // SAMPLES_PER_IMAGE)
    for folder in range(distinct // 1000 + 1):
        (images / f"{folder:04d}").mkdir(parents=True)
    for index in range(distinct):
        (images / f"{index // 1000:04d}" / f"{index:012d}.jpg").touch()

    def sentence(low: int, high: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))

    image_entries = 0
    with open(root / "mix665k.json", "w") as out:
        out.write("[")
        for index in range(count):
            has_image = rng.random() < IMAGE_SHARE
            rounds = rng.choices([1, rng.randint(2, 5), rng.randint(6, 10), rng.randint(11, 20)], [45, 35, 15, 5])[0]
            long_answers = rng.random() < 0.2  # detailed descriptions and conversations, not short VQA answers
            turns = []
            for round_index in range(rounds):
                question = sentence(4, 14)
                if round_index == 0 and has_image:
                    question = "<image>\n" + question
                turns.append({"from": "human", "value": question})
                turns.append({"from": "gpt", "value": sentence(10, 80) if long_answers else sentence(1, 6)})
            record = {"id": f"{index:09d}", "conversations": turns}
            if has_image:
                image = rng.randrange(distinct)
                record["image"] = f"{image // 1000:04d}/{image:012d}.jpg"
                image_entries += 1
            out.write(("," if index else "") + json.dumps(record))
        out.write("]")
    return root / "mix665k.json", images, image_entries


def _startup_today(data: Path, images: Path, conv, data_args) -> int:
    from llava.data import validation
    from llava.data.dataset import LazySupervisedDataset
    from llava.data.records import load_records
    from llava.data.validation import validate_for_training

    # Today's image checks: one thread-pool task per file on 16 threads (this runs in a forked child, so the
    # setting ends with it). The checks themselves are the same code.
    validation.IO_CHUNK, validation.IO_WORKERS = 1, 16
    records = load_records(data)
    report = validate_for_training(records, data_path=data, image_folder=images, conv=conv, is_multimodal=True)
    report.raise_if_problems()
    dataset = LazySupervisedDataset(str(data), None, data_args, records=records, checked=True, conv=conv)
    return len(dataset.modality_lengths)


def _startup_store(data: Path, images: Path, conv, data_args, rank: int = 0, world: int = 1) -> int:
    from llava.data.dataset import LazySupervisedDataset
    from llava.data.store import load_store
    from llava.data.validation import check_shard

    store = load_store(data)
    shard = check_shard(store, rank=rank, world=world, image_folder=images, conv=conv, is_multimodal=True)
    if shard.problems:
        raise RuntimeError(f"the generated data should be valid: {shard.problems[:3]}")
    dataset = LazySupervisedDataset(str(data), None, data_args, records=store, checked=True, conv=conv)
    return len(dataset.modality_lengths)


def _worker_pass(records) -> int:
    """What __getitem__ reads of every record: its turns and their text (no tokenizer, no images)."""
    characters = 0
    for index in range(len(records)):
        characters += sum(len(turn["value"]) for turn in records[index]["conversations"])
    return characters


def _private_anonymous_kib() -> int:
    total, anonymous = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                fields = line.split()
                anonymous = len(fields) < 6 or not fields[5].startswith("/")
            elif anonymous and first == "Private_Dirty:":
                total += int(line.split()[1])
    return total


def _in_child(fn) -> dict:
    """Run ``fn`` in a forked child: its result, wall seconds and the peak RSS it added (MiB)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            start_rss = _rss_kib()
            started = time.perf_counter()
            value = fn()
            elapsed = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            payload = {"value": value, "seconds": elapsed, "peak_mib": max(0, peak - start_rss) / 1024}
            os.write(write_end, json.dumps(payload).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    if not text:
        raise RuntimeError("a benchmark child process died without a result")
    return json.loads(text)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _memory_of_a_pass(records) -> dict:
    def measure():
        before = _private_anonymous_kib()
        _worker_pass(records)
        return max(_private_anonymous_kib() - before, PAGE_KIB)  # a page is the resolution (the ratio needs > 0)

    return _in_child(measure)


def run(size: str, tiny=None) -> list[Row]:
    # Imported here, not in the timed children: start-up is about the data, the imports are the same for both.
    import llava.data.dataset  # noqa: F401
    from llava.conversation import get_conv_template
    from llava.data.records import load_records
    from llava.data.store import RecordStore

    conv = get_conv_template("vicuna_v1")
    data_args = SimpleNamespace(is_multimodal=False, image_aspect_ratio="pad", image_grid_pinpoints=None)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        data, images, image_entries = make_data(Path(tmp), size)
        generated = time.perf_counter() - started
        count = SAMPLES[size]
        megabytes = data.stat().st_size / 2**20
        # Alternately, best of two (one at full size): the page cache is warm for both after the first read.
        repeat = 1 if size == "full" else 2
        today, ours, ours_rank = [], [], []
        for _ in range(repeat):
            today.append(_in_child(lambda: _startup_today(data, images, conv, data_args)))
            ours.append(_in_child(lambda: _startup_store(data, images, conv, data_args)))
            ours_rank.append(_in_child(lambda: _startup_store(data, images, conv, data_args, 0, RANKS_PER_NODE)))
        today_s, ours_s, rank_s = (min(run["seconds"] for run in runs) for runs in (today, ours, ours_rank))
        assert today[0]["value"] == ours[0]["value"] == count

        records = load_records(data)
        as_list = _memory_of_a_pass(records)
        store = RecordStore.from_records(records)
        del records
        as_store = _memory_of_a_pass(store)
    shape = f"{count} samples, {image_entries} images, {megabytes:.0f} MB JSON"
    per_k = 1000 / count
    rows = [
        Row(
            f"startup: read + pre-check + dataset, 1 process, store vs list ({shape})",
            ours_s, today_s, "s", "<= 1.0x",
            note=f"{1e6 * ours_s / count:.0f} vs {1e6 * today_s / count:.0f} us/sample; peak +"
            f"{ours[0]['peak_mib']:.0f} vs +{today[0]['peak_mib']:.0f} MiB; generated in {generated:.0f} s",
        ),
        Row(
            f"startup per rank, {RANKS_PER_NODE} ranks/node: store + 1/{RANKS_PER_NODE} of the pre-check vs all of it",
            rank_s, today_s, "s", "<= 0.5x",
            note=f"{image_entries // RANKS_PER_NODE} instead of {image_entries} image stats per rank; "
            f"{1e6 * rank_s / count:.0f} vs {1e6 * today_s / count:.0f} us/sample; gather not included",
        ),
        Row(
            "startup: dataloader worker private memory after a full pass, store vs list of dicts",
            as_store["value"] / 1024, as_list["value"] / 1024, "MiB", "<= 0.1x",
            note=f"{as_store['value'] * per_k:.1f} vs {as_list['value'] * per_k:.0f} KiB per 1000 samples read",
        ),
    ]  # fmt: skip
    return rows


if __name__ == "__main__":
    import sys

    from common import format_table

    print(format_table(run(sys.argv[1] if len(sys.argv) > 1 else "tiny")))
