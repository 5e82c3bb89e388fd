"""Upstream's generation entry points (llava.eval.model_vqa*) on a LoRA run of the tiny model with --model-base, and
batched generation that gives the same greedy token ids as one question at a time."""

from __future__ import annotations

import base64
import csv
import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from train_helpers import multimodal_flags

from llava.eval.answers import ANSWER_KEYS, SHORT_UUID_ALPHABET, SHORT_UUID_LENGTH
from llava.train.train import train

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_CHUNKS = 3
MAX_NEW_TOKENS = 4
PADDING = " Answer in one short sentence, please."


@pytest.fixture(scope="session")
def lora_run(tiny, tmp_path_factory):
    """One LoRA run of the tiny model (LLaVA-1.5 recipe, 4 steps) for every test here."""
    output_dir = tmp_path_factory.mktemp("eval") / "llava-tiny-lora"
    train(argv=multimodal_flags(tiny, output_dir, learning_rate=5e-3, mm_projector_lr=5e-3))
    return output_dir


def _records(tiny):
    return json.loads(Path(tiny.data).read_text())


def _question(record) -> str:
    return record["conversations"][0]["value"].replace("<image>", "").strip()


@pytest.fixture(scope="session")
def question_files(tiny, tmp_path_factory):
    """Tiny question files in upstream's three formats (13 VQA lines, 7 ScienceQA samples, 4 MMBench rows)."""
    root = tmp_path_factory.mktemp("questions")
    records = _records(tiny)
    with_image = [record for record in records if "image" in record]
    text_only = [record for record in records if "image" not in record]

    vqa = root / "vqa.jsonl"
    lines = [
        {"question_id": 100 + index, "image": record["image"], "text": _question(record) + PADDING * (index % 4)}
        for index, record in enumerate(with_image[:13])
    ]
    vqa.write_text("".join(json.dumps(line) + "\n" for line in lines))

    science = root / "science.json"
    samples = []
    for index, record in enumerate([*with_image[:5], *text_only[:2]]):
        sample = {"id": f"sqa-{index}", "conversations": [
            {"from": "human", "value": f"<image>\n{_question(record)}\nContext: none.\nOptions: (A) yes (B) no"},
            {"from": "gpt", "value": "A"}]}  # fmt: skip
        if "image" in record:
            sample["image"] = record["image"]
        samples.append(sample)
    science.write_text(json.dumps(samples))

    mmbench = root / "mmbench.tsv"
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
               "l2-category", "comment", "split"]  # fmt: skip
    options = [
        ("red", "blue", "green", "gray"),
        ("yes", "no", "", ""),
        ("one", "two", "three", "nan"),
        ("a", "b", "", ""),
    ]
    with open(mmbench, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, delimiter="\t")
        writer.writerow(columns)
        for index, (record, row_options) in enumerate(zip(with_image, options)):
            buffer = io.BytesIO()
            Image.open(Path(tiny.image_folder) / record["image"]).convert("RGB").save(buffer, format="PNG")
            hint = "Look closely." if index % 2 else ""
            writer.writerow([7 + index, _question(record), hint, *row_options, "A", "color",
                             base64.b64encode(buffer.getvalue()).decode(), "tiny", "l2", "", "dev"])  # fmt: skip
    return {"vqa": vqa, "science": science, "mmbench": mmbench, "image_folder": tiny.image_folder}


def _expected_ids(entry_point: str, files) -> list:
    if entry_point == "model_vqa_science":
        return [sample["id"] for sample in json.loads(files["science"].read_text())]
    if entry_point == "model_vqa_mmbench":
        with open(files["mmbench"], encoding="utf-8") as file:
            return [int(row["index"]) for row in csv.DictReader(file, delimiter="\t")]
    return [json.loads(line)["question_id"] for line in files["vqa"].read_text().splitlines()]


# Upstream's split (chunk size ceil(n / 3)), written out: 13 -> 5, 5, 3; 7 -> 3, 3, 1; 4 -> 2, 2 and an empty chunk.
CHUNK_SIZES = {13: [5, 5, 3], 7: [3, 3, 1], 4: [2, 2, 0]}

ENTRY_POINTS = {
    "model_vqa": ("vqa", ["--batch-size", "1"]),
    "model_vqa_loader": ("vqa", ["--batch-size", "3", "--num-workers", "2"]),
    "model_vqa_science": ("science", ["--batch-size", "2", "--single-pred-prompt"]),
    "model_vqa_mmbench": ("mmbench", ["--batch-size", "4", "--all-rounds", "--single-pred-prompt"]),
}
MMBENCH_OPTIONS = {7: ["red", "blue", "green", "gray"], 8: ["yes", "no"], 9: ["one", "two", "three"], 10: ["a", "b"]}


def _argv(entry_point, files, lora_run, tiny, answers_file, chunk_idx):
    question_key, extra = ENTRY_POINTS[entry_point]
    return [
        "--model-path", str(lora_run), "--model-base", str(tiny.llm), "--question-file", str(files[question_key]),
        "--image-folder", str(files["image_folder"]), "--answers-file", str(answers_file),
        "--num-chunks", str(NUM_CHUNKS), "--chunk-idx", str(chunk_idx), "--temperature", "0",
        "--conv-mode", "vicuna_v1", "--max_new_tokens", str(MAX_NEW_TOKENS), "--device", "cpu", *extra,
    ]  # fmt: skip


@pytest.mark.dist
@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_entry_point_answers_every_question_once_across_chunks(entry_point, question_files, lora_run, tiny, tmp_path):
    """Chunk 0 through `python -m llava.eval.<entry point>` (as upstream's scripts run it), chunks 1-2 in process."""
    answers = [tmp_path / "answers" / f"{NUM_CHUNKS}_{index}.jsonl" for index in range(NUM_CHUNKS)]
    result = subprocess.run(
        [sys.executable, "-m", f"llava.eval.{entry_point}",
         *_argv(entry_point, question_files, lora_run, tiny, answers[0], 0)],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    module = importlib.import_module(f"llava.eval.{entry_point}")
    for index in range(1, NUM_CHUNKS):
        module.main(_argv(entry_point, question_files, lora_run, tiny, answers[index], index))

    expected_ids = _expected_ids(entry_point, question_files)
    sizes = CHUNK_SIZES[len(expected_ids)]
    start = 0
    seen = []
    for path, size in zip(answers, sizes):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        chunk_ids = expected_ids[start : start + size]
        start += size
        if entry_point == "model_vqa_mmbench":
            _check_mmbench_lines(lines, chunk_ids)
        else:
            assert [line["question_id"] for line in lines] == chunk_ids
            assert all(list(line) == list(ANSWER_KEYS) for line in lines)
        for line in lines:
            assert line["model_id"] == lora_run.name and line["metadata"] == {}
            assert len(line["answer_id"]) == SHORT_UUID_LENGTH and set(line["answer_id"]) <= set(SHORT_UUID_ALPHABET)
            assert isinstance(line["text"], str)
        seen += list(dict.fromkeys(line["question_id"] for line in lines))
    assert seen == expected_ids  # every question in exactly one chunk, in file order
    if entry_point == "model_vqa_science":
        _check_science_prompts(answers, question_files)


def _check_mmbench_lines(lines, chunk_ids):
    keys = ["question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id", "model_id", "metadata"]
    expected = [(qid, round_id) for qid in chunk_ids for round_id in range(len(MMBENCH_OPTIONS[qid]))]
    assert [(line["question_id"], line["round_id"]) for line in lines] == expected
    for line in lines:
        assert list(line) == keys
        options = MMBENCH_OPTIONS[line["question_id"]]
        shift = line["round_id"]
        assert line["options"] == options[shift:] + options[:shift]
        letters = list("ABCD"[: len(options)])
        assert line["option_char"] == letters[shift:] + letters[:shift]
        listed = "".join(f"\n{letter}. {option}" for letter, option in zip(letters, line["options"]))
        assert line["prompt"].endswith(listed) and "<image>" not in line["prompt"]
        assert line["prompt"].startswith("Look closely.\n") == (line["question_id"] % 2 == 0)


def _check_science_prompts(answers, files):
    samples = {sample["id"]: sample for sample in json.loads(files["science"].read_text())}
    for path in answers:
        for line in map(json.loads, path.read_text().splitlines()):
            question = samples[line["question_id"]]["conversations"][0]["value"].replace("<image>", "").strip()
            prefix = "<image>\n" if "image" in samples[line["question_id"]] else ""
            suffix = "\nAnswer with the option's letter from the given choices directly."
            assert line["prompt"] == prefix + question + suffix


def test_batched_greedy_answers_equal_one_at_a_time(lora_run, tiny):
    """Left-padded batches (mixed prompt lengths, text-only questions among image ones) give exactly the token ids
    of batch size 1, for uneven batches and for one batch holding everything."""
    from llava.eval.common import Request, RequestDataset, image_query
    from llava.inference import generation_options
    from llava.model.builder import load_pretrained_model
    from llava.model.generation import generate_batch

    tokenizer, model, processor, _ = load_pretrained_model(lora_run, tiny.llm, device="cpu")
    records = _records(tiny)
    requests = []
    for index, record in enumerate(records[:16]):
        text = _question(record) + PADDING * (index % 5)
        if "image" in record:
            requests.append(
                Request(index, text, image_query(text, False), str(Path(tiny.image_folder) / record["image"]))
            )
        else:
            requests.append(Request(index, text, text))
    dataset = RequestDataset(requests, tokenizer, processor, model.config, "vicuna_v1")
    items = [dataset[index] for index in range(len(dataset))]
    assert len(items) >= 12 and sum(image is None for _, _, image, _ in items) >= 2
    assert len({ids.shape[0] for _, ids, _, _ in items}) >= 6  # mixed prompt lengths
    options = generation_options(0.0, 12)

    def generate(batch_size):
        rows = []
        for start in range(0, len(items), batch_size):
            _, prompts, images, sizes = zip(*items[start : start + batch_size])
            rows += generate_batch(model, tokenizer, list(prompts), list(images), list(sizes), options)
        return rows

    one_at_a_time = generate(1)
    assert len({tuple(row) for row in one_at_a_time}) > 1  # answers differ: the rows are not trivially equal
    for batch_size in (5, len(items)):
        assert generate(batch_size) == one_at_a_time, batch_size


def test_bad_flags_are_reported_together_before_loading(question_files, tmp_path):
    from llava.eval import model_vqa

    with pytest.raises(SystemExit, match="--batch-size must be at least 1.*--chunk-idx must be in 0..1"):
        model_vqa.main(["--model-path", str(tmp_path / "absent"), "--question-file", str(question_files["vqa"]),
                        "--batch-size", "0", "--num-chunks", "2", "--chunk-idx", "2"])  # fmt: skip


@pytest.mark.parametrize(("flag", "layer_class"), [("--load-4bit", "Linear4bit"), ("--load-8bit", "Linear8bitLt")])
def test_quantized_lora_run_answers(question_files, lora_run, tiny, tmp_path, monkeypatch, flag, layer_class):
    """bitsandbytes 4-bit and 8-bit loading of the LoRA run (merged over its base) answers every question, on the
    CPU too: every linear layer of the tiny LM is a multiple of 32 wide, as bitsandbytes' CPU 4-bit kernel needs."""
    from llava.eval import common, model_vqa_loader

    loaded = []
    load = common.load_model
    monkeypatch.setattr(common, "load_model", lambda args: loaded.append(load(args)) or loaded[-1])
    answers = tmp_path / "answers.jsonl"
    argv = _argv("model_vqa_loader", question_files, lora_run, tiny, answers, 0)
    argv[argv.index("--num-chunks") + 1] = "1"
    model_vqa_loader.main([*argv, flag, "--num-workers", "0"])
    layers = {type(module).__name__ for module in loaded[0].model.get_model().layers.modules()}
    assert layer_class in layers
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [line["question_id"] for line in lines] == _expected_ids("model_vqa_loader", question_files)
    assert all(list(line) == list(ANSWER_KEYS) for line in lines)
    assert all(line["text"] for line in lines)
