"""Training from the released checkpoints by hub id (offline cache of tiny stand-ins): dtypes as upstream, LoRA over a
LLaVA release as `--model-base`, spatial_unpad over a 1.5 model, and the stop on a non-finite loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_cache import use_hub_cache
from train_helpers import LORA_FILES, checkpoints, files_in, load_bin, logged_losses, multimodal_flags

from llava.model.hub import resolve_model_dir
from llava.testing import hub as tiny_hub
from llava.testing import sizes as tiny_sizes
from llava.train.train import train

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
LOSS_TOLERANCE = 1e-4


def _release_flags(tiny, output_dir, **overrides) -> list[str]:
    """LoRA on top of liuhaotian/llava-v1.5-7b as finetune_task_lora.sh does (the projector comes with it)."""
    values = dict(
        model_name_or_path=tiny_hub.LLAVA_7B_REPO,
        vision_tower=tiny_hub.CLIP_336_REPO,
        pretrain_mm_mlp_adapter=None,
        max_steps=STEPS,
        save_steps=STEPS,
    )
    values.update(overrides)
    return multimodal_flags(tiny, output_dir, **values)


def _fp32_copy_of_release(directory: Path) -> Path:
    """The release's (fp16) weights upcast to fp32 in a plain local directory: the reference run's start."""
    from safetensors.torch import save_file

    release = resolve_model_dir(tiny_hub.LLAVA_7B_REPO)
    index = json.loads((release / "pytorch_model.bin.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(torch.load(release / shard, map_location="cpu", weights_only=True))
    directory.mkdir(parents=True)
    save_file({key: value.float().contiguous() for key, value in state.items()}, directory / "model.safetensors")
    config = json.loads((release / "config.json").read_text())
    config.update(model_type="llava_llama", torch_dtype="float32")
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).write_bytes((release / name).read_bytes())
    return directory


@pytest.fixture(scope="module")
def release_run(tiny, hub_cache, tmp_path_factory):
    """3 LoRA steps from the fp16 release without --bf16, and the same from an fp32 copy of its weights."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_hub_cache(monkeypatch, hub_cache)
        root = tmp_path_factory.mktemp("release")
        trainer = train(argv=_release_flags(tiny, root / "from-release"))
        reference_dir = _fp32_copy_of_release(root / "fp32-copy")
        reference = train(argv=_release_flags(tiny, root / "from-fp32", model_name_or_path=reference_dir))
        yield trainer, reference, root


def test_fp16_release_trains_in_fp32_like_the_fp32_reference(release_run):
    trainer, reference, root = release_run
    assert {param.dtype for param in trainer.model.parameters()} == {torch.float32}
    losses, expected = logged_losses(trainer.state.log_history), logged_losses(reference.state.log_history)
    assert sorted(losses) == sorted(expected) == list(range(1, STEPS + 1))
    for step in expected:
        assert abs(losses[step] - expected[step]) < LOSS_TOLERANCE, (step, losses[step], expected[step])
    output_dir = root / "from-release"
    assert files_in(output_dir) >= LORA_FILES
    for name in ("adapter_model.bin", "non_lora_trainables.bin"):
        state = load_bin(output_dir / name)
        assert state and all(torch.isfinite(tensor).all() for tensor in state.values()), name
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == "llava_llama" and config["mm_vision_tower"] == tiny_hub.CLIP_336_REPO


@pytest.mark.dist
def test_merge_and_loader_take_the_release_hub_id_as_model_base(release_run, hub, tmp_path):
    from llava.model.builder import load_pretrained_model

    _, _, root = release_run
    run_dir, save_dir = root / "from-release", tmp_path / "merged"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "merge_lora_weights.py"), "--model-path", str(run_dir),
         "--model-base", tiny_hub.LLAVA_7B_REPO, "--save-model-path", str(save_dir), "--dtype", "float32"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _, merged, _, _ = load_pretrained_model(save_dir, None, device="cpu")
    _, unmerged, _, _ = load_pretrained_model(run_dir, tiny_hub.LLAVA_7B_REPO, device="cpu")
    ids = torch.tensor([[1, 319, 13, 4, 9]])
    with torch.no_grad():
        difference = (merged(input_ids=ids).logits - unmerged(input_ids=ids).logits).abs().max()
    assert difference < 1e-5


def test_spatial_unpad_over_a_release_creates_and_trains_image_newline(tiny, hub, tmp_path):
    output_dir = tmp_path / "unpad"
    pinpoints = json.dumps(tiny_sizes.IMAGE_GRID_PINPOINTS).replace(" ", "")
    trainer = train(
        argv=_release_flags(
            tiny, output_dir, image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
            image_grid_pinpoints=pinpoints, max_steps=2, save_steps=2,
        )
    )  # fmt: skip
    newline = dict(trainer.model.named_parameters())["base_model.model.model.image_newline"]
    assert newline.requires_grad and newline.shape == (tiny_sizes.LLM_HIDDEN,)
    saved = load_bin(output_dir / "non_lora_trainables.bin")
    assert torch.equal(saved["base_model.model.model.image_newline"], newline.detach().cpu())
    assert json.loads((output_dir / "config.json").read_text())["mm_patch_merge_type"] == "spatial_unpad"

    from llava.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(output_dir, tiny_hub.LLAVA_7B_REPO, device="cpu")
    assert torch.equal(model.get_model().image_newline.detach(), newline.detach().cpu())


def test_a_run_that_diverges_stops_with_the_step_and_dtypes_and_saves_nothing_of_it(tiny, hub, tmp_path):
    from llava.train.llava_trainer import NonFiniteTrainingError

    output_dir = tmp_path / "diverges"
    # A learning rate this large drives the LoRA weights past float32's range within a step or two.
    argv = _release_flags(tiny, output_dir, learning_rate=1e30, mm_projector_lr=1e30, max_steps=6, save_steps=1)
    with pytest.raises(NonFiniteTrainingError) as caught:
        train(argv=argv)
    message = str(caught.value)
    step = int(message.split(":")[0].removeprefix("step "))
    assert step >= 2
    assert "not finite (NaN or inf). Training stopped; nothing of this step was saved" in message
    assert "Dtypes in use: float32 (no --bf16 / --fp16), trainable parameters float32" in message
    assert "lower --learning_rate" in message
    assert checkpoints(output_dir) == [f"checkpoint-{n}" for n in range(1, step)]
    assert not (output_dir / "adapter_model.bin").exists()
    for checkpoint in checkpoints(output_dir):
        for name in ("adapter_model.bin", "non_lora_trainables.bin"):
            state = load_bin(output_dir / checkpoint / name)
            assert all(torch.isfinite(tensor).all() for tensor in state.values()), (checkpoint, name)


def test_saving_refuses_non_finite_weights(tmp_path):
    from llava.train.saving import NonFiniteWeightsError, refuse_nonfinite

    refuse_nonfinite({"a": torch.ones(2)}, str(tmp_path))
    with pytest.raises(NonFiniteWeightsError, match=r"not saving .*: the weights b, c hold NaN or inf"):
        refuse_nonfinite(
            {"a": torch.ones(2), "b": torch.tensor([float("nan")]), "c": torch.tensor([float("inf")])}, str(tmp_path)
        )
    assert not any(tmp_path.iterdir())


@pytest.mark.dist
def test_zero3_bf16_lora_over_the_release_with_spatial_unpad(tiny, hub, tmp_path):
    """The issue's two crashes at once: mixed trainable dtypes under ZeRO-3 with --bf16 on the fp16 release, and
    the missing image_newline when a 1.5 model moves to spatial_unpad; 2 processes, every parameter partitioned."""
    from launch import launch_deepspeed

    config = json.loads((REPO_ROOT / "configs" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3.json").write_text(json.dumps(config))
    output_dir = tmp_path / "run"
    pinpoints = json.dumps(tiny_sizes.IMAGE_GRID_PINPOINTS).replace(" ", "")
    argv = _release_flags(
        tiny, output_dir, deepspeed=tmp_path / "zero3.json", bf16=True, image_aspect_ratio="anyres",
        mm_patch_merge_type="spatial_unpad", image_grid_pinpoints=pinpoints, max_steps=2, save_steps=2,
    )  # fmt: skip
    launch_deepspeed(REPO_ROOT / "llava" / "train" / "train_mem.py", argv, num_procs=2)
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    non_lora = load_bin(output_dir / "non_lora_trainables.bin")
    newline = non_lora["base_model.model.model.image_newline"]
    assert newline.shape == (tiny_sizes.LLM_HIDDEN,) and newline.dtype == torch.bfloat16
    assert non_lora["base_model.model.model.mm_projector.0.weight"].shape == (
        tiny_sizes.LLM_HIDDEN,
        tiny_sizes.CLIP_HIDDEN,
    )
    for state in (non_lora, load_bin(output_dir / "adapter_model.bin")):
        assert all(tensor.dtype == torch.bfloat16 and torch.isfinite(tensor).all() for tensor in state.values())


@pytest.mark.parametrize(
    ("overrides", "trainable"),
    [
        ({"bits": 4}, {torch.float32}),
        ({"bits": 4, "bf16": True}, {torch.bfloat16}),
        ({"bits": 8}, {torch.float32}),
        ({"bf16": True}, {torch.float32, torch.bfloat16}),  # no DeepSpeed: PEFT's fp32 LoRA next to bf16 weights
    ],
)
def test_lora_and_qlora_from_the_fp16_release_train_finite(tiny, hub, tmp_path, overrides, trainable):
    trainer = train(argv=_release_flags(tiny, tmp_path / "run", max_steps=2, save_steps=2, **overrides))
    assert {param.dtype for param in trainer.model.parameters() if param.requires_grad} == trainable
    assert not any(param.dtype == torch.float16 for param in trainer.model.parameters() if param.is_floating_point())
    losses = logged_losses(trainer.state.log_history)
    assert sorted(losses) == [1, 2] and all(0 < loss < 100 for loss in losses.values())
