"""The upstream scripts this package lacked: the training scripts (their flags parse, their entry points exist),
ScienceQA's and MM-Vet's converters and the Q-Bench entry point its scripts call, on the tiny data."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"


def _script(name: str):
    sys.path.insert(0, str(SCRIPTS))  # convert_sqa_to_llava imports its sibling, as when run as a file
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.mark.parametrize(
    ("script", "entry_point", "expected"),
    [
        ("finetune_sqa.sh", "llava/train/train_mem.py", dict(num_train_epochs=12, version="v1")),
        ("finetune_full_schedule.sh", "llava/train/train_mem.py", dict(num_train_epochs=3, version="v1")),
        ("pretrain_xformers.sh", "llava/train/train_xformers.py", dict(tune_mm_mlp_adapter=True, version="plain")),
    ],
)
def test_training_scripts_flags_parse(tiny, tmp_path, script, entry_point, expected):
    from llava.train.arguments import parse_args

    record = tmp_path / "argv.json"
    fake = f'deepspeed() {{ "{sys.executable}" -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@" > "{record}"; }}'
    env = {**os.environ, "PROMPT_VERSION": "v1", "MODEL_VERSION": "tiny", "MODEL_PATH": str(tiny.llm),
           "DATA_PATH": str(tiny.data), "IMAGE_FOLDER": str(tiny.image_folder), "VISION_TOWER": str(tiny.vision_tower),
           "PRETRAIN_MM_MLP_ADAPTER": str(tiny.projector), "OUTPUT_DIR": str(tmp_path / "out")}  # fmt: skip
    subprocess.run(["bash", "-c", f"{fake}; source {SCRIPTS / script}"], cwd=REPO_ROOT, env=env, check=True, timeout=60)
    argv = json.loads(record.read_text())
    assert argv[0] == entry_point and (REPO_ROOT / entry_point).is_file()
    model_args, data_args, training_args = parse_args(argv[1:])
    values = {**vars(model_args), **vars(data_args), **training_args.to_dict()}
    assert {key: values[key] for key in expected} == expected
    assert data_args.data_path == str(tiny.data) and training_args.output_dir == str(tmp_path / "out")


@pytest.fixture
def scienceqa(tmp_path):
    problems = {
        "1": {"question": "Which is red?", "hint": "", "caption": "", "choices": ["apple", "sky"], "answer": 0,
              "lecture": "Colors.\nRed ones.", "solution": "Apples are red.", "image": "image.png"},
        "2": {"question": "Two plus two?", "hint": "Count.", "caption": "", "choices": ["3", "4", "5"], "answer": 1,
              "lecture": "", "solution": "", "image": None},
    }  # fmt: skip
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"train": ["1", "2"]}))
    return tmp_path


def test_convert_sqa_to_llava_writes_training_data_in_upstreams_formats(scienceqa, capsys):
    convert = _script("convert_sqa_to_llava")
    path = convert.main(["convert_to_llava", "--base-dir", str(scienceqa), "--split", "train"])
    assert path == str(scienceqa / "llava_train_QCM-LEA.json")
    records = json.loads(Path(path).read_text())
    assert records[0] == {
        "id": "1", "image": "1/image.png",
        "conversations": [
            {"from": "human", "value": "Which is red?\nContext: N/A\nOptions: (A) apple (B) sky\n<image>"},
            {"from": "gpt", "value": "Colors.\nRed ones. Apples are red. The answer is A."},
        ],
    }  # fmt: skip
    assert records[1]["conversations"][0]["value"] == "Two plus two?\nContext: Count.\nOptions: (A) 3 (B) 4 (C) 5"
    # Upstream's text exactly: empty lecture and solution leave a space ("Answer:   The" -> " The").
    assert records[1]["conversations"][1]["value"] == " The answer is B." and "image" not in records[1]
    assert "Number of samples: 2" in capsys.readouterr().out
    jsonl = convert.main(["convert_to_jsonl", "--base_dir", str(scienceqa), "--split", "train"])
    lines = [json.loads(line) for line in Path(jsonl).read_text().splitlines()]
    assert lines[0]["output"] == "LECTURE: Colors.\nRed ones.\nSOLUTION: Apples are red.\n###\nANSWER: A."
    assert lines[1] == {"id": "2", "instruction": "Two plus two?\nContext: Count.\nOptions: (A) 3 (B) 4 (C) 5",
                        "output": "###\nANSWER: B."}  # fmt: skip
    # The loader trains on what it wrote: every record passes the data checks.
    from llava.conversation import get_conv_template
    from llava.data.validation import check_records

    assert check_records(records, conv=get_conv_template("vicuna_v1"), is_multimodal=True) == []


def test_base_prompt_formats_and_an_unknown_one():
    base = _script("convert_sqa_to_llava_base_prompt")
    fields = dict(question="Q?", context="C.", choice="(A) x", answer="A", lecture="L.", solution="S.")
    assert base.create_one_example("CQM-AL", **fields, test_example=False) == (
        "Context: C.\nQuestion: Q?\nOptions: (A) x\nAnswer: The answer is A. BECAUSE: S."
    )
    assert base.create_one_example_chatbot("QCMLE-A", **fields, test_example=True) == (
        "Question: Q?\nContext: C.\nOptions: (A) x\nBECAUSE: L. S.",
        "Answer:",
    )
    user, assistant = base.create_one_example_gpt4("QCM-LEA", **fields, test_example=False)
    assert user["content"].startswith("Can you explain Question: Q?") and assistant["content"].endswith("is A.")
    with pytest.raises(ValueError, match="unknown prompt format 'QXM-A'"):
        base.create_one_example("QXM-A", **fields)


def test_convert_mmvet_for_eval(tmp_path):
    src = tmp_path / "answers.jsonl"
    src.write_text('{"question_id": 0, "text": "A cat."}\n{"question_id": 12, "text": "Two."}\n')
    _script("convert_mmvet_for_eval").convert(str(src), str(tmp_path / "results.json"))
    assert json.loads((tmp_path / "results.json").read_text()) == {"v1_0": "A cat.", "v1_12": "Two."}


def test_model_vqa_qbench_answers_llvisionqa_questions(tiny, tmp_path):
    from llava.eval.model_vqa_qbench import main

    images = [record["image"] for record in json.loads(Path(tiny.data).read_text()) if "image" in record][:2]
    questions = [
        {"img_path": images[0], "question": "Is it sharp?", "candidates": ["Yes", "No"], "correct_ans": "Yes"},
        {"img_path": images[1], "question": "How bright?", "candidates": ["Dark", "Fair", "Bright"], "type": 1},
    ]
    question_file = tmp_path / "llvisionqa_dev.json"
    question_file.write_text(json.dumps(questions, ensure_ascii=False))
    answers = tmp_path / "answers.jsonl"
    main(["--model-path", str(tiny.llava), "--image-folder", str(tiny.image_folder), "--questions-file",
          str(question_file), "--answers-file", str(answers), "--temperature", "0", "--max_new_tokens", "3",
          "--device", "cpu", "--lang", "zh"])  # fmt: skip
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [line["question_id"] for line in lines] == [0, 1]
    assert lines[0]["prompt"] == "Is it sharp?\nA. Yes\nB. No"
    assert lines[0]["response"] == lines[0]["text"] and lines[0]["correct_ans"] == "Yes"
    assert lines[1]["candidates"] == ["Dark", "Fair", "Bright"] and lines[1]["type"] == 1
