"""Evaluation during training (beyond upstream, which hard-codes eval_dataset=None: upstream #1017, #1536, #1717):
--eval_data_path or a seeded --eval_split_ratio hold-out, eval_loss logged at each evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import multimodal_flags

from llava.train.arguments import ArgumentsError, parse_args
from llava.train.train import train

EVAL_STEPS = 3
MAX_STEPS = 12
GENERATION_SAMPLES = 3


@pytest.fixture
def base_argv(tiny, tmp_path):
    return multimodal_flags(tiny, tmp_path / "out")


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--eval_strategy", "steps"], "--eval_strategy steps needs evaluation data: pass --eval_data_path"),
        (["--evaluation_strategy", "epoch"], "--eval_strategy epoch needs evaluation data"),
        (["--eval_split_ratio", "1.0"], "--eval_split_ratio must be in [0, 1), got 1.0."),
        (["--eval_data_path", "/nonexistent/eval.json"], "--eval_data_path '/nonexistent/eval.json' does not exist"),
    ],
)
def test_bad_evaluation_flags(base_argv, extra, expected):
    with pytest.raises(ArgumentsError) as caught:
        parse_args(base_argv + extra)
    assert expected in str(caught.value)


def test_eval_data_path_and_split_ratio_exclude_each_other(base_argv, tiny):
    with pytest.raises(ArgumentsError, match="--eval_data_path and --eval_split_ratio both choose"):
        parse_args(base_argv + ["--eval_data_path", str(tiny.data), "--eval_split_ratio", "0.2"])


def test_eval_data_is_checked_like_training_data_before_the_model_loads(base_argv, tiny, tmp_path, monkeypatch):
    records = json.loads(Path(tiny.data).read_text())[:4]
    records[2]["image"] = "missing/picture.png"
    eval_file = tmp_path / "eval.json"
    eval_file.write_text(json.dumps(records))

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the evaluation data was checked")

    monkeypatch.setattr("llava.train.train.load_model", must_not_load)
    with pytest.raises(ValueError) as caught:
        train(argv=base_argv + ["--eval_data_path", str(eval_file), "--eval_strategy", "steps"])
    assert str(eval_file) in str(caught.value) and records[2]["id"] in str(caught.value)


@pytest.mark.slow
def test_split_run_logs_eval_loss_at_each_evaluation_and_it_drops(tiny, tmp_path):
    """A LoRA run with a seeded 25% hold-out: eval_loss at every eval step, lower at the end than at the start, and
    the first evaluation samples answered at each evaluation."""
    argv = multimodal_flags(
        tiny, tmp_path / "run", eval_split_ratio=0.25, eval_strategy="steps", eval_steps=EVAL_STEPS,
        per_device_eval_batch_size=4, max_steps=MAX_STEPS, save_steps=MAX_STEPS, learning_rate=5e-3,
        mm_projector_lr=5e-3, eval_generation_samples=GENERATION_SAMPLES, eval_generation_max_new_tokens=6,
        report_to="tensorboard",
    )  # fmt: skip
    trainer = train(argv=argv)
    all_ids = [record["id"] for record in json.loads(Path(tiny.data).read_text())]
    train_ids = [record["id"] for record in trainer.train_dataset.list_data_dict]
    eval_ids = [record["id"] for record in trainer.eval_dataset.list_data_dict]
    assert len(eval_ids) == round(0.25 * len(all_ids)) and not set(eval_ids) & set(train_ids)
    assert sorted(train_ids + eval_ids) == sorted(all_ids)
    assert eval_ids == [i for i in all_ids if i in set(eval_ids)]  # the file's order

    evaluations = {entry["step"]: entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry}
    assert sorted(evaluations) == list(range(EVAL_STEPS, MAX_STEPS + 1, EVAL_STEPS))
    assert evaluations[MAX_STEPS] < evaluations[EVAL_STEPS]

    lines = [json.loads(line) for line in (tmp_path / "run" / "eval_generations.jsonl").read_text().splitlines()]
    assert [(line["step"], line["id"]) for line in lines] == [
        (step, sample_id) for step in sorted(evaluations) for sample_id in eval_ids[:GENERATION_SAMPLES]
    ]
    records = {record["id"]: record for record in trainer.eval_dataset.list_data_dict}
    for line in lines:
        assert list(line) == ["step", "id", "prompt", "reference", "answer"] and isinstance(line["answer"], str)
        record = records[line["id"]]
        question = record["conversations"][0]["value"].replace("<image>", "").strip()
        assert line["reference"] == record["conversations"][1]["value"]
        assert line["prompt"].startswith("A chat between a curious user") and question in line["prompt"]
        assert line["prompt"].endswith("ASSISTANT:") and ("<image>" in line["prompt"]) == ("image" in record)

    # TensorBoard (the train extra installs it) has the losses and the answers
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (log_dir,) = (tmp_path / "run" / "runs").iterdir()  # transformers' default: output_dir/runs/<date>_<host>
    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    assert [event.step for event in events.Scalars("eval/loss")] == sorted(evaluations)
    assert [event.value for event in events.Scalars("eval/loss")] == pytest.approx(list(evaluations.values()))
    assert "train/loss" in events.Tags()["scalars"]
    texts = events.Tensors("eval_generations/text_summary")
    assert [event.step for event in texts] == sorted(evaluations)
    assert eval_ids[0] in texts[0].tensor_proto.string_val[0].decode()

    # the same seed holds out the same samples
    from llava.train.train import _split_for_evaluation

    model_args, data_args, training_args = parse_args(argv)
    records = json.loads(Path(tiny.data).read_text())
    _, again = _split_for_evaluation(records, model_args, data_args, training_args)
    assert [record["id"] for record in again] == eval_ids


@pytest.mark.slow
def test_load_best_model_at_end_restores_the_whole_lora_run(tiny, tmp_path):
    """The best checkpoint's adapter AND projector end up in the trainer's model and in output_dir. The test makes
    the first evaluation the best (greater_is_better with eval_loss, which drops), so best != last."""
    import torch
    from train_helpers import checkpoints, load_bin

    output_dir = tmp_path / "run"
    argv = multimodal_flags(
        tiny, output_dir, eval_split_ratio=0.25, eval_strategy="steps", eval_steps=2, save_steps=2, max_steps=6,
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=True,
        learning_rate=5e-3, mm_projector_lr=5e-3, save_total_limit=2,
    )  # fmt: skip
    trainer = train(argv=argv)
    losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert losses[0] == max(losses) and trainer.state.best_model_checkpoint == str(output_dir / "checkpoint-2")
    # save_total_limit keeps the best checkpoint besides the last, and the saved state names it where it is
    assert checkpoints(output_dir) == ["checkpoint-2", "checkpoint-6"]
    state = json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(output_dir / "checkpoint-2")
    for name in ("adapter_model.bin", "non_lora_trainables.bin"):
        final, best = load_bin(output_dir / name), load_bin(output_dir / "checkpoint-2" / name)
        last = load_bin(output_dir / "checkpoint-6" / name)
        assert set(final) == set(best) and all(torch.equal(final[key], best[key]) for key in final), name
        assert any(not torch.equal(final[key], last[key]) for key in final), name
