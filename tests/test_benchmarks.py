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
    "splice (cpu",
    "LoRA step",
    "ZeRO-3 gather,",
    "ZeRO-3 gather + write",
    "peak memory",
    "GPU",
    "eval answers/s, batch 8 vs 1",
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
    assert set(report["seconds"]) == {"data", "splice", "step", "zero3_save", "memory", "gpu", "eval"}
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
