"""Upstream's LLaVA-1.5 scripts, run as files, unchanged, through the `deepspeed` launcher on this CPU machine.

Each run happens in a directory laid out as upstream's README asks (`./playground/data/llava_v1_5_mix665k.json` and
its images, `./scripts/zero3.json`, `./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin`, `llava/` for
`llava/train/train_mem.py`), with the hub ids served by the offline cache of tiny stand-ins. Only the data is small.
The scripts name no `--num_gpus`: the launcher starts one process per device DeepSpeed's CPU accelerator reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_cache import use_hub_cache
from launch import REPO_ROOT, TEST_TIMEOUT_S, launch_env
from train_helpers import LORA_FILES, files_in, load_bin, load_config

from llava.model.builder import load_pretrained_model
from llava.model.hub import resolve_model_dir
from llava.testing import hub as tiny_hub
from llava.testing import sizes as tiny_sizes

SCRIPTS = REPO_ROOT / "scripts" / "v1_5"
# One optimizer step at upstream's batch size of 16, on the one process the CPU accelerator reports here.
NUM_SAMPLES = 16
UPSTREAM_DEFAULT_PORT = 29500  # the launcher's --master_port when a script names none


def _playground(tiny, root: Path) -> Path:
    """A working directory laid out like upstream's, with the tiny dataset as llava_v1_5_mix665k.json."""
    data_dir = root / "playground" / "data"
    shutil.copytree(tiny.image_folder, data_dir)
    records = json.loads(Path(tiny.data).read_text())[:NUM_SAMPLES]
    (data_dir / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    (root / "scripts").mkdir()
    for name in ("zero2.json", "zero3.json", "zero3_offload.json"):
        shutil.copyfile(REPO_ROOT / "scripts" / name, root / "scripts" / name)
    pretrain = root / "checkpoints" / "llava-v1.5-13b-pretrain"
    pretrain.mkdir(parents=True)
    shutil.copyfile(tiny.projector, pretrain / "mm_projector.bin")
    (root / "llava").symlink_to(REPO_ROOT / "llava", target_is_directory=True)
    return root


def _run_script(script: str, cwd: Path, hf_home: Path) -> subprocess.CompletedProcess[str]:
    from llava.distributed import hygiene

    env = launch_env()
    env.update(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_OFFLINE="1")
    try:
        return subprocess.run(
            ["bash", str(SCRIPTS / script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S
        )
    finally:
        hygiene.unlink_shm_segments(UPSTREAM_DEFAULT_PORT)


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize(
    ("script", "output", "base"),
    [
        ("finetune_lora.sh", "llava-v1.5-13b-lora", tiny_hub.VICUNA_13B_REPO),
        ("finetune_task_lora.sh", "llava-v1.5-13b-task-lora", tiny_hub.LLAVA_13B_REPO),
    ],
)
def test_upstream_lora_script_runs_unchanged(tiny, hub_cache, tmp_path, script, output, base):
    cwd = _playground(tiny, tmp_path)
    result = _run_script(script, cwd, hub_cache)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert log.count("--report_to wandb was given but wandb is not installed") >= 1
    output_dir = cwd / "checkpoints" / output
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    adapter = load_bin(output_dir / "adapter_model.bin")
    non_lora = load_bin(output_dir / "non_lora_trainables.bin")
    assert adapter and set(non_lora) == {
        f"base_model.model.model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }
    for state in (adapter, non_lora):
        assert all(torch.isfinite(tensor).all() and tensor.dtype == torch.bfloat16 for tensor in state.values())
    lora_a = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert lora_a.shape == (128, tiny_sizes.LLM_HIDDEN)  # --lora_r 128
    config = load_config(output_dir)
    assert (config["model_type"], config["mm_vision_tower"]) == ("llava_llama", tiny_hub.CLIP_336_REPO)
    assert json.loads((output_dir / "adapter_config.json").read_text())["r"] == 128

    # The run loads back over the hub id it was trained from, as upstream's README does it.
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_hub_cache(monkeypatch, hub_cache)
        _, model, processor, _ = load_pretrained_model(output_dir, base, device="cpu")
    assert processor is not None and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.dist
def test_extract_mm_projector_from_the_release(hub, tmp_path):
    output = tmp_path / "mm_projector.bin"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "extract_mm_projector.py"), "--model-path",
         tiny_hub.LLAVA_7B_REPO, "--output", str(output)],
        capture_output=True, text=True, env=launch_env(), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    extracted = load_bin(output)
    release = resolve_model_dir(tiny_hub.LLAVA_7B_REPO)
    index = json.loads((release / "pytorch_model.bin.index.json").read_text())["weight_map"]
    expected_keys = {key for key in index if "mm_projector" in key}
    assert set(extracted) == expected_keys and len(expected_keys) == 4
    shard = load_bin(release / index["model.mm_projector.0.weight"])
    assert torch.equal(extracted["model.mm_projector.0.weight"], shard["model.mm_projector.0.weight"])
