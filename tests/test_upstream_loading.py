"""Runs made here load in upstream's own loader, and upstream's own runs load here, with the same logits.

Upstream's side runs in the reference environment (llava-torch 1.2.2.post1, transformers 4.37.2, peft 0.10.0):
its ``load_pretrained_model`` on our LoRA output dir, a ``checkpoint-N/``, a QLoRA run (loaded unquantized, as
upstream loads any LoRA run), a projector-pretraining run, a full fine-tune and a model merged by our script; the merge of upstream's
``scripts/merge_lora_weights.py`` (its body: the llava-torch package does not ship ``scripts/``) on our run; and
its own ``train.py`` making a LoRA run that our loader reads. Folder names are ones upstream's builder accepts (it
picks the kind from "llava" / "lora" in the name). Both sides load in float16 (upstream's only choice) and run the
same input ids and image tensor; the logits must agree to float16 rounding.

The files are also read the way upstream's stack reads them: ``adapter_config.json`` by peft 0.10's
``PeftConfig``, ``config.json`` by transformers 4.37 (rope theta, rope scaling, dtype), the tokenizer by 4.37's
slow and fast Llama tokenizers (the same ids as ours).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_helpers import multimodal_flags, write_caption_data

from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.train.train import train

pytestmark = [pytest.mark.upstream, pytest.mark.slow]
logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. USER: <image>\n"
    "What color is the shape in the image? ASSISTANT:"
)
TEXTS = [
    PROMPT.replace("<image>", ""),
    "USER: Hi ASSISTANT: Red square, 12 px.</s>USER: more? ASSISTANT: The background is gray (50%).</s>",
    "é 日本 🙂 naïve — …",
]


RUNS = ["lora", "checkpoint", "qlora", "projector", "full", "merged by us"]


def fp16_tolerance(logits: torch.Tensor, ulps: int = 2) -> float:
    """``ulps`` float16 steps at the largest logit's magnitude."""
    scale = logits.abs().max().item()
    return ulps * 2.0 ** (math.floor(math.log2(scale)) - 10)


def _image(tiny) -> Image.Image:
    records = [record for record in json.loads(Path(tiny.data).read_text()) if "image" in record]
    return Image.open(Path(tiny.image_folder) / records[0]["image"]).convert("RGB")


def our_logits(model_path, model_base, inputs) -> tuple[torch.Tensor, list[int]]:
    tokenizer, model, _, _ = load_pretrained_model(model_path, model_base, None, device="cpu", dtype=torch.float16)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], images=inputs["images"].half()).logits[0].float()
    return logits, tokenizer_image_token(PROMPT, tokenizer)


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """Our runs, in folders named as upstream's builder wants them."""
    root = tmp_path_factory.mktemp("ours")
    lora = root / "llava-tiny-lora"
    train(argv=multimodal_flags(tiny, lora, learning_rate=5e-3, mm_projector_lr=5e-3))
    qlora = root / "llava-tiny-qlora"  # "qlora" contains "lora"
    train(argv=multimodal_flags(tiny, qlora, bits=4, max_steps=2, save_steps=2, model_name_or_path=tiny.llava))
    projector = root / "llava-tiny-pretrain"
    train(
        argv=multimodal_flags(
            tiny, projector, data_path=write_caption_data(tiny, root / "captions.json"), version="plain",
            tune_mm_mlp_adapter=True, lora_enable=False, pretrain_mm_mlp_adapter=None, mm_projector_lr=None,
            group_by_modality_length=False, learning_rate=1e-2, max_steps=2, save_steps=2,
        )
    )  # fmt: skip
    full = root / "llava-tiny-full"  # a full fine-tune: a save_pretrained folder
    train(argv=multimodal_flags(tiny, full, lora_enable=False, mm_projector_lr=None, max_steps=1, save_strategy="no"))
    merged = root / "llava-tiny-merged"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "merge_lora_weights.py"), "--model-path", str(lora),
         "--model-base", str(tiny.llm), "--save-model-path", str(merged)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=300,
    )  # fmt: skip
    # (name, folder, --model-base)
    return [
        ("lora", lora, tiny.llm),
        ("checkpoint", lora / "checkpoint-2", tiny.llm),
        ("qlora", qlora, tiny.llava),
        ("projector", projector, tiny.llm),
        ("full", full, None),
        ("merged by us", merged, None),
    ], root


@pytest.fixture(scope="module")
def inputs(tiny, tmp_path_factory):
    """One prompt + image, as the same tensors for both sides (image preprocessing is not what is compared)."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    tokenizer = AutoTokenizer.from_pretrained(tiny.llm)
    processor = CLIPImageProcessor.from_pretrained(tiny.vision_tower)
    config = type("Config", (), {"image_aspect_ratio": "pad"})()
    tensors = dict(
        input_ids=tokenizer_image_token(PROMPT, tokenizer, return_tensors="pt")[None],
        images=process_images([_image(tiny)], processor, config),
    )
    path = tmp_path_factory.mktemp("inputs") / "inputs.pt"
    torch.save(tensors, path)
    return tensors, path


def _extra_files(root, tiny) -> dict:
    """Files our training does not write with the tiny model: a non-default rope, a legacy-true tokenizer."""
    from transformers import AutoTokenizer

    from llava.model import LlavaConfig, compat

    rope = root / "rope-config"
    LlavaConfig(rope_theta=500000.0, rope_scaling={"rope_type": "linear", "factor": 2.0}).save_pretrained(rope)
    compat.config_for_transformers4(rope)
    tokenizer = root / "legacy-true-tokenizer"
    compat.save_tokenizer(AutoTokenizer.from_pretrained(tiny.llm, legacy=True), tokenizer)
    return {"rope config": rope, "legacy true tokenizer": tokenizer}


@pytest.fixture(scope="module")
def upstream_reads_ours(runs, inputs, upstream, tiny):
    """ONE upstream process: load every run, merge ours with upstream's merge and load that, read every file."""
    folders, root = runs
    _, inputs_path = inputs
    upstream_merged = root / "llava-tiny-merged-by-upstream"
    jobs = []
    for name, folder, base in folders:
        jobs.append(dict(name=name, kind="load", model_path=str(folder), model_base=base and str(base),
                         logits_out=str(root / f"{name}.logits.pt")))  # fmt: skip
        jobs.append(dict(name=f"{name}: tokenizer", kind="tokenizer", path=str(folder), texts=TEXTS))
        jobs.append(dict(name=f"{name}: config", kind="config", path=str(folder)))
    for name, folder, _ in folders[:3]:
        jobs.append(dict(name=f"{name}: adapter_config", kind="adapter_config", path=str(folder)))
    extra = _extra_files(root, tiny)
    jobs.append(dict(name="rope config", kind="config", path=str(extra["rope config"])))
    jobs.append(
        dict(name="legacy true tokenizer", kind="tokenizer", path=str(extra["legacy true tokenizer"]), texts=TEXTS)
    )
    jobs.append(dict(name="merge", kind="merge", model_path=str(folders[0][1]), model_base=str(tiny.llm),
                     save_model_path=str(upstream_merged)))  # fmt: skip
    jobs.append(dict(name="merged by upstream", kind="load", model_path=str(upstream_merged), model_base=None,
                     logits_out=str(root / "merged by upstream.logits.pt")))  # fmt: skip
    answer = upstream.run("load", dict(inputs=str(inputs_path), prompt=PROMPT, jobs=jobs))
    errors = {name: result["error"] for name, result in answer["results"].items() if "error" in result}
    assert not errors, "\n\n".join(f"{name}: {error}" for name, error in errors.items())
    assert answer["versions"]["peft"] == "0.10.0" and answer["versions"]["transformers"] == "4.37.2"
    return answer["results"], root, upstream_merged


@pytest.mark.parametrize("name", RUNS)
def test_upstream_loads_our_runs_with_our_logits(upstream_reads_ours, runs, inputs, name):
    results, root, _ = upstream_reads_ours
    folder, base = {run[0]: run[1:] for run in runs[0]}[name]
    tensors, _ = inputs
    theirs = torch.load(root / f"{name}.logits.pt", weights_only=True)
    ours, our_prompt_ids = our_logits(folder, base, tensors)
    result = results[name]
    assert result["model_class"] == "LlavaLlamaForCausalLM" and result["dtype"] == "torch.float16"
    assert not result["lora_left"]  # merged, as upstream's builder does
    assert result["prompt_ids"] == our_prompt_ids == tensors["input_ids"][0].tolist()
    difference = (ours - theirs).abs().max().item()
    logger.info(
        "upstream loads our %s: max logit difference %.3g (fp16 step %.3g)", name, difference, fp16_tolerance(theirs, 1)
    )
    assert difference <= fp16_tolerance(theirs), difference


def test_upstream_merge_of_our_run_loads_in_both_with_the_same_logits(upstream_reads_ours, runs, inputs):
    results, root, upstream_merged = upstream_reads_ours
    tensors, _ = inputs
    theirs = torch.load(root / "merged by upstream.logits.pt", weights_only=True)
    ours_of_theirs, _ = our_logits(upstream_merged, None, tensors)
    ours_of_run, _ = our_logits(runs[0][0][1], runs[0][0][2], tensors)
    for label, logits in (("upstream's merge, loaded here", ours_of_theirs), ("our LoRA run", ours_of_run)):
        difference = (logits - theirs).abs().max().item()
        logger.info("%s vs upstream's merge in upstream: max logit difference %.3g", label, difference)
        assert difference <= fp16_tolerance(theirs), (label, difference)


@pytest.mark.parametrize("name", RUNS)
def test_upstream_tokenizers_read_our_tokenizer_files_with_our_ids(upstream_reads_ours, runs, name):
    from transformers import AutoTokenizer

    results, _, _ = upstream_reads_ours
    folder = {run[0]: run[1] for run in runs[0]}[name]
    ours = AutoTokenizer.from_pretrained(folder)
    expected = [ours(text).input_ids for text in TEXTS]
    answer = results[f"{name}: tokenizer"]
    assert answer["slow"]["tokenizer_class"] == "LlamaTokenizer" and answer["slow"]["legacy"] is False
    assert answer["fast"]["tokenizer_class"] == "LlamaTokenizerFast"
    assert answer["slow"]["ids"] == expected
    assert answer["fast"]["ids"] == expected


@pytest.mark.parametrize("name", RUNS)
def test_transformers4_reads_our_config(upstream_reads_ours, runs, name):
    results, _, _ = upstream_reads_ours
    folder = {run[0]: run[1] for run in runs[0]}[name]
    written = json.loads((Path(folder) / "config.json").read_text())
    answer = results[f"{name}: config"]
    assert answer["model_type"] == "llava_llama" and answer["class_name"] == "LlavaConfig"
    assert answer["rope_theta"] == written["rope_parameters"]["rope_theta"]
    assert answer["rope_scaling"] is None
    assert answer["torch_dtype"] == f"torch.{written['dtype']}"


def test_transformers4_reads_a_non_default_rope(upstream_reads_ours):
    results, _, _ = upstream_reads_ours
    answer = results["rope config"]
    assert (answer["rope_theta"], answer["rope_scaling"]) == (500000.0, {"type": "linear", "factor": 2.0})


def test_upstream_tokenizers_read_a_legacy_true_tokenizer_with_our_ids(upstream_reads_ours, tiny):
    from transformers import AutoTokenizer

    from llava.tokenization import encode

    results, root, _ = upstream_reads_ours
    answer = results["legacy true tokenizer"]
    ours = encode(AutoTokenizer.from_pretrained(root / "legacy-true-tokenizer"), TEXTS).ids
    assert answer["slow"]["legacy"] is True
    assert answer["slow"]["ids"] == answer["fast"]["ids"] == ours


@pytest.mark.parametrize("name", ["lora", "checkpoint", "qlora"])
def test_peft_0_10_reads_our_adapter_config_with_its_meaning(upstream_reads_ours, runs, name):
    from peft import PeftConfig

    results, _, _ = upstream_reads_ours
    folder = {run[0]: run[1] for run in runs[0]}[name]
    ours = PeftConfig.from_pretrained(str(folder)).to_dict()
    theirs = results[f"{name}: adapter_config"]
    for key in ("r", "lora_alpha", "lora_dropout", "bias", "task_type", "use_rslora", "use_dora", "init_lora_weights"):
        assert theirs[key] == ours[key], key
    targets = ours["target_modules"]  # upstream's form: the leaf names (docs/upstream_differences.md #21)
    assert not isinstance(targets, str) and theirs["target_modules"] == sorted(targets)


# ----------------------------------------------------------------------------------------------------------------
# The other direction: upstream's own train.py writes a LoRA run, our loader reads it


def test_run_made_by_upstream_train_py_loads_here_with_its_logits(upstream, tiny, inputs, tmp_path):
    tensors, inputs_path = inputs
    output_dir = tmp_path / "llava-upstream-lora"
    argv = multimodal_flags(
        tiny, output_dir, save_strategy="no", save_steps=None, lazy_preprocess=True, bf16=False, fp16=False,
        learning_rate=5e-3, mm_projector_lr=5e-3,
    )  # fmt: skip
    job = dict(name="theirs", kind="load", model_path=str(output_dir), model_base=str(tiny.llm),
               logits_out=str(tmp_path / "theirs.logits.pt"))  # fmt: skip
    answer = upstream.run("train", dict(argv=argv, jobs=[job], inputs=str(inputs_path), prompt=PROMPT))
    assert "error" not in answer["results"]["theirs"], answer["results"]["theirs"]
    # Upstream's files: PEFT 0.10 writes safetensors; no tokenizer is saved with a LoRA run.
    assert {"adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin", "config.json"} <= set(
        answer["files"]
    )
    theirs = torch.load(tmp_path / "theirs.logits.pt", weights_only=True)
    ours, prompt_ids = our_logits(output_dir, tiny.llm, tensors)
    assert answer["results"]["theirs"]["prompt_ids"] == prompt_ids
    difference = (ours - theirs).abs().max().item()
    logger.info(
        "our loader on upstream's train.py run: max logit difference %.3g (fp16 step %.3g)",
        difference,
        fp16_tolerance(theirs, 1),
    )
    assert difference <= fp16_tolerance(theirs), difference
    # The run really trained: every LoRA B matrix moved away from its zero start.
    from safetensors.torch import load_file

    adapter = load_file(output_dir / "adapter_model.safetensors")
    lora_b = [tensor for key, tensor in adapter.items() if "lora_B" in key]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)
