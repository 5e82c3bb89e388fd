"""The peers' options as whole runs (4 steps each, in this process): the flags batched into three runs, each run's
files checked, its loading through `load_pretrained_model` (the in-training model, unmerged, equal to the loaded,
merged one within 1e-4 in fp32) and through `scripts/merge_lora_weights.py`.

- "dora": `--use_dora --use_rslora --loraplus_lr_ratio 4 --neftune_noise_alpha 5 --init_lora_weights gaussian`,
  evaluated during training;
- "pissa": `--init_lora_weights pissa --lora_vision_tower --gradient_checkpointing --packing`; resumed from
  checkpoint-2; the saved adapter is an ordinary LoRA over the ORIGINAL base (the original-base test);
- "qlora": `--bits 4 --init_lora_weights olora --unfreeze_mm_vision_tower --mm_vision_tower_lr`, and "qlora8":
  `--bits 8 --use_rslora --loraplus_lr_ratio 4 --use_liger_kernel` (no GPU here: the warning and the chunked loss), from the tiny LLaVA
  checkpoint, loaded unquantized over it as upstream loads any LoRA run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import (
    LORA_FILES,
    LORA_R,
    PROJECTOR_KEYS,
    PROJECTOR_LR,
    RESUME_FILES,
    checkpoints,
    expected_adapter_keys,
    files_in,
    load_bin,
    load_config,
    logged_losses,
    multimodal_flags,
)

from llava.model.builder import load_pretrained_model
from llava.train.train import train

# dist: the merge runs as scripts/merge_lora_weights.py in subprocesses (and it keeps `make test-fast` lean).
pytestmark = [pytest.mark.slow, pytest.mark.dist]
REPO_ROOT = Path(__file__).resolve().parents[1]
TOWER_LR = 1e-4
RUNS = {
    "dora": dict(use_dora=True, use_rslora=True, loraplus_lr_ratio=4, neftune_noise_alpha=5,
                 init_lora_weights="gaussian", eval_split_ratio=0.1, eval_strategy="steps", eval_steps=2),
    "pissa": dict(init_lora_weights="pissa", lora_vision_tower=True, gradient_checkpointing=True, packing=True),
    "qlora": dict(bits=4, init_lora_weights="olora", unfreeze_mm_vision_tower=True, mm_vision_tower_lr=TOWER_LR),
    "qlora8": dict(bits=8, use_rslora=True, loraplus_lr_ratio=4, use_liger_kernel=True),  # no Liger here: chunked
}  # fmt: skip
BASES = {"dora": "llm", "pissa": "llm", "qlora": "llava", "qlora8": "llava"}
QUANTIZED = ("qlora", "qlora8")
CONVERTED = ("pissa", "olora")  # saved as an ordinary LoRA of twice the rank over the original base
TOWER_LINEARS = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def _argv(tiny, name, output_dir):
    overrides = dict(RUNS[name])
    if BASES[name] == "llava":
        overrides["model_name_or_path"] = tiny.llava
    return multimodal_flags(tiny, output_dir, learning_rate=5e-3, **overrides)


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """Each run trained once; (trainer, output_dir) by name."""
    done = {}
    for name in RUNS:
        output_dir = tmp_path_factory.mktemp(f"llava-tiny-{name}-lora")  # names upstream's loader takes as LoRA
        done[name] = (train(argv=_argv(tiny, name, output_dir)), output_dir)
    return done


PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. USER: <image>\nWhat color? ASSISTANT:"
)


def _inputs(tiny, tokenizer, image_processor, config):
    from PIL import Image

    from llava.mm_utils import process_images, tokenizer_image_token

    record = next(r for r in json.loads(Path(tiny.data).read_text()) if "image" in r)
    image = Image.open(Path(tiny.image_folder) / record["image"]).convert("RGB")
    return tokenizer_image_token(PROMPT, tokenizer, return_tensors="pt")[None], process_images(
        [image], image_processor, config
    )


def _logits(model, ids, images):
    with torch.no_grad():
        return model(input_ids=ids, images=images).logits[0].float()


# ----------------------------------------------------------------------------------------------------------------
# Files


@pytest.mark.parametrize("name", list(RUNS))
def test_each_run_writes_the_usual_files_and_records_its_flags(runs, name):
    trainer, output_dir = runs[name]
    assert checkpoints(output_dir) == ["checkpoint-2", "checkpoint-4"]
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    assert files_in(output_dir / "checkpoint-2") == LORA_FILES | RESUME_FILES
    config = load_config(output_dir)
    adapter_config = json.loads((output_dir / "adapter_config.json").read_text())
    flags = RUNS[name]
    assert (config["use_dora"], config["use_rslora"]) == (flags.get("use_dora", False), flags.get("use_rslora", False))
    assert config["init_lora_weights"] == flags.get("init_lora_weights", "true")
    assert config["loraplus_lr_ratio"] == flags.get("loraplus_lr_ratio")
    assert config["lora_vision_tower"] is flags.get("lora_vision_tower", False)
    assert config["unfreeze_mm_vision_tower"] is flags.get("unfreeze_mm_vision_tower", False)
    assert config["mm_vision_tower_lr"] == flags.get("mm_vision_tower_lr")
    assert (adapter_config["use_dora"], adapter_config["use_rslora"]) == (
        flags.get("use_dora", False), flags.get("use_rslora", False),
    )  # fmt: skip
    converted = flags.get("init_lora_weights") in CONVERTED
    assert adapter_config["init_lora_weights"] == (True if converted else flags.get("init_lora_weights", True))
    assert adapter_config["r"] == (2 * LORA_R if converted else LORA_R)
    recorded = torch.load(output_dir / "training_args.bin", weights_only=False)
    assert recorded.neftune_noise_alpha == flags.get("neftune_noise_alpha")
    assert recorded.use_liger_kernel is False  # turned off where it cannot run, and so recorded


def test_dora_run_saves_the_magnitudes(runs):
    _, output_dir = runs["dora"]
    adapter = load_bin(output_dir / "adapter_model.bin")
    magnitudes = {key for key in adapter if "lora_magnitude_vector" in key}
    assert {key for key in adapter if key not in magnitudes} == expected_adapter_keys()
    assert len(magnitudes) == 2 * 7 and all(adapter[key].ndim == 1 for key in magnitudes)


def test_tower_lora_is_in_the_adapter_and_trained(runs):
    _, output_dir = runs["pissa"]
    adapter = load_bin(output_dir / "adapter_model.bin")
    tower = {key for key in adapter if "vision_tower" in key}
    assert {key.split(".")[-3] for key in tower} == TOWER_LINEARS
    assert {key for key in adapter if key not in tower} == expected_adapter_keys()
    middle = load_bin(output_dir / "checkpoint-2" / "adapter_model.bin")
    # The tower's LoRA trained too (only the layer the features are read from on: -2 of 2, the first).
    layer0 = [key for key in tower if ".layers.0." in key]
    assert layer0 and all(not torch.equal(middle[key], adapter[key]) for key in layer0)


def test_unfrozen_tower_is_in_the_non_lora_trainables_at_its_learning_rate(runs, tiny):
    from safetensors.torch import load_file

    trainer, output_dir = runs["qlora"]
    non_lora = load_bin(output_dir / "non_lora_trainables.bin")
    tower = {key for key in non_lora if "vision_tower" in key}
    tower_params = {n for n, _ in trainer.model.named_parameters() if "vision_tower" in n}
    assert tower == tower_params and len(tower) > 50  # every tower weight
    assert {key for key in non_lora if key not in tower} == {f"base_model.model.model.{key}" for key in PROJECTOR_KEYS}
    original = load_file(Path(tiny.vision_tower) / "model.safetensors")[
        "vision_model.embeddings.patch_embedding.weight"
    ]
    (patch,) = [key for key in tower if key.endswith("patch_embedding.weight")]
    assert not torch.equal(non_lora[patch], original)  # trained
    # ... and the loader puts every trained tower weight back (not the tower of mm_vision_tower)
    _, loaded, _, _ = load_pretrained_model(output_dir, tiny.llava, None, device="cpu", dtype=torch.float32)
    state = loaded.state_dict()
    assert all(torch.equal(state[key.removeprefix("base_model.model.")], non_lora[key]) for key in tower)
    names = {id(param): name for name, param in trainer.model.named_parameters()}
    rates = {}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            part = (
                "tower"
                if "vision_tower" in names[id(param)]
                else "projector"
                if "mm_projector" in names[id(param)]
                else "lora"
            )
            rates.setdefault(part, set()).add(group["initial_lr"])
    assert rates == {"lora": {5e-3}, "projector": {PROJECTOR_LR}, "tower": {TOWER_LR}}


def test_loraplus_trains_b_at_ratio_times_the_rate(runs):
    trainer, _ = runs["dora"]
    names = {id(param): name for name, param in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        kinds = {names[id(p)].split(".")[-3] if "lora_" in names[id(p)] else "projector" for p in group["params"]}
        expected = {frozenset({"lora_A"}): 5e-3, frozenset({"lora_B", "lora_magnitude_vector"}): 4 * 5e-3,
                    frozenset({"projector"}): PROJECTOR_LR}[frozenset(kinds)]  # fmt: skip
        assert group["initial_lr"] == pytest.approx(expected)


def test_evaluation_during_training_ran(runs):
    trainer, _ = runs["dora"]
    assert [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry] == [2, 4]


# ----------------------------------------------------------------------------------------------------------------
# Loading and merging


@pytest.fixture(scope="module")
def merged(runs, tiny, tmp_path_factory):
    """Each run merged by scripts/merge_lora_weights.py (float32)."""
    done = {}
    for name, (_, output_dir) in runs.items():
        target = tmp_path_factory.mktemp(f"{name}-merged")
        base = tiny.llava if BASES[name] == "llava" else tiny.llm
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "merge_lora_weights.py"), "--model-path", str(output_dir),
             "--model-base", str(base), "--save-model-path", str(target), "--dtype", "float32"],
            check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=600,
        )  # fmt: skip
        done[name] = target
    return done


@pytest.mark.parametrize("name", list(RUNS))
def test_loaded_and_merged_runs_equal_the_trained_model(runs, merged, tiny, name):
    trainer, output_dir = runs[name]
    base = tiny.llava if BASES[name] == "llava" else tiny.llm
    tokenizer, model, processor, _ = load_pretrained_model(output_dir, base, None, device="cpu", dtype=torch.float32)
    assert not any("lora_" in key for key, _ in model.named_parameters())
    ids, images = _inputs(tiny, tokenizer, processor, model.config)
    loaded = _logits(model, ids, images)
    _, merged_model, _, _ = load_pretrained_model(merged[name], None, None, device="cpu", dtype=torch.float32)
    assert (_logits(merged_model, ids, images) - loaded).abs().max() < 1e-4
    if name in QUANTIZED:
        return  # the in-training model computes over 4/8-bit weights; loaded, the LoRA applies to the full-precision base
    # The in-training model, unmerged (for PiSSA: over the residual base W - B0 A0), in fp32.
    trained = _logits(trainer.model.eval(), ids, images)
    assert (trained - loaded).abs().max() < 1e-4


def test_merged_trained_tower_loads_from_the_merged_weights(merged, tiny):
    from safetensors.torch import load_file

    config = load_config(merged["pissa"])
    assert config["unfreeze_mm_vision_tower"] is True  # LLaVA-NeXT's marker: the weights hold the tower
    state = load_file(merged["pissa"] / "model.safetensors")
    assert any("vision_tower" in key for key in state)
    plain = load_file(Path(tiny.vision_tower) / "model.safetensors")[
        "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    ]
    (key,) = [key for key in state if key.endswith("encoder.layers.0.self_attn.q_proj.weight") and "vision" in key]
    assert not torch.equal(state[key], plain)  # the tower LoRA, merged


# ----------------------------------------------------------------------------------------------------------------
# Resume


def test_resumed_pissa_run_continues_exactly(runs, tiny, tmp_path):
    trainer, output_dir = runs["pissa"]
    shutil.copytree(output_dir / "checkpoint-2", tmp_path / "checkpoint-2")
    resumed = train(argv=_argv(tiny, "pissa", tmp_path))
    assert logged_losses(resumed.state.log_history) == logged_losses(trainer.state.log_history)
    for file_name in ("adapter_model.bin", "non_lora_trainables.bin"):
        expected, actual = load_bin(output_dir / file_name), load_bin(tmp_path / file_name)
        assert expected.keys() == actual.keys()
        assert all(torch.allclose(expected[k], actual[k], atol=1e-6) for k in expected), file_name


# ----------------------------------------------------------------------------------------------------------------
# Upstream's own stack (peft 0.10) reads the DoRA + rsLoRA run


@pytest.mark.upstream
def test_upstream_loads_the_dora_and_rslora_run_with_our_logits(runs, upstream, tiny, tmp_path):
    from test_upstream_loading import fp16_tolerance

    _, output_dir = runs["dora"]
    tokenizer, model, processor, _ = load_pretrained_model(
        output_dir, tiny.llm, None, device="cpu", dtype=torch.float16
    )
    ids, images = _inputs(tiny, tokenizer, processor, model.config)
    ours = _logits(model, ids, images.half())
    torch.save({"input_ids": ids, "images": images}, tmp_path / "inputs.pt")
    jobs = [
        dict(name="run", kind="load", model_path=str(output_dir), model_base=str(tiny.llm),
             logits_out=str(tmp_path / "theirs.pt")),
        dict(name="adapter_config", kind="adapter_config", path=str(output_dir)),
    ]  # fmt: skip
    answer = upstream.run("load", dict(inputs=str(tmp_path / "inputs.pt"), prompt=PROMPT, jobs=jobs))
    errors = {name: result["error"] for name, result in answer["results"].items() if "error" in result}
    assert not errors, errors
    assert answer["versions"]["peft"] == "0.10.0"
    read = answer["results"]["adapter_config"]
    assert (read["use_dora"], read["use_rslora"], read["r"]) == (True, True, LORA_R)
    assert not answer["results"]["run"]["lora_left"]  # merged by upstream's builder, DoRA magnitudes included
    theirs = torch.load(tmp_path / "theirs.pt", weights_only=True)
    # Against the exact (fp32) logits: upstream's loader only loads in fp16, and peft 0.10 merges DoRA in fp16 (the
    # weight norms too), which measured 4.6 fp16 steps at the largest logit (ours in fp16: 2.5).
    _, exact_model, _, _ = load_pretrained_model(output_dir, tiny.llm, None, device="cpu", dtype=torch.float32)
    exact = _logits(exact_model, ids, images)
    assert (ours - exact).abs().max() <= fp16_tolerance(exact, ulps=3)
    assert (theirs - exact).abs().max() <= fp16_tolerance(exact, ulps=6)
    # ... far closer than a misread adapter would be: without it the logits move 20 times that much
    trainer, _ = runs["dora"]
    with trainer.model.disable_adapter():
        without = _logits(trainer.model.eval(), ids, images)
    assert (exact - without).abs().max() > 20 * fp16_tolerance(exact, ulps=6)
