"""The data checker names every bad sample and exits non-zero; training refuses the same data before step 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import multimodal_flags

from llava.data.check import main
from llava.data.validation import DataValidationError
from llava.train.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]


def _turns(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


# id -> (record fields, expected problem kind or None for a good sample)
CASES = {
    "good-image": ({"image": "ok.png", "conversations": _turns("<image>\nWhat color?", "Red.")}, None),
    "good-text": ({"conversations": _turns("Hi", "Hello!", "How are you?", "Fine.")}, None),
    "no-conversations": ({}, "structure"),
    "value-not-text": ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]}, "structure"),
    "unknown-role": ({"conversations": [{"from": "robot", "value": "a"}, {"from": "gpt", "value": "b"}]}, "roles"),
    "out-of-order": ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}, "roles"),
    "missing-image": ({"image": "nowhere.png", "conversations": _turns("<image>\nq", "a")}, "missing_image"),
    "broken-image": ({"image": "broken.png", "conversations": _turns("<image>\nq", "a")}, "unreadable_image"),
    "no-placeholder": ({"image": "ok.png", "conversations": _turns("What color?", "Red.")}, "image_tokens"),
    "stray-placeholder": ({"conversations": _turns("<image>\nWhat color?", "Red.")}, "image_tokens"),
    "image-list": ({"image": ["ok.png", "ok.png"], "conversations": _turns("<image>\nq", "a")}, "image_field"),
    "empty-replies": ({"conversations": _turns("Hi", "", "Still there?", "")}, "fully_masked"),
    "too-long": ({"image": "ok.png", "conversations": _turns("<image>\n" + "word " * 400, "Red.")}, "truncated"),
}
CHEAP_KINDS = {"structure", "roles", "fully_masked", "missing_image", "image_tokens", "image_field"}


@pytest.fixture(scope="module")
def defects(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("defects")
    images = root / "images"
    images.mkdir()
    first_image = next(r["image"] for r in json.loads(Path(tiny.data).read_text()) if "image" in r)
    shutil.copyfile(Path(tiny.image_folder) / first_image, images / "ok.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = [{"id": ident, **fields} for ident, (fields, _) in CASES.items()]
    records.append({"id": "good-image", "conversations": _turns("Again", "Yes.")})  # a duplicate id: warning
    data = root / "data.json"
    data.write_text(json.dumps(records))
    return data, images


def _argv(tiny, data, images, *extra):
    return ["--data_path", str(data), "--image_folder", str(images), "--model_name_or_path", str(tiny.llm),
            "--version", "v1", "--model_max_length", "160", "--vision_tower", str(tiny.vision_tower), *extra]  # fmt: skip


def test_checker_names_every_bad_sample(tiny, defects, capsys):
    data, images = defects
    assert main(_argv(tiny, data, images, "--json")) == 1
    report = json.loads(capsys.readouterr().out)
    found = {(p["id"], p["kind"]) for p in report["problems"] if p["error"]}
    expected = {(ident, kind) for ident, (_, kind) in CASES.items() if kind is not None}
    assert found == expected
    assert [(p["id"], p["kind"]) for p in report["problems"] if not p["error"]] == [("good-image", "duplicate_id")]
    assert report["ok"] is False and report["summary"]["samples"] == len(CASES) + 1
    assert report["image_tokens"] == 16 and report["template"] == "v1"


@pytest.mark.dist
def test_checker_text_output_and_exit_code_as_a_subprocess(tiny, defects):
    data, images = defects
    result = subprocess.run(
        [sys.executable, "-m", "llava.data.check", *_argv(tiny, data, images)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    for ident, (_, kind) in CASES.items():
        if kind is not None:
            assert f"sample {ident!r}" in result.stdout, ident
    assert "sample(s) with errors." in result.stdout and "problems: " in result.stdout


def test_clean_data_passes_with_a_summary(tiny, capsys):
    assert main(["--data_path", str(tiny.data), "--image_folder", str(tiny.image_folder),
                 "--model_name_or_path", str(tiny.llava), "--version", "v1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "samples: 48   images: 40   tokenized: 48" in out and out.rstrip().endswith("No errors.")
    assert "supervised share of tokens:" in out and "tokens per sample (images counted as 16 tokens)" in out


def test_jsonl_and_sampled_tokenization(tiny, tmp_path, capsys):
    records = json.loads(Path(tiny.data).read_text())
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert main(["--data_path", str(jsonl), "--image_folder", str(tiny.image_folder), "--json",
                 "--model_name_or_path", str(tiny.llm), "--tokenize", "sample:10", "--num_workers", "2"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["samples"] == 48 and summary["tokenized_samples"] == 10


def test_training_refuses_the_data_before_loading_the_model(tiny, defects, tmp_path, capsys):
    data, images = defects
    started = time.monotonic()
    with pytest.raises(DataValidationError) as error:
        train(argv=multimodal_flags(tiny, tmp_path / "out", data_path=data, image_folder=images))
    message = str(error.value)
    assert time.monotonic() - started < 60 and not (tmp_path / "out").exists()
    main(_argv(tiny, data, images))
    checker_lines = set(capsys.readouterr().out.splitlines())
    for ident, (_, kind) in CASES.items():
        if kind in CHEAP_KINDS:
            line = next(line for line in message.splitlines() if f"sample {ident!r}" in line).strip()
            assert line in checker_lines, line  # the same words as the checker's
    assert str(data) in message and "python -m llava.data.check" in message


@pytest.mark.slow
def test_structure_and_image_existence_of_100k_samples(tiny, tmp_path, capsys):
    images = [r["image"] for r in json.loads(Path(tiny.data).read_text()) if "image" in r]
    records = [
        {"id": f"s{i}", "image": images[i % len(images)], "conversations": _turns("<image>\nWhat color?", "Red.")}
        for i in range(100_000)
    ]
    data = tmp_path / "big.json"
    data.write_text(json.dumps(records))
    started = time.monotonic()
    code = main(["--data_path", str(data), "--image_folder", str(tiny.image_folder), "--tokenize", "none",
                 "--no-decode-images", "--json"])  # fmt: skip
    elapsed = time.monotonic() - started
    assert code == 0 and json.loads(capsys.readouterr().out)["summary"]["samples"] == 100_000
    print(f"\n100k samples: structure + image existence in {elapsed:.1f} s")


def test_skip_invalid_samples_drops_what_the_checks_reject(tiny, tmp_path, caplog):
    records = json.loads(Path(tiny.data).read_text())
    broken = {
        "bad-roles": {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        "no-reply": {"conversations": _turns("Hi", "")},
        "gone": {"image": "missing/nowhere.png", "conversations": _turns("<image>\nq", "a")},
        "two-images": {"image": records[0]["image"], "conversations": _turns("<image>\nq", "a", "<image> more", "b")},
    }
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records + [{"id": ident, **fields} for ident, fields in broken.items()]))
    with caplog.at_level("WARNING", logger="llava"):
        trainer = train(argv=multimodal_flags(tiny, tmp_path / "out", data_path=data, max_steps=1, save_steps=1,
                                              skip_invalid_samples=True))  # fmt: skip
    assert len(trainer.train_dataset) == len(records)
    skipped = [r.getMessage() for r in caplog.records if ": skipping sample " in r.getMessage()]
    assert [message.split("skipping sample ")[1].split(" ")[0] for message in skipped] == [repr(i) for i in broken]
    kinds = {"bad-roles": "is from 'human' but 'gpt' was expected", "no-reply": "no assistant turn",
             "gone": "not found", "two-images": "2 turns contain '<image>'"}  # fmt: skip
    for message, ident in zip(skipped, broken):
        assert kinds[ident] in message, message
    summary = f"--skip_invalid_samples: dropped 4 of {len(records) + 4} samples of {data}; training on the other 48"
    assert summary in [r.getMessage() for r in caplog.records]
    assert trainer.state.global_step == 1


def test_skip_invalid_samples_still_stops_when_nothing_is_left(tiny, tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "a", "conversations": _turns("Hi", "")}]))
    with pytest.raises(DataValidationError, match="every sample in .* is invalid, so --skip_invalid_samples would"):
        train(argv=multimodal_flags(tiny, tmp_path / "out", data_path=data, skip_invalid_samples=True))
    assert not (tmp_path / "out").exists()
