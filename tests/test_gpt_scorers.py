"""Upstream's GPT-based scorers on today's openai client, against a fake OpenAI-compatible server on loopback.

The key comes from ``OPENAI_API_KEY``, the endpoint from ``--api-base`` or ``OPENAI_BASE_URL``; requests carry
upstream's model, system prompt, temperature and prompt layout; review lines and answer files are upstream's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from llava.eval import (
    eval_gpt_review,
    eval_gpt_review_bench,
    eval_gpt_review_visual,
    qa_baseline_gpt35,
    summarize_gpt_review,
)
from llava.eval.gpt import REVIEWER_SYSTEM_PROMPT, MissingAPIKeyError

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key"
RULES = {
    "default": {"role": "Assistant", "prompt": "Rate both answers from 1 to 10."},
    "conv": {"role": "Assistant", "prompt": "Rate the conversation answers."},
    "llava_bench_conv": {"role": "Assistant", "prompt": "Rate with the caption in mind."},
}


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def files(tmp_path):
    questions = [
        {"question_id": 1, "image": "a.jpg", "text": "What is red?", "category": "conv"},
        {"question_id": 2, "image": "b.jpg", "text": "How many cats?", "category": "conv"},
    ]
    answers = {
        name: [{"question_id": q["question_id"], "answer_id": f"{name}-{q['question_id']}", "text": f"{name} says"}
               for q in questions]
        for name in ("gpt4", "ours")
    }  # fmt: skip
    contexts = [
        {"image": "a.jpg", "caption": ["A red ball.", "On grass."], "captions": ["A red ball."],
         "instances": [{"category": "ball", "bbox": [0.1, 0.2, 0.3, 0.4]}]},
        {"image": "b.jpg", "caption": "Two cats.", "captions": ["Two cats."],
         "instances": [{"category": "cat", "bbox": [0, 0, 1, 1]}]},
    ]  # fmt: skip
    (tmp_path / "rule.json").write_text(json.dumps(RULES))
    return dict(
        question=_write_jsonl(tmp_path / "questions.jsonl", questions),
        context=_write_jsonl(tmp_path / "context.jsonl", contexts),
        answers=[_write_jsonl(tmp_path / f"{name}.jsonl", rows) for name, rows in answers.items()],
        rule=str(tmp_path / "rule.json"),
        output=str(tmp_path / "review.jsonl"),
    )


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)


def _review_argv(files, server, *extra) -> list[str]:
    return ["--question", files["question"], "--answer-list", *files["answers"], "--rule", files["rule"],
            "--output", files["output"], "--api-base", server.base_url, "--request-interval", "0", *extra]  # fmt: skip


def test_llava_bench_review_asks_upstreams_prompt_and_writes_its_lines(files, key):
    with FakeOpenAI(lambda body: "8 6\nBoth answer; the first better.") as server:
        lines = eval_gpt_review_bench.main(_review_argv(files, server, "--context", files["context"]))
    assert [line["tuple"] for line in lines] == [[8.0, 6.0], [8.0, 6.0]]
    written = [json.loads(line) for line in Path(files["output"]).read_text().splitlines()]
    assert written == lines and list(written[0]) == [
        "id", "question_id", "answer1_id", "answer2_id", "category", "content", "tuple"
    ]  # fmt: skip
    assert written[0]["category"] == "llava_bench_conv" and written[0]["answer1_id"] == "gpt4-1"
    request = server.requests[0]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert (request.body["model"], request.body["temperature"], request.body["max_tokens"]) == ("gpt-4-0314", 0.2, 1024)
    assert request.body["messages"][0] == {"role": "system", "content": REVIEWER_SYSTEM_PROMPT}
    assert request.body["messages"][1]["content"] == (
        "[Context]\nA red ball.\nOn grass.\n\n[Question]\nWhat is red?\n\n[Assistant 1]\ngpt4 says\n\n"
        "[End of Assistant 1]\n\n[Assistant 2]\nours says\n\n[End of Assistant 2]\n\n"
        "[System]\nRate with the caption in mind.\n\n"
    )
    # A second run continues the file instead of asking again (upstream's resume).
    with FakeOpenAI(lambda body: "1 1") as again:
        eval_gpt_review_bench.main(_review_argv(files, again, "--context", files["context"]))
    assert again.requests == [] and len(Path(files["output"]).read_text().splitlines()) == 2


def test_visual_review_puts_captions_and_boxes_in_the_context(files, key):
    with FakeOpenAI(lambda body: "7,9") as server:
        lines = eval_gpt_review_visual.main(_review_argv(files, server, "--context", files["context"], "--model", "m"))
    assert lines[0]["tuple"] == [7.0, 9.0] and lines[0]["category"] == "conv"
    content = server.requests[0].body["messages"][1]["content"]
    assert content.startswith("[Context]\nA red ball.\n\nball: [0.1, 0.2, 0.3, 0.4]\n\n[Question]\nWhat is red?")
    assert server.requests[0].body["model"] == "m"


def test_text_review_then_summary(files, key, capsys, monkeypatch):
    replies = iter(["6 9\nok", "not a score"])
    with FakeOpenAI(lambda body: next(replies)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)  # the endpoint from the environment
        argv = _review_argv(files, server, "--workers", "1")
        lines = eval_gpt_review.main([arg for arg in argv if arg not in ("--api-base", server.base_url)])
    assert [line["tuple"] for line in lines] == [[6.0, 9.0], [-1, -1]]
    assert (
        server.requests[0].body["model"] == "gpt-4"
        and "Rate the conversation answers." in (server.requests[0].body["messages"][1]["content"])
    )
    capsys.readouterr()
    summary = summarize_gpt_review.main(["-f", files["output"]])
    # Upstream's numbers: second / first * 100, then both means * 10 (here over [6, 9] and [-1, -1]).
    assert summary["review"]["all"] == [160.0, 25.0, 40.0] and summary["review"]["conv"] == [160.0, 25.0, 40.0]
    assert "all 160.0 25.0 40.0" in capsys.readouterr().out


def test_gpt35_baseline_retries_a_rate_limit_and_marks_a_failed_question(tmp_path, key):
    questions = _write_jsonl(tmp_path / "q.jsonl", [{"question_id": 2, "text": "B?"}, {"question_id": 1, "text": "A?"}])
    output = tmp_path / "answers.jsonl"

    def reply(body):
        return "Answer to " + body["messages"][1]["content"]

    with FakeOpenAI(reply, failures=[429]) as server:
        answers = qa_baseline_gpt35.main(["-q", questions, "-o", str(output), "--api-base", server.base_url,
                                          "--workers", "1", "--max-tokens", "16"])  # fmt: skip
    assert [answer["question_id"] for answer in answers] == [1, 2]  # sorted, as upstream
    assert {answer["text"] for answer in answers} == {"Answer to A?", "Answer to B?"}
    assert (
        len(server.requests) == 3
        and server.requests[0].body["messages"][0]["content"] == "You are a helpful assistant."
    )
    text = output.read_text()
    assert not text.endswith("\n") and [json.loads(line) for line in text.split("\n")] == answers
    assert answers[0]["model_id"] == "gpt-3.5-turbo:20230327" and len(answers[0]["answer_id"]) == 22
    with FakeOpenAI(reply, failures=[400]) as server:
        failed = qa_baseline_gpt35.get_answer(3, "C?", 16, client=_client(server.base_url))
    assert failed["text"] == "#ERROR#" and len(server.requests) == 1  # a bad request is not retried


def _client(base_url):
    from llava.eval.gpt import make_client

    return make_client(base_url)


@pytest.mark.parametrize(
    "scorer", [eval_gpt_review, eval_gpt_review_bench, eval_gpt_review_visual, qa_baseline_gpt35],
    ids=lambda module: module.__name__.rpartition(".")[2],
)  # fmt: skip
def test_without_a_key_the_scorers_say_what_to_set(files, monkeypatch, scorer):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(lambda body: "1 1") as server:
        if scorer is qa_baseline_gpt35:
            argv = ["-q", files["question"], "-o", files["output"], "--api-base", server.base_url]
        else:
            argv = _review_argv(files, server, "--context", files["context"])
            if scorer is eval_gpt_review:
                argv = argv[:-2]
        with pytest.raises(MissingAPIKeyError, match="set OPENAI_API_KEY to your API key .* --api-base"):
            scorer.main(argv)
    assert server.requests == []


def test_llavabench_review_runs_as_upstreams_script_path(files, key):
    """`python llava/eval/eval_gpt_review_bench.py ...`, as scripts/v1_5/eval/llavabench.sh calls it."""
    with FakeOpenAI(lambda body: "5 5") as server:
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "llava" / "eval" / "eval_gpt_review_bench.py"),
             *_review_argv(files, server, "--context", files["context"])],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(server.requests) == 2 and len(Path(files["output"]).read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("review", "scores"),
    [("8 7\nBecause.", [8.0, 7.0]), ("8,7", [8.0, 7.0]), ("8.5 6", [8.5, 6.0]),
     ("8, 7", [-1, -1]),  # upstream's parser too: the comma becomes a second space
     ("Score: 8", [-1, -1]), ("", [-1, -1])],
)  # fmt: skip
def test_parse_score_reads_the_first_line_as_upstream(review, scores):
    assert eval_gpt_review.parse_score(review) == scores
