"""Upstream's scorers and submission converters on hand-made answer files whose scores are worked out by hand, the
chunk split, and the benchmark shell scripts' commands against our entry points' flags."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava.eval.common import get_chunk, split_list
from llava.eval.m4c_evaluator import EvalAIAnswerProcessor, TextVQAAccuracyEvaluator

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_SCRIPTS = REPO_ROOT / "scripts" / "v1_5" / "eval"


def _write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _answer(question_id, text, prompt="q"):
    return {
        "question_id": question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": "x",
        "model_id": "m",
        "metadata": {},
    }


def _script(name: str):
    """A module from scripts/ (they are files, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Chunks


@pytest.mark.parametrize(
    "count, num_chunks, sizes",
    [
        (10, 1, [10]),
        (10, 3, [4, 4, 2]),
        (9, 3, [3, 3, 3]),
        (5, 4, [2, 2, 1, 0]),
        (3, 5, [1, 1, 1, 0, 0]),
        (0, 2, [0, 0]),
    ],
)
def test_chunks_split_as_upstream_and_cover_every_item_once(count, num_chunks, sizes):
    items = list(range(count))
    chunks = [list(get_chunk(items, num_chunks, index)) for index in range(num_chunks)]
    assert [len(chunk) for chunk in chunks] == sizes
    assert sum(chunks, []) == items
    assert [list(chunk) for chunk in split_list(items, num_chunks)] == [chunk for chunk in chunks if chunk]


def test_bad_chunk_arguments():
    with pytest.raises(ValueError, match="--chunk-idx must be in 0..2"):
        get_chunk([1, 2, 3], 3, 3)
    with pytest.raises(ValueError, match="--num-chunks must be at least 1"):
        split_list([1, 2, 3], 0)


# ----------------------------------------------------------------------------------------------------------------
# VQA answer normalisation and TextVQA


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two dogs.", "2 dogs"),
        ("The cat", "cat"),
        ("an apple", "apple"),
        ("none", "0"),
        ("Ten\tapples\n", "10 apples"),
        ("It's 3.5 m.", "it 's 3.5 m"),
        ("yes, it is!", "yes it is"),
        ("left - right", "left right"),
        ("x-ray", "x ray"),
        ("(hello)", "hello"),
        ("dont know", "don't know"),
        ("couldnt've", "couldn't've"),
        ("couldn'tve", "couldn't've"),
        ("somebody'd", "somebodyd"),  # the reference table's backwards entry
        ("Im", "im"),  # capital-I entries never match after lower-casing
        ("1,000", "1000"),
        ("What?", "what"),
        ("e.g.", "eg"),
    ],
)
def test_vqa_answer_normalisation(raw, normalised):
    assert EvalAIAnswerProcessor()(raw) == normalised


def test_textvqa_soft_accuracy():
    evaluator = TextVQAAccuracyEvaluator()
    cases = [
        ("The dog.", ["dog"] * 10, 1.0),  # 9 others match whichever human is left out
        ("Red", ["red", "red"] + ["blue"] * 8, 0.6),  # (2 x 1/3 + 8 x 2/3) / 10
        ("stop", ["stop"] + ["go"] * 9, 0.3),  # (1 x 0 + 9 x 1/3) / 10
        ("one", ["2"] * 10, 0.0),
        ("two", ["2", "2", "2", "3", "3", "3", "3", "3", "3", "3"], 0.9),  # (3 x 2/3 + 7 x 1) / 10
    ]
    for prediction, humans, score in cases:
        assert evaluator.eval_pred_list([{"pred_answer": prediction, "gt_answers": humans}]) == pytest.approx(score)
    with pytest.raises(ValueError, match="expected 10 human answers"):
        evaluator.eval_pred_list([{"pred_answer": "a", "gt_answers": ["a"] * 9}])


def test_eval_textvqa_matches_prompts_to_annotations(tmp_path, capsys):
    from llava.eval import eval_textvqa

    annotations = {"data": [
        {"image_id": "img1", "question": "What animal is this?", "answers": ["dog"] * 10},
        {"image_id": "img2", "question": "What color is the sign?", "answers": ["red", "red"] + ["blue"] * 8},
        {"image_id": "img3", "question": "What does it say?", "answers": ["stop"] + ["go"] * 9},
        {"image_id": "img4", "question": "How many?", "answers": ["2"] * 10},
    ]}  # fmt: skip
    annotation_file = tmp_path / "TextVQA_0.5.1_val.json"
    annotation_file.write_text(json.dumps(annotations))
    instruction = "Answer the question using a single word or phrase."
    result_file = _write_jsonl(tmp_path / "llava-tiny.jsonl", [
        _answer("img1", "The dog.", f"What animal is this?\n{instruction}"),
        _answer("img2", "Red", f"Reference OCR token: STOP, 24\nWhat color is the sign?\n{instruction}"),
        _answer("img3", "stop", f"What does it say?\nReference OCR token: STOP\n{instruction}"),
        _answer("img4", "one", "OCR tokens: a b Question: How many? Short answer:"),
    ])  # fmt: skip
    accuracies = eval_textvqa.main(["--annotation-file", str(annotation_file), "--result-file", str(result_file)])
    assert accuracies == {str(result_file): pytest.approx((1.0 + 0.6 + 0.3 + 0.0) / 4)}
    assert capsys.readouterr().out == "llava-tiny\nSamples: 4\nAccuracy: 47.50%\n\n"

    _write_jsonl(result_file, [_answer("img1", "dog", "What animal is this? (no instruction line)")])
    with pytest.raises(ValueError, match="cannot find the question in the prompt"):
        eval_textvqa.eval_single(str(annotation_file), str(result_file))


# ----------------------------------------------------------------------------------------------------------------
# POPE


def test_eval_pope_per_category(tmp_path):
    """Run as pope.sh runs it: `python llava/eval/eval_pope.py ...`."""
    questions = [
        {"question_id": i, "category": category} for i, category in enumerate(["random"] * 5 + ["adversarial"] * 2)
    ]
    question_file = _write_jsonl(tmp_path / "llava_pope_test.jsonl", questions)
    annotation_dir = tmp_path / "coco"
    annotation_dir.mkdir()
    _write_jsonl(
        annotation_dir / "coco_pope_random.json", [{"label": label} for label in ["yes", "yes", "no", "no", "yes"]]
    )
    _write_jsonl(annotation_dir / "coco_pope_adversarial.json", [{"label": "no"}, {"label": "yes"}])
    # Interleaved across categories; per category in the label files' order.
    texts = {0: "Yes, there is.", 5: "Yes", 1: "No, there is not.", 6: "Yes.", 2: "no.",
             3: "There is a dog. No wait", 4: "I am not sure"}  # fmt: skip
    result_file = _write_jsonl(tmp_path / "answers.jsonl", [_answer(qid, text) for qid, text in texts.items()])
    result = subprocess.run(
        [sys.executable, "llava/eval/eval_pope.py", "--annotation-dir", str(annotation_dir),
         "--question-file", str(question_file), "--result-file", str(result_file)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("====================================\n")
    # random: predictions yes, no, no, yes, no against yes, yes, no, no, yes -> TP 1, FP 1, TN 1, FN 2
    assert blocks[1].splitlines() == [
        "Category: random, # samples: 5", "TP\tFP\tTN\tFN\t", "1\t1\t1\t2", "Accuracy: 0.4", "Precision: 0.5",
        f"Recall: {1 / 3}", f"F1 score: {2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)}", "Yes ratio: 0.4",
        "0.400, 0.400, 0.500, 0.333, 0.400",
    ]  # fmt: skip
    # adversarial: yes, yes against no, yes -> TP 1, FP 1
    assert blocks[0].splitlines()[:3] == ["Category: adversarial, # samples: 2", "TP\tFP\tTN\tFN\t", "1\t1\t0\t0"]
    assert blocks[0].splitlines()[-1] == "0.667, 0.500, 0.500, 1.000, 1.000"


# ----------------------------------------------------------------------------------------------------------------
# ScienceQA


def test_eval_science_qa(tmp_path, capsys):
    from llava.eval import eval_science_qa

    problems = {
        f"p{i}": {"choices": ["x", "y", "z"], "answer": answer} for i, answer in enumerate([1, 2, 0, 0, 1, 0, 2])
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": [f"p{i}" for i in range(6)], "val": ["p6"]}))
    answers = [
        _answer("p0", "B", "<image>\nWhich?"),  # bare letter: right
        _answer("p1", "C. z", "Which?"),  # letter + ". ": right
        _answer("p2", "I think so. The answer is A.", "Which?"),  # one "The answer is X.": right
        _answer("p3", "D", "<image>\nWhich?"),  # a letter beyond this problem's 3 choices: -1
        _answer("p5", "The answer is A. The answer is B.", "Which?"),  # two: FAILED
        _answer("p6", "C", "Which?"),  # another split
    ]  # p4 unanswered: FAILED
    result_file = _write_jsonl(tmp_path / "answers.jsonl", answers)
    output_file, output_result = tmp_path / "output.jsonl", tmp_path / "result.json"
    eval_science_qa.main(["--base-dir", str(tmp_path), "--result-file", str(result_file),
                          "--output-file", str(output_file), "--output-result", str(output_result)])  # fmt: skip
    assert capsys.readouterr().out == "Total: 6, Correct: 3, Accuracy: 50.00%, IMG-Accuracy: 50.00%\n"
    result = json.loads(output_result.read_text())
    assert result["acc"] == 50.0 and result["correct"] == 3 and result["count"] == 6
    assert result["results"] == {"p0": 1, "p1": 2, "p2": 0, "p3": -1, "p4": -1, "p5": -1}
    assert result["outputs"]["p4"] == "FAILED" and result["outputs"]["p1"] == "C. z"
    analyses = json.loads(output_file.read_text())
    assert [a["question_id"] for a in analyses["correct"]] == ["p0", "p1", "p2"]
    assert [(a["question_id"], a["parsed_ans"], a["ground_truth"]) for a in analyses["incorrect"]] == [
        ("p3", "D", "A"), ("p4", "FAILED", "B"), ("p5", "FAILED", "A")]  # fmt: skip
    assert analyses["correct"][0]["is_multimodal"] and not analyses["correct"][1]["is_multimodal"]
    assert eval_science_qa.build_parser().parse_args(
        ["--base-dir", "b", "--result-file", "r", "--output-file", "o", "--output-result", "x", "--options", "ABC"]
    ).options == ["A", "B", "C"]  # upstream's type=list


# ----------------------------------------------------------------------------------------------------------------
# Submission converters


def test_convert_gqa(tmp_path):
    src = _write_jsonl(
        tmp_path / "merge.jsonl", [_answer("201", "Yes."), _answer("202", "Red..."), _answer("203", "A Cat")]
    )
    _script("convert_gqa_for_eval").main(["--src", str(src), "--dst", str(tmp_path / "predictions.json")])
    assert json.loads((tmp_path / "predictions.json").read_text()) == [
        {"questionId": "201", "prediction": "yes"}, {"questionId": "202", "prediction": "red"},
        {"questionId": "203", "prediction": "a cat"}]  # fmt: skip


def test_convert_vqav2(tmp_path, capsys):
    split, ckpt = "llava_vqav2_mscoco_test-dev2015", "llava-tiny"
    answers_dir = tmp_path / "answers" / split / ckpt
    answers_dir.mkdir(parents=True)
    merge = answers_dir / "merge.jsonl"
    _write_jsonl(merge, [_answer(1, "Two."), _answer(2, "The man's hat")])
    with open(merge, "a") as file:
        file.write("{not json\n")
    _write_jsonl(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", [{"question_id": q} for q in (1, 2, 3)])
    _script("convert_vqav2_for_submission").main(["--dir", str(tmp_path), "--ckpt", ckpt, "--split", split])
    assert "total results: 2, total split: 3, error_line: 1" in capsys.readouterr().out
    upload = json.loads((tmp_path / "answers_upload" / split / f"{ckpt}.json").read_text())
    assert upload == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "man 's hat"},
                      {"question_id": 3, "answer": ""}]  # fmt: skip


def test_convert_vizwiz(tmp_path):
    questions = _write_jsonl(tmp_path / "llava_test.jsonl", [{"question_id": 0, "image": "VizWiz_0.jpg"},
                                                             {"question_id": 1, "image": "VizWiz_1.jpg"}])  # fmt: skip
    results = _write_jsonl(tmp_path / "answers.jsonl", [_answer(1, "Unanswerable."), _answer(0, "A can of soup")])
    upload = tmp_path / "answers_upload" / "llava-tiny.json"
    convert = _script("convert_vizwiz_for_submission")
    convert.main(
        ["--annotation-file", str(questions), "--result-file", str(results), "--result-upload-file", str(upload)]
    )
    assert json.loads(upload.read_text()) == [{"image": "VizWiz_0.jpg", "answer": "can of soup"},
                                              {"image": "VizWiz_1.jpg", "answer": "unanswerable"}]  # fmt: skip
    _write_jsonl(results, [_answer(0, "soup")])
    with pytest.raises(ValueError, match=r"1 questions .* have no answer .*\[1\]"):
        convert.main(
            ["--annotation-file", str(questions), "--result-file", str(results), "--result-upload-file", str(upload)]
        )


def test_convert_seed(tmp_path, capsys):
    data = {
        "question_type": {"Scene Understanding": 1, "Instance Identity": 2},
        "questions": [
            {"question_id": "10", "data_type": "image", "question_type_id": 1, "answer": "A"},
            {"question_id": "11", "data_type": "image", "question_type_id": 1, "answer": "B"},
            {"question_id": "12", "data_type": "image", "question_type_id": 2, "answer": "C"},
            {"question_id": "v_1", "data_type": "video", "question_type_id": 2, "answer": "D"},
        ],
    }
    annotation = tmp_path / "SEED-Bench.json"
    annotation.write_text(json.dumps(data))
    # LLaVA's SEED question file uses int ids where SEED's are numeric.
    results = _write_jsonl(tmp_path / "merge.jsonl", [_answer(10, "A"), _answer(11, "C"), _answer(12, "C"),
                                                      _answer("v_1", "D.")])  # fmt: skip
    upload = tmp_path / "answers_upload" / "llava-tiny.jsonl"
    scores = _script("convert_seed_for_submission").main(
        ["--annotation-file", str(annotation), "--result-file", str(results), "--result-upload-file", str(upload)]
    )
    assert scores == {"total": 50.0, "image": pytest.approx(200 / 3), "video": 0.0}
    assert capsys.readouterr().out.splitlines() == [
        "Scene Understanding: 50.00%", "Instance Identity: 50.00%", "Total accuracy: 50.00%",
        "image accuracy: 66.67%", "video accuracy: 0.00%"]  # fmt: skip
    assert [json.loads(line) for line in upload.read_text().splitlines()] == [
        {"question_id": "10", "prediction": "A"}, {"question_id": "11", "prediction": "C"},
        {"question_id": "12", "prediction": "C"}, {"question_id": "v_1", "prediction": "D."}]  # fmt: skip


def test_convert_mmbench(tmp_path):
    from openpyxl import load_workbook

    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
               "l2-category", "comment", "split"]  # fmt: skip
    rows = [["3", "Which color?", "nan", "red", "blue", "", "", "A", "color", "aGVsbG8=", "src", "l2", "", "dev"],
            ["4", "Which shape?", "Hint.", "circle", "square", "star", "NA", "C", "shape", "aGVsbG8=", "src", "l2", "", "dev"],
            ["5", "Unanswered?", "", "yes", "no", "", "", "B", "misc", "aGVsbG8=", "src", "l2", "", "dev"]]  # fmt: skip
    annotation = tmp_path / "mmbench_dev_20230712.tsv"
    annotation.write_text("\n".join("\t".join(row) for row in [columns, *rows]) + "\n")
    result_dir = tmp_path / "answers"
    result_dir.mkdir()
    # --all-rounds writes one line per round: the last round's answer is submitted, as upstream.
    _write_jsonl(result_dir / "llava-tiny.jsonl", [_answer(3, "A"), _answer(4, "B"), _answer(4, "C")])
    path = _script("convert_mmbench_for_submission").main(
        ["--annotation-file", str(annotation), "--result-dir", str(result_dir), "--upload-dir", str(tmp_path / "upload"),
         "--experiment", "llava-tiny"]
    )  # fmt: skip
    assert path == str(tmp_path / "upload" / "llava-tiny.xlsx")
    sheet = load_workbook(path).active
    assert [list(row) for row in sheet.iter_rows(values_only=True)] == [
        ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"],
        [3, "Which color?", "red", "blue", None, None, "A", "A", "dev"],
        [4, "Which shape?", "circle", "square", "star", None, "C", "C", "dev"],
        [5, "Unanswered?", "yes", "no", None, None, None, "B", "dev"],
    ]


# ----------------------------------------------------------------------------------------------------------------
# scripts/v1_5/eval/*.sh


EXPECTED_COMMANDS = {
    "pope.sh": ["-m llava.eval.model_vqa_loader", "llava/eval/eval_pope.py"],
    "textvqa.sh": ["-m llava.eval.model_vqa_loader", "-m llava.eval.eval_textvqa"],
    "sqa.sh": ["-m llava.eval.model_vqa_science", "llava/eval/eval_science_qa.py"],
    "gqa.sh": ["-m llava.eval.model_vqa_loader", "scripts/convert_gqa_for_eval.py", "eval/eval.py"],
    "vqav2.sh": ["-m llava.eval.model_vqa_loader", "scripts/convert_vqav2_for_submission.py"],
    "vizwiz.sh": ["-m llava.eval.model_vqa_loader", "scripts/convert_vizwiz_for_submission.py"],
    "mmbench.sh": ["-m llava.eval.model_vqa_mmbench", "scripts/convert_mmbench_for_submission.py"],
    "seed.sh": ["-m llava.eval.model_vqa_loader", "scripts/convert_seed_for_submission.py"],
    "mme.sh": ["-m llava.eval.model_vqa_loader", "convert_answer_to_mme.py", "calculation.py"],
    "mmvet.sh": ["-m llava.eval.model_vqa", "scripts/convert_mmvet_for_eval.py"],
    "llavabench.sh": [
        "-m llava.eval.model_vqa",
        "llava/eval/eval_gpt_review_bench.py",
        "llava/eval/summarize_gpt_review.py",
    ],
    "mmbench_cn.sh": ["-m llava.eval.model_vqa_mmbench", "scripts/convert_mmbench_for_submission.py"],
    "qbench.sh": ["-m llava.eval.model_vqa_qbench"],
    "qbench_zh.sh": ["-m llava.eval.model_vqa_qbench"],
}
# Tools shipped with the benchmarks' data (GQA's evaluator, MME's converter and calculator), not with LLaVA.
BENCHMARK_OWN_TOOLS = ("eval/eval.py", "convert_answer_to_mme.py", "calculation.py")
SCRIPT_ARGS = {"qbench.sh": "dev", "qbench_zh.sh": "dev"}  # the split, upstream's $1
# The model flags every generation step passes (temperature, conv mode); Q-Bench's scripts keep the defaults.
GENERATION_FLAGS = {"qbench.sh": (0.2, "llava_v1")}
ANSWERS_NAMED_BY_SPLIT = {"qbench.sh", "qbench_zh.sh"}  # upstream's answers path names no model


def _parser_for(command: list[str]):
    if command[0] == "-m":
        return importlib.import_module(command[1]).build_parser(), command[2:]
    path = REPO_ROOT / command[0]
    assert path.is_file(), command[0]
    if command[0].startswith("llava/"):
        return importlib.import_module(command[0].removesuffix(".py").replace("/", ".")).build_parser(), command[1:]
    return _script(path.stem).build_parser(), command[1:]


@pytest.mark.parametrize("script", sorted(EXPECTED_COMMANDS))
def test_eval_script_commands_parse(script, tmp_path):
    """Each script, run with `python` recording its arguments instead, calls our modules with flags they accept."""
    record = tmp_path / "calls.jsonl"
    fake_python = (
        f'python() {{ "{sys.executable}" -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@" >> "{record}"; }}'
    )
    subprocess.run(
        ["bash", "-c", f"{fake_python}; source {EVAL_SCRIPTS / script} {SCRIPT_ARGS.get(script, '')}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "MODEL_PATH": "./checkpoints/run", "MODEL_BASE": "./base", "CKPT": "run"},
    )  # fmt: skip
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    names = list(dict.fromkeys(" ".join(call[:2]) if call[0] == "-m" else call[0] for call in calls))
    assert names == EXPECTED_COMMANDS[script]
    for call in calls:
        if call[0] in BENCHMARK_OWN_TOOLS:
            continue
        parser, flags = _parser_for(call)
        args = parser.parse_args(flags)
        if call[0] == "-m" and call[1].startswith("llava.eval.model_vqa"):
            temperature, conv_mode = GENERATION_FLAGS.get(script.replace("_zh", ""), (0.0, "vicuna_v1"))
            assert (args.model_path, args.model_base, args.temperature, args.conv_mode) == (
                "./checkpoints/run", "./base", temperature, conv_mode)  # fmt: skip
            assert args.answers_file.endswith(".jsonl")
            assert "/run" in args.answers_file or script in ANSWERS_NAMED_BY_SPLIT
