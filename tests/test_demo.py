"""The README's first command: `make demo` runs `python -m llava.demo` - here as it is, end to end, twice."""

from __future__ import annotations

import pytest
from PIL import Image
from train_helpers import LORA_FILES

from llava import demo
from llava.testing.data import COLORS

pytestmark = [pytest.mark.slow, pytest.mark.dist]

EPOCHS = 10  # `make demo`'s default: fewer epochs do not teach the tiny model colours yet
SAVE_STEPS = 100


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The demo run twice with the same seed, each in a fresh folder: (result, printed output) per run."""
    runs = []
    for index in range(2):
        output_root = tmp_path_factory.mktemp(f"demo{index}")
        runs.append((demo.run(output_root, epochs=EPOCHS, save_steps=SAVE_STEPS), output_root))
    return runs


def test_demo_trains_under_zero3_loads_answers_and_plots(two_runs, capsys):
    result, _ = two_runs[0]
    run_dir = result["run_dir"]
    # The LoRA output set, at the top and in every checkpoint DeepSpeed wrote (save_total_limit 2 keeps the last two).
    assert LORA_FILES <= set(result["files"])
    for checkpoint in ("checkpoint-200", "checkpoint-300"):
        assert {f"{checkpoint}/{name}" for name in LORA_FILES} <= set(result["files"])
        assert (
            f"{checkpoint}/global_step{checkpoint.split('-')[1]}/zero_pp_rank_1_mp_rank_00_optim_states.pt"
            in result["files"]
        )
    assert not any(name.startswith("checkpoint-100/") for name in result["files"])
    assert len(result["losses"]) == EPOCHS * 240 // 8
    assert sum(result["losses"][-20:]) / 20 < sum(result["losses"][:20]) / 20 / 3
    assert (run_dir / "adapter_model.bin").stat().st_size == result["files"]["adapter_model.bin"]
    with Image.open(result["curve"]) as curve:
        assert curve.size == (640, 360) and curve.format == "PNG"


def test_demo_learned_colours_it_never_saw(two_runs):
    """Clearly more unseen squares named with their colour than chance (1 in 8) would give: at least 3 of 8 (the
    default run names 7)."""
    result, _ = two_runs[0]
    assert result["colors_right"] >= 3, result["colors_right"]
    assert result["colors_right"] <= len(COLORS)


def test_demo_repeats_exactly(two_runs):
    (first, _), (second, _) = two_runs
    assert first["losses"] == second["losses"]
    assert (first["answer"], first["colors_right"]) == (second["answer"], second["colors_right"])


def test_demo_output_is_short(tmp_path, capsys):
    """The printed summary: one line per output file and per checkpoint, not one per checkpoint file."""
    files = [("adapter_model.bin", 10), ("checkpoint-2/adapter_model.bin", 10), ("checkpoint-2/global_step2/x.pt", 5)]
    assert demo.file_summary(files) == [
        "          10  adapter_model.bin",
        "          15  checkpoint-2/  (2 files: the same LLaVA files, plus what resuming needs)",
    ]


@pytest.mark.parametrize(("flag", "layer_class"), [("--load-4bit", "Linear4bit"), ("--load-8bit", "Linear8bitLt")])
def test_demo_run_evaluates_quantized_on_cpu(two_runs, tmp_path, monkeypatch, flag, layer_class):
    """The demo's run through `model_vqa_loader --load-4bit` / `--load-8bit` on the CPU: bitsandbytes' CPU 4-bit
    kernel packs weights in blocks of 32 rows, so every linear layer of the tiny LM is a multiple of 32 wide."""
    import json

    from llava.eval import common, model_vqa_loader

    result, output_root = two_runs[0]
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question_id": 0, "image": "demo_image.png", "text": demo.QUESTION}) + "\n")
    loaded = []
    load = common.load_model
    monkeypatch.setattr(common, "load_model", lambda args: loaded.append(load(args)) or loaded[-1])
    answers = tmp_path / "answers.jsonl"
    model_vqa_loader.main([
        "--model-path", str(result["run_dir"]), "--model-base", str(output_root / "tiny" / "vicuna-tiny"),
        "--question-file", str(questions), "--image-folder", str(output_root), "--answers-file", str(answers),
        "--temperature", "0", "--max_new_tokens", "16", "--device", "cpu", "--num-workers", "0", flag,
    ])  # fmt: skip
    assert layer_class in {type(module).__name__ for module in loaded[0].model.get_model().layers.modules()}
    (line,) = [json.loads(text) for text in answers.read_text().splitlines()]
    assert line["question_id"] == 0 and line["text"].strip()
