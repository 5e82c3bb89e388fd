"""Upstream's SGLang worker (``python -m llava.serve.sglang_worker``) needs the ``sglang`` package and a CUDA GPU,
which this package does not provide. It says so instead of failing with an ImportError; serve with
``python -m llava.serve.model_worker`` (same controller, same protocol), which runs on CPU and GPU.
"""

from __future__ import annotations

import importlib.util
import sys

MESSAGE = (
    "llava.serve.sglang_worker needs the sglang package and a CUDA GPU ({missing}). Install sglang on a GPU machine "
    "and run upstream's worker there, or serve with `python -m llava.serve.model_worker` (the same controller and "
    "protocol; it also serves several LoRA runs of one base)."
)


def missing_requirements() -> list[str]:
    missing = []
    if importlib.util.find_spec("sglang") is None:
        missing.append("sglang is not installed")
    import torch

    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    return missing


def main(argv: list[str] | None = None) -> None:
    missing = missing_requirements()
    if missing:
        sys.exit(MESSAGE.format(missing="; ".join(missing)))
    sys.exit(
        "sglang is installed, but this package does not carry upstream's SGLang worker; run upstream's "
        "llava/serve/sglang_worker.py against this controller, or serve with `python -m llava.serve.model_worker`"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
