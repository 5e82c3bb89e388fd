"""Upstream's loader, its merge and its readers of our files, over a list of jobs in one process.

Request: {"inputs": path of a torch file {"input_ids": (1, L), "images": (1, C, H, W)}, "prompt": str,
"jobs": [{"name", "kind", ...}]}. Kinds:
- "load": ``load_pretrained_model(model_path, model_base, get_model_name_from_path(model_path))`` on CPU (fp16, as
  upstream); writes the logits of the inputs to ``logits_out``; answers the model's class and dtype, the prompt's ids
  through its tokenizer, and the context length.
- "merge": what upstream's scripts/merge_lora_weights.py does (load with device_map="cpu", save_pretrained the
  model and the tokenizer into ``save_model_path``).
- "tokenizer": ids of ``texts`` through the slow and the fast tokenizer of ``path``.
- "config": what transformers 4.37 reads from ``path``/config.json.
- "adapter_config": what peft 0.10 reads from ``path``/adapter_config.json.
Answer: {"versions", "results": {name: {...} | {"error": str}}}.
"""

from __future__ import annotations

import traceback

from _common import main, upstream_llava, versions


def handle(request: dict) -> dict:
    upstream_llava()
    import torch

    inputs = torch.load(request["inputs"], weights_only=True) if request.get("inputs") else None
    results = {}
    for job in request["jobs"]:
        try:
            results[job["name"]] = JOBS[job["kind"]](job, inputs, request.get("prompt"))
        except Exception as error:  # reported for the test to show
            results[job["name"]] = dict(error=f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}")
    return dict(versions=versions(), results=results)


def _load(job, inputs, prompt):
    import torch

    from llava.mm_utils import get_model_name_from_path, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    path = job["model_path"]
    tokenizer, model, _, context_len = load_pretrained_model(
        path, job.get("model_base"), get_model_name_from_path(path), device_map="cpu", device="cpu"
    )
    with torch.no_grad():
        output = model(input_ids=inputs["input_ids"], images=inputs["images"].to(model.dtype))
    torch.save(output.logits[0].float(), job["logits_out"])
    return dict(
        model_class=type(model).__name__, dtype=str(model.dtype), context_len=context_len,
        prompt_ids=tokenizer_image_token(prompt, tokenizer), lora_left=any("lora" in n for n, _ in model.named_parameters()),
    )  # fmt: skip


def _merge(job, inputs, prompt):
    # The body of upstream's scripts/merge_lora_weights.py (the llava-torch package does not ship scripts/).
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    path = job["model_path"]
    tokenizer, model, _, _ = load_pretrained_model(
        path, job["model_base"], get_model_name_from_path(path), device_map="cpu"
    )
    model.save_pretrained(job["save_model_path"])
    tokenizer.save_pretrained(job["save_model_path"])
    return dict(saved=job["save_model_path"])


def _tokenizer(job, inputs, prompt):
    from transformers import AutoTokenizer

    answer = {}
    for fast in (False, True):
        tokenizer = AutoTokenizer.from_pretrained(job["path"], use_fast=fast)
        answer["fast" if fast else "slow"] = dict(
            tokenizer_class=type(tokenizer).__name__, ids=[tokenizer(text).input_ids for text in job["texts"]],
            legacy=getattr(tokenizer, "legacy", None),
        )  # fmt: skip
    return answer


def _config(job, inputs, prompt):
    from transformers import AutoConfig

    import llava.model  # noqa: F401  (registers llava_llama with AutoConfig)

    config = AutoConfig.from_pretrained(job["path"])
    return dict(
        model_type=config.model_type, rope_theta=config.rope_theta, rope_scaling=config.rope_scaling,
        torch_dtype=str(config.torch_dtype), class_name=type(config).__name__,
    )  # fmt: skip


def _adapter_config(job, inputs, prompt):
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(job["path"])
    answer = {}
    for key, value in config.to_dict().items():
        if isinstance(value, (set, frozenset)):
            value = sorted(value)
        if isinstance(value, (str, int, float, bool, list, type(None))):
            answer[key] = value
    return answer


JOBS = dict(load=_load, merge=_merge, tokenizer=_tokenizer, config=_config, adapter_config=_adapter_config)

if __name__ == "__main__":
    main(handle)
