"""Serving (``llava.serve.model_worker``): many LoRA runs on one base, and batched concurrent requests.

- memory: a worker holding 4 LoRA runs (adapter r 128 on every linear of the language model, as upstream's
  finetune_lora.sh, and each run's projector) over ONE copy of a 1B-shaped base, against 4 workers of one run each
  (each holds the base with its run merged in). Each worker is a fresh process; the figure is its own memory once
  loaded: on a GPU ``torch.cuda.memory_allocated``; on CPU the anonymous resident memory beyond the imports, after
  every tensor was moved out of the checkpoint's file mapping into memory of its own (as on a GPU). The 4 single-run
  workers are identical, so one is measured and counted 4 times. The weights are bf16 zeros, to keep 1B parameters
  cheap to build and load (the ratio depends neither on the values nor on the dtype: adapters are kept in the
  base's dtype).
- adapter switch: the latency of a request for another run than the request before it, against one for the same run
  (one request at a time, in-process: the worker's whole path from base64 image to streamed text, without HTTP;
  the best of 8 each at --quick).
- batching: answers/s of 8 requests in flight at once (they are generated as one batch) against the same 8 one at a
  time (32 new tokens each: a prefill gains nothing from batching), with the answers compared: for a worker of one
  run (its adapter merged, as upstream's worker loads it), and for a worker of two runs with the requests
  alternating between them (unmerged adapters, PEFT's adapter_names).

The speed rows count CPU time on one thread (``common.paired_cpu_times``, as bench_eval.py): on this shared
2-core machine wall time swung 2.0-3.85x between runs of the same code. In fp32 on one core a batch-8 decoding step
costs about 2.7x a batch-1 step (bench_eval.py), which caps the one-thread ratio near 3x. The speed rows use a randomly initialised LLaVA whose language model is big enough for a decoding step to read a
meaningful amount of weights (quick: hidden 768, 6 layers) behind the tiny CLIP tower, its output head scaled up so
that greedy choices are not near-ties (as bench_eval.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import Row, paired_cpu_times

HERE = Path(__file__).resolve().parent
WORKER = HERE / "serve_memory_worker.py"
MEMORY_SHAPES = {
    "tiny": dict(hidden=None, layers=None, intermediate=None, heads=None, lora_r=4),
    "quick": dict(hidden=2048, layers=18, intermediate=5632, heads=16, vocab=32000, lora_r=128),
    "full": dict(hidden=2048, layers=22, intermediate=5632, heads=32, vocab=32000, lora_r=128),
}
SPEED_SHAPES = {
    "tiny": dict(
        hidden=None, layers=None, intermediate=None, heads=None, lora_r=4, new_tokens=4, repeat=2, latency_repeat=2
    ),
    "quick": dict(
        hidden=768, layers=6, intermediate=2048, heads=12, lora_r=128, new_tokens=32, repeat=2, latency_repeat=4
    ),
    "full": dict(
        hidden=2048, layers=16, intermediate=5504, heads=16, lora_r=128, new_tokens=32, repeat=6, latency_repeat=8
    ),
}
NUM_ADAPTERS = 4
# The latency rows time short answers, many times: the figure is the best of them (interference only adds time).
LATENCY_NEW_TOKENS = 8
CONCURRENT = 8
LM_HEAD_SCALE = 10.0
LORA_B_STD = 0.01
QUESTION = "What is the shape in the image, and what color is it?"


def build_runs(
    tiny, shape: dict, root: Path, count: int, dtype: torch.dtype, random_weights: bool = True
) -> tuple[Path, list[Path]]:
    """A base language model (the tiny one, or one of ``shape``) and ``count`` LoRA runs over it, written as training
    writes them (``save_lora_outputs``). With ``random_weights`` the adapters and projectors are random and differ
    per run; without, every weight is zero (what memory measures does not depend on the values, and 1B random
    values take a while to draw)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llava.model import LlavaConfig, LlavaLlamaForCausalLM
    from llava.train.saving import save_lora_outputs

    tokenizer = AutoTokenizer.from_pretrained(tiny.llava)
    llava_config = LlavaConfig.from_pretrained(tiny.llava)
    if shape["hidden"] is not None:
        llava_config.update(dict(hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                                 intermediate_size=shape["intermediate"], num_attention_heads=shape["heads"],
                                 num_key_value_heads=shape["heads"], head_dim=shape["hidden"] // shape["heads"],
                                 vocab_size=shape.get("vocab", llava_config.vocab_size)))  # fmt: skip
    base_dir = root / "base"
    torch.manual_seed(0)
    llm_config = LlamaConfig(
        **{key: value for key, value in llava_config.to_dict().items() if not key.startswith("mm_")}
    )
    if random_weights:
        base = LlamaForCausalLM._from_config(llm_config, dtype=dtype)
        with torch.no_grad():
            base.lm_head.weight.mul_(LM_HEAD_SCALE)
    else:
        with torch.device("meta"):
            base = LlamaForCausalLM._from_config(llm_config, dtype=dtype)
        base.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in [*base.parameters(), *base.buffers()]:
                tensor.zero_()
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    del base
    model = LlavaLlamaForCausalLM.from_pretrained(base_dir, config=llava_config, dtype=dtype)
    lora = LoraConfig(r=shape["lora_r"], lora_alpha=2 * shape["lora_r"], lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj")  # fmt: skip
    model = get_peft_model(model, lora)
    runs = []
    for index in range(count):
        torch.manual_seed(100 + index)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if not random_weights:
                    pass
                elif "lora_B" in name:
                    parameter.normal_(std=LORA_B_STD)
                elif "lora_A" in name or "mm_projector" in name:
                    parameter.normal_(std=parameter.shape[-1] ** -0.5)
                if "mm_projector" in name:
                    parameter.requires_grad_(True)  # a trained projector: it goes into non_lora_trainables.bin
        run_dir = root / f"llava-v1.5-bench-lora-{index}"
        save_lora_outputs(model, str(run_dir), "none", True)
        tokenizer.save_pretrained(run_dir)
        runs.append(run_dir)
    return base_dir, runs


def memory_rows(size: str, tiny) -> list[Row]:
    shape = MEMORY_SHAPES[size]
    dtype = torch.bfloat16 if shape["hidden"] is not None else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        base, runs = build_runs(tiny, shape, Path(tmp), NUM_ADAPTERS, dtype, random_weights=False)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
               "MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**20)}  # fmt: skip

        def worker_bytes(paths: list[Path]) -> tuple[int, int]:
            command = [sys.executable, str(WORKER), str(dtype).removeprefix("torch."), str(base), *map(str, paths)]
            result = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=1800)
            shared, loaded, params = map(int, result.stdout.strip().splitlines()[-1].split())
            return loaded - shared, params

        many, many_params = worker_bytes(runs)
        one, one_params = worker_bytes(runs[:1])
    where = "memory_allocated" if torch.cuda.is_available() else "CPU anonymous RSS beyond the imports"
    return [
        Row(f"serve: worker memory, {NUM_ADAPTERS} LoRA runs (r {shape['lora_r']}) on one {_count(one_params)} "
            f"base vs {NUM_ADAPTERS} single-run workers", many / 2**30, NUM_ADAPTERS * one / 2**30, "GiB",
            "<= 0.35x", note=f"{where}; {_count(many_params)} vs {NUM_ADAPTERS}x{_count(one_params)} params"),
    ]  # fmt: skip


def _payloads(tiny, names: list[str], count: int, max_new_tokens: int) -> list[dict]:
    import base64
    import io
    import json

    from PIL import Image

    from llava.conversation import conv_templates

    records = [record for record in json.loads(Path(tiny.data).read_text()) if "image" in record]
    payloads = []
    for index in range(count):
        buffered = io.BytesIO()
        Image.open(Path(tiny.image_folder) / records[index % len(records)]["image"]).convert("RGB").save(
            buffered, format="PNG"
        )
        conv = conv_templates["llava_v1"].copy()
        conv.append_message(conv.roles[0], "<image>\n" + QUESTION + " Please answer." * (index % 3))
        conv.append_message(conv.roles[1], None)
        payloads.append({"model": names[index % len(names)], "prompt": conv.get_prompt(), "temperature": 0.0,
                         "max_new_tokens": max_new_tokens, "stop": conv.sep2,
                         "images": [base64.b64encode(buffered.getvalue()).decode()]})  # fmt: skip
    return payloads


def _answer(worker, payload: dict) -> str:
    from llava.serve.protocol import split_chunks

    chunks = list(split_chunks(worker.generate_stream_gate(payload)))
    if chunks[-1]["error_code"] != 0:
        raise RuntimeError(f"the worker answered an error: {chunks[-1]['text']}")
    return chunks[-1]["text"][len(payload["prompt"]) :]


def _throughput(worker, payloads: list[dict], repeat: int) -> tuple[float, float, int, str]:
    """(answers per CPU-second all at once, the same one at a time, how many answers are the same both ways, the
    rounds' spread): CPU time on one thread, the best of ``repeat`` alternating rounds of each."""
    answers: dict[str, list] = {}

    def one_at_a_time() -> None:
        answers["sequential"] = [_answer(worker, payload) for payload in payloads]

    def together() -> None:
        results: dict[int, str] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _answer(worker, payloads[i])))
                   for i in range(len(payloads))]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        answers["together"] = [results.get(i) for i in range(len(payloads))]

    times = paired_cpu_times(together, one_at_a_time, repeat=repeat)
    batched_s, sequential_s = times.best
    same = sum(a == b for a, b in zip(answers["sequential"], answers["together"]))
    return len(payloads) / batched_s, len(payloads) / sequential_s, same, times.spread(per_second=True)


def speed_rows(size: str, tiny) -> list[Row]:
    from llava.serve.model_worker import ModelWorker
    from llava.utils import one_torch_thread

    shape = SPEED_SHAPES[size]
    with tempfile.TemporaryDirectory() as tmp:
        base, runs = build_runs(tiny, shape, Path(tmp), 2, torch.float32)
        names = ["run-a", "run-b"]

        def worker(paths, model_names):
            return ModelWorker("", "", "bench", True, [str(path) for path in paths], str(base), model_names, False,
                               False, "cpu", limit_model_concurrency=CONCURRENT)  # fmt: skip

        alone = worker(runs[:1], names[:1])
        payloads = _payloads(tiny, names[:1], CONCURRENT, shape["new_tokens"])
        one_run = _throughput(alone, payloads, shape["repeat"])
        alone.engine = None
        del alone

        pair = worker(runs, names)
        payloads = _payloads(tiny, names, CONCURRENT, shape["new_tokens"])
        _answer(pair, payloads[0])
        same_run, switched = [], []
        with one_torch_thread():  # CPU time on one thread, as the batching rows
            for _ in range(shape["latency_repeat"]):
                for payload in payloads[:2]:
                    payload = dict(payload, max_new_tokens=LATENCY_NEW_TOKENS)
                    previous = dict(payload, max_new_tokens=1)
                    for timings, before in (
                        (same_run, previous),
                        (switched, {**previous, "model": _other(names, payload)}),
                    ):
                        _answer(pair, before)
                        start = time.process_time()
                        _answer(pair, payload)
                        timings.append(time.process_time() - start)
        two_runs = _throughput(pair, payloads, shape["repeat"])
    label = "tiny LLaVA" if shape["hidden"] is None else f"H{shape['hidden']}, {shape['layers']} layers"
    lora = f"LoRA r {shape['lora_r']}"
    return [
        Row(f"serve: latency of a request that switches LoRA run vs one that does not ({label}, {lora})",
            min(switched), min(same_run), "CPU-s", "<= 1.1x", note="in-process, one request at a time; 1 thread"),
        Row(f"serve answers/s, {CONCURRENT} concurrent requests vs one at a time, one run ({label})", one_run[0],
            one_run[1], "answers/CPU-s", ">= 3x",
            note=f"same greedy answers {one_run[2]}/{CONCURRENT}; 1 thread, CPU time; {one_run[3]}"),
        Row(f"serve answers/s, {CONCURRENT} concurrent requests vs one at a time, 2 runs in one worker ({label}, "
            f"{lora})", two_runs[0], two_runs[1], "answers/CPU-s", "",
            note=f"same greedy answers {two_runs[2]}/{CONCURRENT}; unmerged adapters; 1 thread, CPU time; "
                 f"{two_runs[3]}"),
    ]  # fmt: skip


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.2f}B" if parameters >= 1e8 else f"{parameters / 1e6:.1f}M"


def _other(names: list[str], payload: dict) -> str:
    return next(name for name in names if name != payload["model"])


def run(size: str, tiny) -> list[Row]:
    return memory_rows(size, tiny) + speed_rows(size, tiny)
