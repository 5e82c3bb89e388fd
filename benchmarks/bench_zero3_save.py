"""Saving under 2-process ZeRO-3: gather + write the LoRA + projector state of LLaVA-7B-shaped layers (hidden 4096,
intermediate 11008, LoRA r 128 on every linear), our batched gather against one collective per tensor (upstream)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import Row

SIZES = {"tiny": dict(layers=2, scale=32, repeat=1), "quick": dict(layers=4, scale=1, repeat=3),
         "full": dict(layers=8, scale=1, repeat=5)}  # fmt: skip
WORKER = Path(__file__).resolve().parent / "zero3_save_worker.py"


def run(size: str) -> list[Row]:
    from llava.launch import launch_deepspeed

    config = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        launch_deepspeed(WORKER, [str(config["layers"]), str(config["scale"]), str(config["repeat"]), str(out)],
                         num_procs=2, timeout_s=1200)  # fmt: skip
        result = json.loads(out.read_text())
    layers = config["layers"]
    shape = "7B-shaped" if config["scale"] == 1 else f"7B/{config['scale']}-shaped"
    batched, per_tensor = result["batched"], result["per_tensor"]
    note = f"{result['tensors']} tensors, {result['bytes'] / 2**20:.0f} MiB incl. projector"
    return [
        Row(f"ZeRO-3 gather, 2 procs, per {shape} layer: per-tensor vs batched", per_tensor["gather"] / layers * 1e3,
            batched["gather"] / layers * 1e3, "ms", ">= 5x", note=note),
        Row(f"ZeRO-3 gather + write, per {shape} layer: per-tensor vs batched", per_tensor["total"] / layers * 1e3,
            batched["total"] / layers * 1e3, "ms", "", note="the write is the same for both"),
    ]  # fmt: skip
