"""Loading what training wrote (and what upstream writes): load_pretrained_model, merging, run_llava, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_helpers import load_bin, multimodal_flags

from llava.model.builder import CheckpointKind, detect_checkpoint_kind, load_pretrained_model
from llava.model.state_files import UnsafeStateFileError
from llava.train.train import train

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What color is the shape in the image?"


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory):
    """A LoRA run trained by our own pipeline; the trainer's model is the unmerged PEFT model."""
    output_dir = tmp_path_factory.mktemp("run")
    trainer = train(argv=multimodal_flags(tiny, output_dir, learning_rate=5e-3, mm_projector_lr=5e-3))
    return trainer.model.eval(), output_dir


def _prompt_inputs(tokenizer, image_processor, config, image):
    from llava.eval.run_llava import build_prompt
    from llava.mm_utils import process_images, tokenizer_image_token

    prompt = build_prompt(QUESTION, "llava_v1", False)
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    return ids, process_images([image], image_processor, config)


def _image(tiny, index=0) -> Image.Image:
    records = [r for r in json.loads(Path(tiny.data).read_text()) if "image" in r]
    return Image.open(Path(tiny.image_folder) / records[index]["image"]).convert("RGB")


def _logits(model, ids, images):
    with torch.no_grad():
        return model(input_ids=ids, images=images).logits[0]


def test_merged_model_equals_the_trained_peft_model(lora_run, tiny):
    peft_model, output_dir = lora_run
    tokenizer, merged, processor, context_len = load_pretrained_model(output_dir, tiny.llm, "run", device="cpu")
    assert context_len == 2048 and merged.dtype == torch.float32
    assert not any("lora" in name for name, _ in merged.named_parameters())
    ids, images = _prompt_inputs(tokenizer, processor, merged.config, _image(tiny))
    difference = (_logits(merged, ids, images) - _logits(peft_model, ids, images)).abs().max()
    assert difference < 1e-5


@pytest.mark.dist
def test_merge_script_writes_a_loadable_full_model(lora_run, tiny, tmp_path):
    peft_model, output_dir = lora_run
    save_dir = tmp_path / "merged"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "merge_lora_weights.py"), "--model-path", str(output_dir),
         "--model-base", str(tiny.llm), "--save-model-path", str(save_dir), "--dtype", "float32"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert detect_checkpoint_kind(save_dir) is CheckpointKind.LLAVA
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in save_dir.iterdir()}
    tokenizer, model, processor, _ = load_pretrained_model(save_dir, None, "merged", device="cpu")
    ids, images = _prompt_inputs(tokenizer, processor, model.config, _image(tiny))
    assert (_logits(model, ids, images) - _logits(peft_model, ids, images)).abs().max() < 1e-5


@pytest.mark.dist
def test_default_merge_saves_float16_as_upstream(lora_run, tiny, tmp_path):
    _, output_dir = lora_run
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "merge_lora_weights.py"), "--model-path", str(output_dir),
         "--model-base", str(tiny.llm), "--save-model-path", str(tmp_path / "fp16")],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=300,
    )  # fmt: skip
    from safetensors.torch import load_file

    assert {value.dtype for value in load_file(tmp_path / "fp16" / "model.safetensors").values()} == {torch.float16}


def test_every_checkpoint_loads(lora_run, tiny):
    _, output_dir = lora_run
    for checkpoint in ("checkpoint-2", "checkpoint-4"):
        _, model, processor, _ = load_pretrained_model(output_dir / checkpoint, tiny.llm, checkpoint, device="cpu")
        assert processor is not None and model.get_vision_tower().is_loaded


def test_kind_comes_from_files_not_names(lora_run, tiny, tmp_path):
    """Upstream needs "llava" and "lora" in the folder name (#1021, #1022, #730)."""
    _, output_dir = lora_run
    plain_name = tmp_path / "run-2024-06-01"
    misleading = tmp_path / "llava-v1.5-7b-merged"  # says "full llava", holds a LoRA run
    for target in (plain_name, misleading):
        shutil.copytree(output_dir, target, ignore=shutil.ignore_patterns("checkpoint-*"))
        assert detect_checkpoint_kind(target) is CheckpointKind.LORA
        _, model, processor, _ = load_pretrained_model(target, tiny.llm, target.name, device="cpu")
        assert processor is not None
    lora_named_full = tmp_path / "my-lora"
    shutil.copytree(tiny.llava, lora_named_full)
    assert detect_checkpoint_kind(lora_named_full) is CheckpointKind.LLAVA
    assert detect_checkpoint_kind(tiny.pretrain) is CheckpointKind.PROJECTOR
    assert detect_checkpoint_kind(tiny.llm) is CheckpointKind.LANGUAGE_MODEL


def test_projector_only_full_llava_and_plain_lm(tiny):
    _, model, processor, _ = load_pretrained_model(tiny.pretrain, tiny.llm, "pretrain", device="cpu")
    pretrained = torch.load(tiny.projector, weights_only=True)
    for key, value in pretrained.items():
        assert torch.equal(model.state_dict()[key], value), key
    _, model, processor, _ = load_pretrained_model(tiny.llava, None, "llava", device="cpu")
    assert processor is not None and model.config.model_type == "llava_llama"
    _, model, processor, _ = load_pretrained_model(tiny.llm, None, "vicuna", device="cpu")
    assert processor is None and model.config.model_type == "llama"


def test_missing_pieces_are_clear_errors(lora_run, tiny, tmp_path):
    _, output_dir = lora_run
    with pytest.raises(ValueError, match="pass the model it was trained over as model_base"):
        load_pretrained_model(output_dir, None, "run", device="cpu")
    no_projector = tmp_path / "no-projector"
    shutil.copytree(output_dir, no_projector, ignore=shutil.ignore_patterns("checkpoint-*"))
    (no_projector / "non_lora_trainables.bin").unlink()
    with pytest.raises(ValueError, match="non_lora_trainables.bin") as error:
        load_pretrained_model(no_projector, tiny.llm, "run", device="cpu")
    assert "mm_projector" in str(error.value)
    with pytest.raises(ValueError, match="is not a language model"):
        load_pretrained_model(output_dir, tiny.vision_tower, "run", device="cpu")
    from transformers import LlamaConfig, LlamaForCausalLM

    other_base = tmp_path / "other-base"
    LlamaForCausalLM(
        LlamaConfig(**{**LlamaConfig.from_pretrained(tiny.llm).to_dict(), "hidden_size": 32})
    ).save_pretrained(other_base)
    with pytest.raises(ValueError, match="is not the model this run was trained from .*hidden_size: run 64 vs base 32"):
        load_pretrained_model(output_dir, other_base, "run", device="cpu")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_bin_is_refused_and_nothing_runs(lora_run, tiny, tmp_path):
    _, output_dir = lora_run
    poisoned = tmp_path / "poisoned"
    shutil.copytree(output_dir, poisoned, ignore=shutil.ignore_patterns("checkpoint-*"))
    marker = tmp_path / "pwned"
    torch.save({"base_model.model.model.mm_projector.0.weight": _Exploit(marker)}, poisoned / "non_lora_trainables.bin")
    with pytest.raises(UnsafeStateFileError, match="non_lora_trainables.bin"):
        load_pretrained_model(poisoned, tiny.llm, "run", device="cpu")
    assert not marker.exists()


def test_upstream_style_safetensors_adapter_loads(lora_run, tiny, tmp_path):
    """PEFT's default file (adapter_model.safetensors) works as well as our adapter_model.bin."""
    from safetensors.torch import save_file

    peft_model, output_dir = lora_run
    other = tmp_path / "safetensors-run"
    shutil.copytree(output_dir, other, ignore=shutil.ignore_patterns("checkpoint-*"))
    save_file(load_bin(other / "adapter_model.bin"), other / "adapter_model.safetensors")
    (other / "adapter_model.bin").unlink()
    tokenizer, merged, processor, _ = load_pretrained_model(other, tiny.llm, "x", device="cpu")
    ids, images = _prompt_inputs(tokenizer, processor, merged.config, _image(tiny))
    assert (_logits(merged, ids, images) - _logits(peft_model, ids, images)).abs().max() < 1e-5


def test_load_4bit_on_cpu_keeps_the_projector_whole(tiny):
    import bitsandbytes as bnb

    _, model, _, _ = load_pretrained_model(tiny.llava, None, "llava", load_4bit=True, device="cpu")
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert isinstance(model.get_model().mm_projector[0], torch.nn.Linear)
    assert not isinstance(model.get_model().mm_projector[0], bnb.nn.Linear4bit)


def test_run_llava_answers_and_the_image_matters(lora_run, tiny, capsys):
    from llava.eval.run_llava import build_parser, eval_model, prepare_inputs

    _, output_dir = lora_run
    image_file = Path(tiny.image_folder) / json.loads(Path(tiny.data).read_text())[0]["image"]
    args = build_parser().parse_args(
        ["--model-path", str(output_dir), "--model-base", str(tiny.llm), "--image-file", str(image_file),
         "--query", QUESTION, "--temperature", "0", "--max_new_tokens", "8", "--device", "cpu"]
    )  # fmt: skip
    answer = eval_model(args)
    assert answer and capsys.readouterr().out.strip() == answer
    assert args.conv_mode == "llava_v0"  # inferred from the name as upstream; the folder says nothing
    tokenizer, model, processor, _ = load_pretrained_model(output_dir, tiny.llm, "run", device="cpu")
    from llava.eval.run_llava import build_prompt

    prompt = build_prompt(QUESTION, "llava_v1", False)
    first = prepare_inputs(prompt, [_image(tiny, 0)], tokenizer, processor, model)
    second = prepare_inputs(prompt, [Image.new("RGB", (32, 32), (0, 0, 255))], tokenizer, processor, model)
    logits = [_logits(model, inputs["inputs"], inputs["images"])[-1] for inputs in (first, second)]
    assert (logits[0] - logits[1]).abs().max() > 1e-3


@pytest.mark.dist
def test_cli_chats_through_stdin(lora_run, tiny):
    _, output_dir = lora_run
    image_file = Path(tiny.image_folder) / json.loads(Path(tiny.data).read_text())[0]["image"]
    result = subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", "--model-path", str(output_dir), "--model-base", str(tiny.llm),
         "--image-file", str(image_file), "--device", "cpu", "--temperature", "0", "--max-new-tokens", "6",
         "--conv-mode", "llava_v1"],
        input=f"{QUESTION}\n\n", capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("USER: ASSISTANT: ") and len(lines[0]) > len("USER: ASSISTANT: ")
    assert lines[-1].endswith("exit...")
