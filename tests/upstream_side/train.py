"""Upstream's own train.py (``llava.train.train.train()``) in one CPU process, then load.py's jobs on its output.

Request: {"argv": [...training flags...], "jobs": [load.py jobs], "inputs", "prompt"}.
Answer: {"versions", "files": files in output_dir, "results": load.py's results}.
"""

from __future__ import annotations

import os
import sys

from _common import main, upstream_llava, versions
from load import handle as run_jobs


def handle(request: dict) -> dict:
    upstream_llava()
    from llava.train import train as upstream_train

    sys.argv = ["train.py", *request["argv"]]
    upstream_train.train()  # the same function upstream's `python llava/train/train.py ...` runs
    output_dir = request["argv"][request["argv"].index("--output_dir") + 1]
    answer = run_jobs(request) if request.get("jobs") else {}
    return dict(versions=versions(), files=sorted(os.listdir(output_dir)), results=answer.get("results", {}))


if __name__ == "__main__":
    main(handle)
