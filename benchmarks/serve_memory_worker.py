"""Worker for bench_serve.py: load what ``llava.serve.model_worker`` loads for ``--model-path RUN...`` in a fresh
process and print "<shared> <loaded> <parameters>": bytes before and after loading (CPU: anonymous resident
memory; GPU: ``memory_allocated``, shared 0) and the parameter count.

``python serve_memory_worker.py bfloat16|float32 BASE RUN [RUN ...]``: one RUN is loaded as the worker loads a
single run (``load_pretrained_model``, the adapter merged), several as it loads many (``load_lora_runs``). On CPU
every tensor is first moved out of the checkpoint's file mapping (file pages are not the worker's own memory on CPU,
and are on a GPU)."""

from __future__ import annotations

import gc
import sys

import torch
from memory_worker import _malloc_trim, _own_memory, _status_bytes

from llava.distributed.state import exit_process


def main() -> None:
    import peft  # noqa: F401  (imported by both variants: shared)

    from llava.model.builder import load_pretrained_model
    from llava.model.lora_runs import load_lora_runs

    dtype, base, runs = getattr(torch, sys.argv[1]), sys.argv[2], sys.argv[3:]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shared = 0 if cuda else _status_bytes("RssAnon")
    if len(runs) == 1:
        _, model, _, _ = load_pretrained_model(runs[0], base, device=device, dtype=dtype)
    else:
        model = load_lora_runs(runs, base, device=device, dtype=dtype).model
    if not cuda:
        _own_memory(model)
    gc.collect()
    if cuda:
        loaded = torch.cuda.memory_allocated()
    else:
        _malloc_trim()
        loaded = _status_bytes("RssAnon")
    print(shared, loaded, sum(parameter.numel() for parameter in model.parameters()))


if __name__ == "__main__":
    main()
    exit_process()
