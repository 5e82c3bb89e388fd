"""Shared pieces of the benchmarks: sizes, timing, result rows and the table."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

SIZES = ("tiny", "quick", "full")


@dataclass
class Row:
    """One measurement against a baseline measured in the same run. `ratio` = measured / baseline."""

    name: str
    measured: float
    baseline: float
    unit: str
    target: str  # e.g. "<= 1.5x"
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else float("nan")

    @property
    def passed(self) -> bool | None:
        if not self.target:
            return None
        op, value = self.target.split()
        bound = float(value.rstrip("x"))
        return self.ratio <= bound if op == "<=" else self.ratio >= bound

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 4), "passed": self.passed}


def skipped(name: str, reason: str) -> Row:
    return Row(name, float("nan"), float("nan"), "", "", note=f"skipped: {reason}")


def seconds(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn` over `repeat` runs after `warmup` runs (synchronising CUDA when used)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_seconds(first: Callable[[], object], second: Callable[[], object], repeat: int = 5) -> tuple[float, float]:
    """Best wall times of two functions measured alternately: drift on a busy machine hits both alike, and the
    minimum is the least disturbed run (interference only ever adds time)."""
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            gc.collect()
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


@dataclass(frozen=True)
class PairedTimes:
    """CPU seconds of two functions, one entry per alternating round (see `paired_cpu_times`)."""

    first: tuple[float, ...]
    second: tuple[float, ...]

    @property
    def best(self) -> tuple[float, float]:
        """Each function's least disturbed round (interference only ever adds time): what a row reports."""
        return min(self.first), min(self.second)

    def spread(self, per_second: bool = False) -> str:
        """The range of the per-round ratios, first over second (``per_second``: second over first, for rows of a
        rate such as answers/s), for the row's note: how far one round's ratio strays from the row's."""
        ratios = sorted(b / a if per_second else a / b for a, b in zip(self.first, self.second))
        return f"rounds {ratios[0]:.3f}-{ratios[-1]:.3f}x over {len(ratios)}"


def paired_cpu_times(first: Callable[[], object], second: Callable[[], object], repeat: int = 3) -> PairedTimes:
    """CPU seconds on one thread of two functions measured alternately, after one warm-up each: on this shared
    2-core machine wall time swung 2x between identical steps, while CPU time counts the work each does
    (`bench_packing` measures the same way); alternating makes what drift remains (cache, frequency) hit both."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first(), second()  # warm-up
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeat):
            for fn, bucket in ((first, times[0]), (second, times[1])):
                gc.collect()
                start = time.process_time()
                fn()
                bucket.append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    return PairedTimes(tuple(times[0]), tuple(times[1]))


def paired_cpu_seconds(
    first: Callable[[], object], second: Callable[[], object], repeat: int = 3
) -> tuple[float, float]:
    """`paired_cpu_times`' best round of each function."""
    return paired_cpu_times(first, second, repeat).best


NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""CPU flags (/proc/cpuinfo) of bf16 arithmetic in hardware; without them torch emulates bf16 in software."""


def native_cpu_dtype(flags: frozenset[str]) -> tuple[torch.dtype, str]:
    """The training dtype a CPU with these feature flags runs natively, and the reason to print beside a row.

    bf16 when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), fp32 otherwise: emulated bf16 made the memory
    rows of `--quick` take over 12 minutes on such a CPU. A ratio of peaks measured both in fp32 says the same as
    in bf16 (base weights 4 bytes a parameter instead of 2 on both sides of it).
    """
    if flags & NATIVE_BF16_FLAGS:
        return torch.bfloat16, ""
    return torch.float32, "no native bf16 on this CPU"


def dtype_label(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}[dtype]


def machine() -> str:
    from llava.utils import cpu_description

    cpu, _ = cpu_description()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, python {platform.python_version()}"


def format_table(rows: list[Row]) -> str:
    header = ("benchmark", "measured", "baseline", "ratio", "target", "result")
    lines = []
    for row in rows:
        if row.note.startswith("skipped"):
            lines.append((row.name, "-", "-", "-", "-", row.note))
            continue
        result = {True: "pass", False: "MISS", None: ""}[row.passed]
        lines.append(
            (row.name, f"{row.measured:.4g} {row.unit}", f"{row.baseline:.4g} {row.unit}", f"{row.ratio:.2f}x",
             row.target, result + (f" ({row.note})" if row.note else ""))
        )  # fmt: skip
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    render = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(render, lines)])
