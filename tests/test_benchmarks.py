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
    "image transform",
    "splice (cpu",
    "LoRA step",
    "packing: LoRA step",
    "ZeRO-3 gather,",
    "ZeRO-3 gather + write",
    "peak memory",
    "GPU",
    "eval answers/s, batch 8 vs 1",
    "startup: read + pre-check + dataset",
    "startup per rank",
    "startup: dataloader worker private memory",
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
        "data", "image", "splice", "step", "packing", "zero3_save", "memory", "gpu", "eval", "startup",
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
    assert len(rows) == 3 and all(row.measured > 0 and row.baseline > 0 for row in rows)
    assert rows[0].name.endswith("non-padding tokens/s, packed vs padded")
    assert "padded: MFU vs bf16 peak" in rows[1].name and "packed: MFU vs bf16 peak" in rows[2].name
    packed, padded = (tuple(map(int, shape)) for shape in re.findall(r"\((\d+), (\d+)\)", rows[0].note))
    assert padded[0] == 4 and packed[0] < 4  # 4 samples: 4 padded rows, fewer packed ones
