"""Upstream's own model-family classes, over a list of jobs in one process.

Request: {"inputs": {name: path of a torch file {"input_ids", "images", "image_sizes"?}}, "jobs": [{"name", "kind",
...}]}. Kinds:
- "build_mistral": what upstream's training does before its first step with ``--vision_tower``: its
  ``LlavaMistralForCausalLM.from_pretrained(language_model)``, ``initialize_vision_modules`` (tower, projector from
  ``pretrain_mm_mlp_adapter``), the config fields ``train()`` records; then ``save_pretrained(out_dir)`` with the
  tokenizer. The logits of ``inputs`` (fp32, the model as built) go to ``logits_out``.
- "logits": ``<class>.from_pretrained(model_path, torch_dtype=float32)`` (``class`` is an upstream class name), the
  vision tower loaded as upstream's loader does; the logits of ``inputs`` to ``logits_out``.
- "load": upstream's ``load_pretrained_model(model_path, None, model_name)`` on CPU: the class it builds.
- "mpt_forward": a tiny ``LlavaMptForCausalLM`` and one forward: the error it raises.
Answer: {"versions", "results": {name: {...} | {"error": str}}}.
"""

from __future__ import annotations

import traceback
from types import SimpleNamespace

from _common import main, upstream_llava, versions


def handle(request: dict) -> dict:
    upstream_llava()
    results = {}
    for job in request["jobs"]:
        try:
            results[job["name"]] = JOBS[job["kind"]](job)
        except Exception as error:  # reported for the test to show
            results[job["name"]] = dict(error=f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}")
    return dict(versions=versions(), results=results)


def _logits_of(model, inputs_path: str, out: str) -> None:
    import torch

    inputs = torch.load(inputs_path, weights_only=False)
    model.eval()
    with torch.no_grad():
        output = model(
            input_ids=inputs["input_ids"],
            images=inputs["images"].to(model.dtype),
            image_sizes=inputs.get("image_sizes"),
        )
    torch.save(output.logits[0].float(), out)


def _build_mistral(job):
    import torch
    from transformers import AutoTokenizer

    from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM

    torch.manual_seed(job.get("seed", 0))
    model = LlavaMistralForCausalLM.from_pretrained(job["language_model"], torch_dtype=torch.float32)
    model_args = SimpleNamespace(**job["model_args"])
    model.get_model().initialize_vision_modules(model_args=model_args)
    model.get_vision_tower().to(dtype=torch.float32)
    for key, value in job.get("config_fields", {}).items():  # what train() records beyond initialize_vision_modules
        setattr(model.config, key, value)
    tokenizer = AutoTokenizer.from_pretrained(job["language_model"], use_fast=False)
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)
    model.save_pretrained(job["out_dir"])
    tokenizer.save_pretrained(job["out_dir"])
    _logits_of(model, job["inputs"], job["logits_out"])
    return dict(model_class=type(model).__name__, model_type=model.config.model_type)


def _logits(job):
    import torch

    import llava.model as upstream_model

    model_class = getattr(upstream_model, job["class"])
    model = model_class.from_pretrained(job["model_path"], torch_dtype=torch.float32)
    vision_tower = model.get_vision_tower()
    if not vision_tower.is_loaded:
        vision_tower.load_model()
    vision_tower.to(dtype=torch.float32)
    _logits_of(model, job["inputs"], job["logits_out"])
    return dict(model_class=type(model).__name__, vision_tower_loaded_at_init=bool(vision_tower.is_loaded))


def _load(job):
    from llava.model.builder import load_pretrained_model

    _, model, _, context_len = load_pretrained_model(
        job["model_path"], None, job["model_name"], device_map="cpu", device="cpu"
    )
    return dict(model_class=type(model).__name__, context_len=context_len)


def _mpt_forward(job):
    import torch

    from llava.model.language_model.llava_mpt import LlavaMptConfig, LlavaMptForCausalLM

    config = LlavaMptConfig(d_model=16, n_heads=2, n_layers=1, vocab_size=64, max_seq_len=32)
    model = LlavaMptForCausalLM(config)
    try:
        model(input_ids=torch.tensor([[1, 2, 3]]))
    except Exception as error:
        return dict(raised=type(error).__name__, message=str(error))
    return dict(raised=None)


JOBS = dict(build_mistral=_build_mistral, logits=_logits, load=_load, mpt_forward=_mpt_forward)

if __name__ == "__main__":
    main(handle)
