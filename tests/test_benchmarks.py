"""Smoke test: every benchmark runs at a tiny size and reports well-formed rows (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED = (
    "data:",
    "ours vs upstream's own",
    "image transform",
    "splice (cpu",
    "LoRA step",
    "packing: LoRA step",
    "ZeRO-3 gather,",
    "ZeRO-3 gather + write",
    "peak memory",
    "loss: peak memory of a LoRA step, chunked vs unchunked",
    "loss: LoRA step time, chunked vs unchunked",
    "GPU",
    "eval answers/s, batch 8 vs 1",
    "startup: read + pre-check + dataset",
    "startup per rank",
    "startup: dataloader worker private memory",
    "export peak memory",
    "serve: worker memory, 4 LoRA runs",
    "serve: latency of a request that switches LoRA run",
    "serve answers/s, 8 concurrent requests vs one at a time, one run",
    "serve answers/s, 8 concurrent requests vs one at a time, 2 runs in one worker",
)

pytestmark = [pytest.mark.slow, pytest.mark.bench]


def test_every_benchmark_runs_at_tiny_size():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "run.py"), "--tiny", "--json"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["size"] == "tiny" and "cores" in report["machine"]
    assert set(report["seconds"]) == {
        "data", "image", "splice", "step", "packing", "zero3_save", "memory", "loss", "gpu", "eval", "startup",
        "export", "serve",
    }  # fmt: skip
    names = [row["name"] for row in report["rows"]]
    for prefix in EXPECTED:
        assert any(prefix in name for name in names), prefix
    for row in report["rows"]:
        if row["note"].startswith("skipped"):
            continue
        assert row["measured"] > 0 and row["baseline"] > 0 and row["unit"], row
        assert math.isclose(row["ratio"], row["measured"] / row["baseline"], rel_tol=1e-3)
        assert row["passed"] in (True, False, None)


def test_table_output():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from common import Row, format_table, skipped

    table = format_table([Row("a", 3.0, 2.0, "ms", "<= 2x"), Row("b", 1.0, 4.0, "ms", ">= 5x"), skipped("c", "no GPU")])
    lines = table.splitlines()
    assert lines[0].startswith("| benchmark") and "| 1.50x | <= 2x  | pass" in lines[2]
    assert "| 0.25x | >= 5x  | MISS" in lines[3] and "skipped: no GPU" in lines[4]


def test_gpu_benchmark_dry_run_on_cpu():
    """`run.py --gpu`'s code at tiny shapes on CPU (fp32, SDPA): builds the model, both layouts, every row."""
    import re

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import bench_gpu

    rows = bench_gpu.run("tiny", dry_run=True)
    assert len(rows) == 4 and all(row.measured > 0 and row.baseline > 0 for row in rows)
    assert rows[0].name.endswith("non-padding tokens/s, packed vs padded")
    assert "padded: MFU vs bf16 peak" in rows[1].name and "packed: MFU vs bf16 peak" in rows[2].name
    assert rows[3].name.endswith("padded: loss step time, chunked vs unchunked")  # (peak memory: on a GPU only)
    packed, padded = (tuple(map(int, shape)) for shape in re.findall(r"\((\d+), (\d+)\)", rows[0].note))
    assert padded[0] == 4 and packed[0] < 4  # 4 samples: 4 padded rows, fewer packed ones


def test_first_batch_comparison_names_what_differs(tmp_path):
    """bench_data's check of its first batch against upstream's: equal ids and labels, or the samples that differ."""
    import torch

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import bench_data

    ours = {"input_ids": torch.tensor([[1, 5, 6], [1, 7, 0]]), "labels": torch.tensor([[-100, 5, 6], [-100, 7, -100]]),
            "images": torch.zeros(2, 3, 4, 4)}  # fmt: skip
    theirs = {key: value.clone() for key, value in ours.items()}
    theirs["images"][1, 0, 2, 2] += 2 / 255 / bench_data.CLIP_L_336["image_std"][0]
    torch.save(theirs, tmp_path / "same.pt")
    assert bench_data._compare_first(ours, tmp_path / "same.pt") == (
        "first batch: input_ids and labels identical, pixels within 2.00/255"
    )
    theirs["labels"][1, 1] = -100
    theirs["input_ids"] = theirs["input_ids"][:, :2]
    torch.save(theirs, tmp_path / "differs.pt")
    assert bench_data._compare_first(ours, tmp_path / "differs.pt") == (
        "first batch: input_ids shape (2, 3) vs (2, 2); labels MISMATCH in samples [1], pixels within 2.00/255"
    )


@pytest.mark.parametrize(
    "flags, dtype, reason",
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16", ""),
        ({"avx2", "amx_bf16", "amx_tile"}, "bfloat16", ""),
        ({"avx2", "avx512f", "avx512bw"}, "float32", "no native bf16 on this CPU"),
        (set(), "float32", "no native bf16 on this CPU"),
    ],
)
def test_memory_benchmark_dtype_is_native_to_the_cpu(flags, dtype, reason):
    import torch

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from common import dtype_label, native_cpu_dtype

    assert native_cpu_dtype(frozenset(flags)) == (getattr(torch, dtype), reason)
    assert dtype_label(getattr(torch, dtype)) == {"bfloat16": "bf16", "float32": "fp32"}[dtype]


def test_paired_times_report_the_best_round_of_each_and_the_spread():
    """The rows timed by `common.paired_cpu_times` report each side's best round, and the range of the per-round
    ratios in their note (first over second; for a rate, second over first)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from common import PairedTimes, paired_cpu_times
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    times = PairedTimes((2.2, 2.0, 3.0), (2.0, 1.0, 2.0))
    assert times.best == (2.0, 1.0)
    assert times.spread() == "rounds 1.100-2.000x over 3"
    assert times.spread(per_second=True) == "rounds 0.500-0.909x over 3"
    calls = []
    measured = paired_cpu_times(lambda: calls.append("a"), lambda: calls.append("b"), repeat=3)
    assert calls == ["a", "b"] * 4  # a warm-up of each, then alternating rounds
    assert len(measured.first) == len(measured.second) == 3
