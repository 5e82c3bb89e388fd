"""The README's first command: `make demo` runs `python -m llava.demo` - here at a smaller size, end to end."""

from __future__ import annotations

import pytest
from PIL import Image

from llava import demo
from train_helpers import LORA_FILES

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def test_demo_trains_under_zero3_loads_answers_and_plots(tmp_path, capsys):
    result = demo.run(tmp_path, epochs=1)
    out = capsys.readouterr().out
    run_dir = result["run_dir"]
    # The LoRA output set, at the top and in the checkpoint DeepSpeed wrote at step 20 of 30.
    assert LORA_FILES <= set(result["files"])
    assert {f"checkpoint-20/{name}" for name in LORA_FILES} <= set(result["files"])
    assert "checkpoint-20/global_step20/zero_pp_rank_1_mp_rank_00_optim_states.pt" in result["files"]
    assert len(result["losses"]) == 240 // 8 and result["losses"][-1] < result["losses"][0]
    assert result["answer"] and f"ASSISTANT: {result['answer']}" in out
    assert 0 <= result["colors_right"] <= 8 and "unseen squares" in out
    for name, size in result["files"].items():
        assert f"{size:>12,d}  {name}" in out
    with Image.open(result["curve"]) as curve:
        assert curve.size == (640, 360) and curve.format == "PNG"
    assert (run_dir / "adapter_model.bin").stat().st_size == result["files"]["adapter_model.bin"]
