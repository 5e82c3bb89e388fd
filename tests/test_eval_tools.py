"""Upstream's other evaluation modules under their paths: model_qa (a language model answers text questions), the
ScienceQA GPT-4 scorers, the ST-VQA scores and the web page helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval import eval_science_qa_gpt4, eval_science_qa_gpt4_requery
from llava.eval.generate_webpage_data_from_table import clean_review, read_jsonl, trim_hanging_lines
from llava.eval.m4c_evaluator import STVQAAccuracyEvaluator, STVQAANLSEvaluator, TextCapsBleu4Evaluator, edit_distance


def test_model_qa_answers_every_question_with_upstreams_lines(tiny, tmp_path):
    from llava.eval.model_qa import main

    questions = tmp_path / "question.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"question_id": i, "text": f"What is {i} plus {i}?", "category": "math"}) + "\n" for i in (1, 2)
        )
    )
    answers = tmp_path / "answer.jsonl"
    argv = ["--model-name", str(tiny.llm), "--question-file", str(questions), "--answers-file", str(answers),
            "--max-new-tokens", "6", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [line["question_id"] for line in lines] == [1, 2]
    assert all(set(line) == {"question_id", "text", "answer_id", "model_id", "metadata"} for line in lines)
    assert all(isinstance(line["text"], str) and "</s>" not in line["text"] for line in lines)
    assert lines[0]["model_id"] == str(tiny.llm)


@pytest.fixture
def scienceqa(tmp_path):
    problems = {str(i): {"choices": ["x", "y", "z"], "answer": i % 3} for i in range(4)}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["0", "1", "2", "3"]}))
    letters = "ABC"
    ours = [{"question_id": str(i), "prompt": f"q{i}", "text": f"The answer is {letters[i % 3]}."} for i in range(4)]
    ours[1]["text"] = "The answer is C."  # wrong
    gpt4 = {"0": "The answer is B.", "1": "I do not know.", "2": "The answer is C.", "3": "The answer is A."}
    (tmp_path / "ours.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ours))
    (tmp_path / "gpt4.json").write_text(json.dumps({"outputs": gpt4}))
    requery = [{"question_id": "0", "text": "The answer is A."}, {"question_id": "1", "text": "The answer is B."}]
    (tmp_path / "requery.jsonl").write_text("".join(json.dumps(row) + "\n" for row in requery))
    return tmp_path


def test_scienceqa_gpt4_scorers_count_as_upstream(scienceqa, capsys):
    base = ["--base-dir", str(scienceqa), "--gpt4-result", str(scienceqa / "gpt4.json"),
            "--our-result", str(scienceqa / "ours.jsonl")]  # fmt: skip
    results = eval_science_qa_gpt4.main(base)
    # GPT-4: 0 wrong (B vs A), 1 none -> ours (C, wrong), 2 right, 3 right; upper bound: 0 (ours right), 2, 3.
    assert (results["correct"], results["gpt4_failed"], results["correct_upperbound"], results["total"]) == (2, 1, 3, 4)
    assert "Total: 4, Correct: 2, Accuracy: 50.00%" in capsys.readouterr().out
    output = scienceqa / "result.json"
    requeried = eval_science_qa_gpt4_requery.main(
        [*base, "--requery-result", str(scienceqa / "requery.jsonl"), "--output-result", str(output)]
    )
    # Requery answers 0 (A, right) and 1 (B, right); 2 and 3 keep ours (right).
    assert (requeried["requery_correct"], requeried["our_correct"], requeried["missing_requery"]) == (4, 3, 2)
    written = json.loads(output.read_text())
    assert (written["acc"], written["correct"], written["count"]) == (100.0, 4, 4)
    assert written["results"] == {"0": 0, "1": 1, "2": 2, "3": 0}


@pytest.mark.parametrize(
    ("first", "second", "distance"),
    [("kitten", "sitting", 3), ("", "abc", 3), ("flaw", "lawn", 2), ("same", "same", 0)],
)
def test_edit_distance(first, second, distance):
    assert edit_distance(first, second) == distance == edit_distance(second, first)


def test_stvqa_scores():
    predictions = [
        {"pred_answer": "The Cat", "gt_answers": ["cat", "a cat"]},  # normalised: "cat" matches
        {"pred_answer": "kitten", "gt_answers": ["sitting"]},
        {"pred_answer": "abc", "gt_answers": ["xyz"]},
    ]
    assert STVQAAccuracyEvaluator().eval_pred_list(predictions) == pytest.approx(1 / 3)
    # ANLS: "the cat" vs "a cat": 1 - 3/7; kitten/sitting: 1 - 3/7; abc/xyz: 0 (below 0.5).
    assert STVQAANLSEvaluator().eval_pred_list(predictions) == pytest.approx((4 / 7 + 4 / 7 + 0) / 3)


def test_textcaps_bleu_needs_the_coco_caption_tools():
    """pycocoevalcap (and Java) are not dependencies; without them the error says what to install."""
    try:
        import pycocoevalcap  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ModuleNotFoundError, match="pip install pycocoevalcap"):
            TextCapsBleu4Evaluator()
    else:
        pytest.skip("pycocoevalcap is installed here")


def test_webpage_helpers(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question_id": 2, "text": "b"}\n\n{"question_id": 1, "text": "a"}\n')
    assert list(read_jsonl(str(rows), key="question_id")) == [1, 2] and len(read_jsonl(str(rows))) == 2
    assert trim_hanging_lines("  x\ny\nz ", 1) == "y\nz"
    assert clean_review("8 7\nAssistant 1 is better than Assistant 2.") == (
        "**Assistant 1** is better than **Assistant 2**."
    )


def test_model_vqa_loader_dataset_and_loader_as_upstream_calls_them(tiny, tmp_path):
    from PIL import Image

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.eval.model_vqa_loader import CustomDataset, create_data_loader
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(tiny.llava, None, None, device="cpu")
    record = next(r for r in json.loads(Path(tiny.data).read_text()) if "image" in r)
    questions = [{"question_id": 7, "image": record["image"], "text": "What color?"}]
    dataset = CustomDataset(questions, str(tiny.image_folder), tokenizer, processor, model.config)
    input_ids, image, size = dataset[0]
    assert len(dataset) == 1 and int((input_ids == IMAGE_TOKEN_INDEX).sum()) == 1
    assert image.shape == (3, 32, 32) and size == Image.open(tiny.image_folder / record["image"]).size
    ids, images, sizes = next(iter(create_data_loader(questions, str(tiny.image_folder), tokenizer, processor,
                                                      model.config, num_workers=0)))  # fmt: skip
    assert ids.shape == (1, len(input_ids)) and images.shape == (1, 3, 32, 32) and sizes == (size,)
    with pytest.raises(ValueError, match="batch_size must be 1"):
        create_data_loader(questions, str(tiny.image_folder), tokenizer, processor, model.config, batch_size=2)
