"""Saving under 2-process ZeRO-3: gather + write the LoRA + projector state of LLaVA-7B-shaped layers (hidden 4096,
intermediate 11008, LoRA r 128 on every linear: 2-5.6 MB a tensor), our gather (`llava.distributed.zero3`) against
upstream's (one `GatheredParameters` context per tensor, then a CPU clone of it). The note gives our gather with one
context per tensor too (`bucket_bytes=0`), which tells batching's share from that of the copy we skip."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import Row

SIZES = {"tiny": dict(layers=2, scale=32, repeat=1), "quick": dict(layers=4, scale=1, repeat=5),
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
    ours, upstream, ours_per_tensor = result["ours"], result["upstream"], result["ours_per_tensor"]
    per_layer = lambda seconds: seconds / layers * 1e3  # noqa: E731
    note = (f"{result['tensors']} tensors, {result['bytes'] / 2**20:.0f} MiB incl. projector; ours one context per "
            f"tensor {per_layer(ours_per_tensor['gather']):.4g} ms")  # fmt: skip
    return [
        Row(f"ZeRO-3 gather, 2 procs, per {shape} layer: upstream per-tensor vs ours", per_layer(upstream["gather"]),
            per_layer(ours["gather"]), "ms", ">= 5x", note=note),
        Row(f"ZeRO-3 gather + write, per {shape} layer: upstream per-tensor vs ours", per_layer(upstream["total"]),
            per_layer(ours["total"]), "ms", "", note="the write is the same for both"),
    ]  # fmt: skip
