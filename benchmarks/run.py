"""Run every benchmark and print one table: each figure a ratio against a baseline measured in the same run.

python benchmarks/run.py --quick          # CPU-sized, under 10 minutes on 2 cores
python benchmarks/run.py --quick --json   # the same rows as JSON
python benchmarks/run.py --tiny           # seconds; what the smoke test runs
python benchmarks/run.py --only splice    # one benchmark (data, image, splice, step, packing, zero3_save, memory, loss, gpu, eval, startup, export, serve)
python benchmarks/run.py --gpu            # on a GPU: the 7B-shaped LLaVA LoRA step alone, 32 layers (< 4 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # thread-pool overhead would blur per-sample timings

import bench_data  # noqa: E402
import bench_eval  # noqa: E402
import bench_export  # noqa: E402
import bench_gpu  # noqa: E402
import bench_image  # noqa: E402
import bench_loss  # noqa: E402
import bench_memory  # noqa: E402
import bench_packing  # noqa: E402
import bench_serve  # noqa: E402
import bench_splice  # noqa: E402
import bench_startup  # noqa: E402
import bench_step  # noqa: E402
import bench_zero3_save  # noqa: E402
from common import format_table, machine  # noqa: E402

BENCHMARKS = {
    "data": lambda size, tiny: bench_data.run(size, tiny),
    "image": lambda size, tiny: bench_image.run(size),
    "splice": lambda size, tiny: bench_splice.run(size),
    "step": lambda size, tiny: bench_step.run(size),
    "packing": lambda size, tiny: bench_packing.run(size),
    "zero3_save": lambda size, tiny: bench_zero3_save.run(size),
    "memory": lambda size, tiny: bench_memory.run(size),
    "loss": lambda size, tiny: bench_loss.run(size),
    "gpu": lambda size, tiny: bench_gpu.run(size),
    "eval": lambda size, tiny: bench_eval.run(size, tiny),
    "startup": lambda size, tiny: bench_startup.run(size, tiny),
    "export": lambda size, tiny: bench_export.run(size, tiny),
    "serve": lambda size, tiny: bench_serve.run(size, tiny),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="CPU-sized run (default)")
    group.add_argument("--tiny", action="store_true", help="tiny sizes, for the smoke test")
    group.add_argument("--full", action="store_true", help="larger sizes (GPU machines)")
    group.add_argument("--gpu", action="store_true", help="only the 7B-shaped GPU step, full size")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run only these")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "full" if args.full or args.gpu else "quick"
    if args.gpu:
        args.only = ["gpu"]
    output = sys.stdout
    if args.json:
        # Libraries log to stdout (DeepSpeed's accelerator notice, progress bars): keep it for the JSON alone.
        sys.stdout.flush()
        output = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)

    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    logging.getLogger().setLevel(logging.ERROR)
    from llava.testing import build_all

    rows, timings = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_all(Path(tmp) / "tiny")
        for name in args.only or list(BENCHMARKS):
            started = time.monotonic()
            if not args.json:
                print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.extend(BENCHMARKS[name](size, tiny))
            timings[name] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps({"size": size, "machine": machine(), "seconds": timings,
                          "rows": [row.as_dict() for row in rows]}, indent=1), file=output, flush=True)  # fmt: skip
    else:
        print(f"machine: {machine()}\nsize: {size}; seconds per benchmark: {timings}\n")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
