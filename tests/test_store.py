"""The shared record store (llava.data.store) and the pre-check split across ranks (llava.data.validation)."""

from __future__ import annotations

import json
import os
import random
import tempfile

import pytest

from llava.conversation import get_conv_template
from llava.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset
from llava.data.records import load_records, record_sources
from llava.data.store import RecordStore, StaleStoreError, load_store, take
from llava.data.validation import (
    DUPLICATE_ID,
    MISSING_IMAGE,
    check_image_files,
    check_records,
    check_shard,
    merge_shards,
    validate_for_training,
)
from llava.train.arguments import DataArguments

CONV = get_conv_template("vicuna_v1")


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile.gettempdir() inside this test's folder, so that what the store leaves behind can be counted."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _jsonl(records, path) -> str:
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return str(path)


@pytest.mark.parametrize("form", ["json", "jsonl"])
def test_store_round_trips_every_record(tiny, tmp_path, private_tmp, form):
    records = load_records(tiny.data)
    data = str(tiny.data) if form == "json" else _jsonl(records, tmp_path / "data.jsonl")
    store = load_store(data)
    assert len(store) == len(records) == 48
    assert list(store) == records  # every field of every record, in order, exactly
    assert [store[i] for i in range(len(store))] == records
    assert store[-1] == records[-1] and list(store[3:7:2]) == list(take(store, [3, 5])) == records[3:7:2]
    first = store[0]
    first["conversations"].clear()
    assert store[0] == records[0]  # a fresh dict per access: nothing stored changes
    with pytest.raises(IndexError, match="record 48 out of range"):
        store[48]
    assert list(private_tmp.iterdir()) == []  # mapped, and its files already gone


def test_store_round_trips_unicode_nested_and_odd_records():
    records = [
        {"id": "ü-1", "conversations": [{"from": "human", "value": 'Ça va? 日本 🙂\n\t"q"'}], "extra": {"k": [1, 2.5]}},
        {"id": 7, "image": "a/b.png", "conversations": [], "none": None, "flag": True},
        {},
    ]
    assert list(RecordStore.from_records(records)) == records
    assert len(RecordStore.from_records([])) == 0


@pytest.mark.parametrize(
    "text",
    [
        ' [ {"id": "a", "x": [1, 2.50, "\\u00e9"]} ,\n{"id":"b"} ]\n',
        "[]",
        '{"id": "a"}\n\n{"id": "b", "y": {"z": null}}\n',
        "",
    ],
    ids=["list", "empty-list", "jsonl", "empty"],
)
def test_record_sources_are_each_records_own_text(tmp_path, text):
    data = tmp_path / "data.json"
    data.write_text(text)
    pairs = list(record_sources(data))
    # The json module's own reading of the file: the whole list at once, or one line at a time.
    expected = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x]
    assert [record for record, _ in pairs] == load_records(data) == expected
    assert all(json.loads(source) == record for record, source in pairs)
    assert all(source in text for _, source in pairs)  # the file's own text, not a new encoding


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"id": "a"} {"id": "b"}]', "not valid JSON"),
        ('[{"id": "a"}, ]', "not valid JSON"),
        ('[{"id": "a"}] trailing', "not valid JSON"),
        ('[{"id": "a"}', "not valid JSON"),
        ('[{"id": "a"}, 3]', "every record must be an object"),
        ('{"id": "a"}\n{"id": ', "line 2: not valid JSON Lines"),
    ],
)
def test_record_sources_refuse_what_load_records_refuses(tmp_path, text, message):
    data = tmp_path / "data.json"
    data.write_text(text)
    if message == "not valid JSON":
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)  # the json module refuses it too
    with pytest.raises(ValueError, match=message):
        load_records(data)
    with pytest.raises(ValueError, match=message):
        list(record_sources(data))


def test_lengths_and_modality_lengths_equal_the_datasets(tiny, tokenizer_free_args, private_tmp):
    records = load_records(tiny.data)
    store = load_store(tiny.data)
    # Upstream's heuristics, written out: words over all turns, +128 with an image; negative without.
    words = [sum(len(turn["value"].split()) for turn in record["conversations"]) for record in records]
    expected = [w + 128 if "image" in record else w for w, record in zip(words, records)]
    expected_modality = [w if "image" in record else -w for w, record in zip(words, records)]
    assert store.lengths == expected and store.modality_lengths == expected_modality
    assert any(length < 0 for length in expected_modality) and any(length > 0 for length in expected_modality)
    from_list = LazySupervisedDataset(str(tiny.data), None, tokenizer_free_args, records=records, checked=True)
    from_store = LazySupervisedDataset(str(tiny.data), None, tokenizer_free_args, records=store, checked=True)
    assert from_store.lengths == from_list.lengths == expected
    assert from_store.modality_lengths == from_list.modality_lengths == expected_modality
    assert from_store.list_data_dict[5] == records[5]


@pytest.fixture
def tokenizer_free_args(tiny):
    return DataArguments(data_path=str(tiny.data), image_folder=str(tiny.image_folder), is_multimodal=False)


def test_the_dataset_gives_the_same_items_over_the_store_in_forked_workers(tiny, tiny_tokenizer, tiny_image_processor):
    import torch
    from torch.utils.data import DataLoader

    tiny_tokenizer.pad_token = tiny_tokenizer.unk_token
    args = DataArguments(
        data_path=str(tiny.data), image_folder=str(tiny.image_folder), is_multimodal=True, image_aspect_ratio="pad"
    )
    records = load_records(tiny.data)
    kwargs = dict(image_processor=tiny_image_processor, conv=CONV, checked=True)
    from_list = LazySupervisedDataset(str(tiny.data), tiny_tokenizer, args, records=records, **kwargs)
    from_store = LazySupervisedDataset(
        str(tiny.data), tiny_tokenizer, args, records=RecordStore.from_records(records), **kwargs
    )
    collator = DataCollatorForSupervisedDataset(tokenizer=tiny_tokenizer)
    batches = [
        list(DataLoader(dataset, batch_size=8, num_workers=workers, collate_fn=collator))
        for dataset, workers in ((from_list, 0), (from_store, 2))
    ]
    assert len(batches[0]) == len(batches[1]) == 6
    for expected, got in zip(*batches):
        assert set(expected) == set(got) == {"input_ids", "labels", "attention_mask", "images"}
        for key in expected:
            assert torch.equal(expected[key], got[key]), key


def test_subsets_are_views_in_the_given_order(tiny, private_tmp):
    records = load_records(tiny.data)
    store = load_store(tiny.data)
    picked = [40, 2, 7, 7, 0]
    subset = store.subset(picked)
    assert list(subset) == [records[i] for i in picked] and len(subset) == 5
    assert subset.lengths == [store.lengths[i] for i in picked]
    assert subset.modality_lengths == [store.modality_lengths[i] for i in picked]
    nested = subset.subset([4, 0, -1])  # indices of the view, not of the file
    assert list(nested) == [records[0], records[40], records[0]]
    assert nested._data is store._data  # the same mapped buffer, no copy
    with pytest.raises(IndexError):
        subset.subset([5])
    assert take(records, [1, 0]) == [records[1], records[0]]


def test_a_changed_data_file_is_never_served_from_a_stale_store(tmp_path, private_tmp):
    data = tmp_path / "data.json"
    first = [{"id": "a", "conversations": [{"from": "human", "value": "one"}, {"from": "gpt", "value": "two"}]}]
    data.write_text(json.dumps(first))
    assert list(load_store(data)) == first
    second = [{"id": "b", "conversations": [{"from": "human", "value": "uno"}, {"from": "gpt", "value": "dos"}]}]
    data.write_text(json.dumps(second))  # same size, other content
    assert data.stat().st_size == len(json.dumps(first))
    assert list(load_store(data)) == second
    # A store opened for the file it was built from, after that file changed, is refused.
    RecordStore.write(second, tmp_path / "store", source={"path": str(data.resolve()), "size": 1})
    with pytest.raises(StaleStoreError, match="the data file changed during start-up"):
        RecordStore.open(tmp_path / "store", data)
    assert list(RecordStore.open(tmp_path / "store")) == second
    assert list(private_tmp.iterdir()) == []


def _load_in_a_group(rank: int, world: int, port: int, data: str, folder: str, results, node_env) -> None:
    """One process of a gloo group of ``world``: ``load_store(data)``; reports its records or error. All on one node,
    or with ``node_env`` (a launcher's node-rank variable) each on a node of its own, all nodes sharing one temp
    folder (several launchers on one machine, or a shared /tmp)."""
    import torch.distributed as dist

    from llava.data import store as store_module

    for name in ("GROUP_RANK", "CROSS_RANK"):
        os.environ.pop(name, None)
    local_rank = rank if node_env is None else 0
    os.environ.update(LOCAL_RANK=str(local_rank), RANK=str(rank), WORLD_SIZE=str(world))
    if node_env:
        os.environ[node_env] = str(rank)
    tempfile.tempdir = folder
    builds = []
    build = store_module._build
    store_module._build = lambda *args: (builds.append(args), build(*args))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results.put((rank, "ok", list(load_store(data)), len(builds)))
    except Exception as error:
        results.put((rank, type(error).__name__, str(error), len(builds)))
    finally:
        dist.destroy_process_group()


def _run_group(data, folder, world: int = 2, node_env: str | None = None) -> dict:
    import multiprocessing

    from llava.distributed.state import free_port

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=_load_in_a_group, args=(rank, world, port, str(data), str(folder), results, node_env))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    outcome = {}
    try:
        for _ in range(world):
            rank, *rest = results.get(timeout=120)
            outcome[rank] = tuple(rest)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():  # a rank stuck in a collective: leave no process behind
                process.kill()
                process.join()
    return outcome


def test_one_process_per_node_builds_the_store_and_failures_reach_every_rank(tiny, tmp_path, private_tmp):
    outcome = _run_group(tiny.data, private_tmp)
    records = load_records(tiny.data)
    assert outcome == {0: ("ok", records, 1), 1: ("ok", records, 0)}  # built once, mapped by both
    assert list(private_tmp.iterdir()) == []
    outcome = _run_group(tmp_path / "nowhere.json", private_tmp)
    assert outcome[0][0] == "FileNotFoundError" and "check --data_path" in outcome[0][1]
    assert outcome[1][0] == "RuntimeError"
    assert outcome[1][1].startswith("rank 0 failed building the record store: FileNotFoundError: training data")
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("node_env", ["GROUP_RANK", "CROSS_RANK", ""], ids=["torchrun", "deepspeed", "neither"])
def test_each_node_builds_its_own_store_in_a_shared_temp_folder(tiny, private_tmp, node_env):
    """Two nodes of one process each, one temp folder (issue 19: both local ranks 0 built the same path, and the
    second failed with FileExistsError): each builds and maps its own store, named by its node rank (torchrun's
    GROUP_RANK, DeepSpeed's CROSS_RANK, else RANK - LOCAL_RANK), and both are removed."""
    outcome = _run_group(tiny.data, private_tmp, node_env=node_env)
    records = load_records(tiny.data)
    assert outcome == {0: ("ok", records, 1), 1: ("ok", records, 1)}
    assert list(private_tmp.iterdir()) == []


def test_load_store_names_a_missing_file(tmp_path, private_tmp):
    with pytest.raises(FileNotFoundError, match="check --data_path"):
        load_store(tmp_path / "nowhere.json")
    assert list(private_tmp.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# Forked workers


def _synthetic_records(count: int) -> list[dict]:
    rng = random.Random(0)
    words = "the a man dog red blue bus street sign table near behind".split()
    return [
        {
            "id": f"{index:06d}",
            "image": f"coco/{index:012d}.jpg",
            "conversations": [
                {
                    "from": "human" if turn % 2 == 0 else "gpt",
                    "value": " ".join(rng.choices(words, k=rng.randint(5, 40))),
                }
                for turn in range(2 * rng.randint(1, 5))
            ],
        }
        for index in range(count)
    ]


def private_anonymous_kib() -> int:
    """Private_Dirty of this process's anonymous mappings (heap, arenas): where copy-on-write copies land. File
    mappings are left out: the store's pages are the page cache's, shared by every process that maps the file, but
    count as dirty until written back (or always, on tmpfs) and as private until a second process maps the page."""
    total, anonymous = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header: range perms offset dev inode [path]
                fields = line.split()
                anonymous = len(fields) < 6 or not fields[5].startswith("/")
            elif anonymous and first == "Private_Dirty:":
                total += int(line.split()[1])
    return total


def private_growth_of_a_full_pass(records) -> int:
    """KiB of private memory a forked child (a dataloader worker) gains by reading every record once."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            os.close(read_end)
            before = private_anonymous_kib()
            words = 0
            for index in range(len(records)):  # what __getitem__ reads of a record
                words += sum(len(turn["value"]) for turn in records[index]["conversations"])
            os.write(write_end, str(private_anonymous_kib() - before).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        growth = int(pipe.read())
    os.waitpid(pid, 0)
    return growth


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_a_forked_worker_does_not_copy_the_stored_records():
    records = _synthetic_records(6000)
    store = RecordStore.from_records(records)
    as_list = private_growth_of_a_full_pass(records)
    as_store = private_growth_of_a_full_pass(store)
    # The list's dicts and strings are copied page by page as their refcounts change (about 15 MiB here); the
    # store's bytes are read-only file pages and each decoded record is freed at once (about 0.6 MiB of allocator
    # pages, whatever the count).
    assert as_list > 8 * 1024, (as_list, as_store)
    assert as_store < as_list / 10, (as_list, as_store)


# ----------------------------------------------------------------------------------------------------------------
# The pre-check split across ranks


def _turns(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


@pytest.fixture(scope="module")
def mixed_records(tiny):
    """The tiny data with broken samples and duplicate ids spread over every shard of worlds 2 and 3."""
    records = json.loads(tiny.data.read_text())
    broken = [
        {"id": "bad-roles", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "gone", "image": "missing/nowhere.png", "conversations": _turns("<image>\nq", "a")},
        {"id": "gone-twice", "image": "missing/x.png", "conversations": _turns("q", "a")},
        {"id": "no-reply", "conversations": _turns("Hi", "")},
        {"id": records[0]["id"], "conversations": _turns("Hi", "Hello")},
        {"id": "gone", "image": "missing/again.png", "conversations": _turns("<image>\nq", "a")},
        "not a record",
    ]
    mixed = list(records)
    for offset, record in enumerate(broken):
        mixed.insert(min(len(mixed), offset * 9 + 3), record)
    return mixed


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_split_pre_check_equals_the_whole_one(tiny, mixed_records, world):
    kwargs = dict(image_folder=tiny.image_folder, conv=CONV, is_multimodal=True)
    store = RecordStore.from_records(mixed_records)
    shards = [check_shard(store, rank=rank, world=world, **kwargs) for rank in range(world)]
    split = merge_shards("data.json", list(reversed(shards)))  # gathered in any order
    whole = check_records(mixed_records, conv=CONV, is_multimodal=True) + check_image_files(
        mixed_records, tiny.image_folder
    )
    whole.sort(key=lambda problem: problem.index)  # stable: per sample, its check, its id, its image
    assert split.problems == whole
    assert {problem.kind for problem in whole} >= {"roles", MISSING_IMAGE, DUPLICATE_ID, "fully_masked", "structure"}
    assert sum(len(shard.ids) for shard in shards) == len(mixed_records)
    single = validate_for_training(mixed_records, data_path="data.json", **kwargs)
    assert single.problems == split.problems and single.error_message() == split.error_message()
    gathered = validate_for_training(
        store, data_path="data.json", rank=world - 1, world=world, gather=lambda mine: shards[:-1] + [mine], **kwargs
    )
    assert gathered.problems == whole


def test_a_share_of_the_pre_check_without_gather_is_refused(tiny, mixed_records):
    """A process checking only its share would otherwise enforce a partial report."""
    with pytest.raises(ValueError, match="checking share 1 of 2 needs gather="):
        validate_for_training(
            mixed_records, data_path="data.json", image_folder=tiny.image_folder, conv=CONV, is_multimodal=True,
            rank=1, world=2,
        )  # fmt: skip


def test_drop_invalid_returns_a_view_of_the_store(mixed_records, tiny, caplog):
    import logging

    store = RecordStore.from_records(mixed_records)
    report = validate_for_training(
        store, data_path="data.json", image_folder=tiny.image_folder, conv=CONV, is_multimodal=True
    )
    kept = report.drop_invalid(store, logging.getLogger("llava.test"))
    assert isinstance(kept, RecordStore) and kept._data is store._data
    bad = {problem.index for problem in report.errors}
    assert list(kept) == [record for index, record in enumerate(mixed_records) if index not in bad]
    assert len(kept) == 48 + 1  # the tiny data and the valid sample that only reuses an id


def test_no_store_is_left_in_the_temp_folder_after_a_failed_build(tmp_path, private_tmp):
    data = tmp_path / "bad.json"
    data.write_text("[{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_store(data)
    assert list(private_tmp.iterdir()) == []
