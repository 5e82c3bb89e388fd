"""Training under the real `deepspeed` launcher with CPU worker processes (gloo).

- 2-process ZeRO-3 LoRA from the base LLM with `--pretrain_mm_mlp_adapter` (every parameter partitioned:
  `stage3_param_persistence_threshold` 0), through `train_mem.py` plus a dump of the gathered model; then the
  same run resumed from checkpoint-2.
- upstream's `scripts/pretrain.sh` and `scripts/finetune_lora.sh`, unchanged but for paths, on the tiny model.
- two nodes of one process each on the loopback (`torchrun --nnodes 2`, `deepspeed --hostfile --no_ssh`), whose
  losses and weights equal those of the same run on one node of two processes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from launch import (
    DIST_SCRIPTS,
    REPO_ROOT,
    TESTS_DIR,
    deepspeed_node_command,
    free_port,
    launch_deepspeed,
    launch_env,
    launch_nodes,
    torchrun_node_command,
)
from train_helpers import (
    LEARNING_RATE,
    LORA_FILES,
    PROJECTOR_FILES,
    PROJECTOR_KEYS,
    PROJECTOR_LR,
    adapter_key,
    base_llm_weights,
    checkpoints,
    expected_adapter_keys,
    files_in,
    load_bin,
    load_config,
    logged_losses,
    multimodal_flags,
    write_caption_data,
)

pytestmark = [pytest.mark.slow, pytest.mark.dist]

NUM_PROCESSES = 2
DEEPSPEED_RESUME_FILES = {
    "trainer_state.json",
    "scheduler.pt",
    "latest",
    "zero_to_fp32.py",
    "zero_to_torch.py",
    *(f"rng_state_{rank}.pth" for rank in range(NUM_PROCESSES)),
}
DUMP_DIR_ENV = "LLAVA_TEST_DUMP_DIR"
SCRIPT_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def zero3_config(tmp_path_factory) -> Path:
    """Upstream's zero3.json with every parameter partitioned, however small (docs/upstream_differences.md, facts)."""
    config = json.loads((REPO_ROOT / "configs" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path_factory.mktemp("ds") / "zero3_all_partitioned.json"
    path.write_text(json.dumps(config))
    return path


def _run_zero3(tiny, zero3_config, output_dir: Path, dump_dir: Path, **overrides) -> None:
    argv = multimodal_flags(tiny, output_dir, deepspeed=zero3_config, **overrides)
    launch_deepspeed(
        DIST_SCRIPTS / "train_and_dump.py", argv, num_procs=NUM_PROCESSES, env={DUMP_DIR_ENV: str(dump_dir)}
    )


@pytest.fixture(scope="module")
def zero3_run(tiny, zero3_config, tmp_path_factory):
    output_dir, dump_dir = tmp_path_factory.mktemp("zero3-lora"), tmp_path_factory.mktemp("zero3-dump")
    _run_zero3(tiny, zero3_config, output_dir, dump_dir)
    gathered = torch.load(dump_dir / "gathered.pt", weights_only=True)
    record = json.loads((dump_dir / "record.json").read_text())
    return output_dir, gathered, record


def test_zero3_partitions_every_parameter(zero3_run):
    _, _, record = zero3_run
    assert record["world_size"] == NUM_PROCESSES
    layout = record["layout"]
    projector = layout["base_model.model.model.mm_projector.0.weight"]
    assert projector == {"local_numel": 0, "full_shape": [64, 32]}
    lora_a = [entry for name, entry in layout.items() if "lora_A" in name]
    assert len(lora_a) == 14 and all(entry["local_numel"] == 0 for entry in lora_a)
    vision = [entry for name, entry in layout.items() if "vision_tower" in name]
    assert vision and all(entry["local_numel"] == 0 for entry in vision)


def test_zero3_file_sets(zero3_run):
    output_dir, _, _ = zero3_run
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    assert checkpoints(output_dir) == ["checkpoint-2", "checkpoint-4"]
    for checkpoint in checkpoints(output_dir):
        directory = output_dir / checkpoint
        assert files_in(directory) == LORA_FILES | DEEPSPEED_RESUME_FILES, checkpoint
        step = checkpoint.split("-")[1]
        assert (directory / "latest").read_text().strip() == f"global_step{step}"
        assert (directory / f"global_step{step}").is_dir()


def test_zero3_saved_tensors_are_whole_and_equal_the_model(zero3_run):
    output_dir, gathered, _ = zero3_run
    trainable_names = {k for k in gathered if "lora_" in k or "mm_projector" in k}
    adapter = load_bin(output_dir / "adapter_model.bin")
    non_lora = load_bin(output_dir / "non_lora_trainables.bin")
    assert set(adapter) == expected_adapter_keys()
    assert set(non_lora) == {f"base_model.model.model.{key}" for key in PROJECTOR_KEYS}
    for name in trainable_names:
        saved = adapter[adapter_key(name)] if "lora_" in name else non_lora[name]
        assert saved.shape == gathered[name].shape and saved.numel() > 0, name
        assert torch.equal(saved, gathered[name]), name
    # the last checkpoint was written at the last step: the same tensors
    for file_name in ("adapter_model.bin", "non_lora_trainables.bin"):
        final, last = load_bin(output_dir / file_name), load_bin(output_dir / "checkpoint-4" / file_name)
        assert all(torch.equal(final[k], last[k]) for k in final), file_name


def test_zero3_checkpoint_equals_deepspeeds_own_state(zero3_run):
    """checkpoint-2's files equal the fp32 weights DeepSpeed saved for step 2 (its resume state)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    output_dir, _, _ = zero3_run
    deepspeed_state = get_fp32_state_dict_from_zero_checkpoint(str(output_dir / "checkpoint-2"))
    adapter = load_bin(output_dir / "checkpoint-2" / "adapter_model.bin")
    non_lora = load_bin(output_dir / "checkpoint-2" / "non_lora_trainables.bin")
    assert {adapter_key(k) for k in deepspeed_state if "lora_" in k} == set(adapter)
    for name, value in deepspeed_state.items():
        saved = adapter[adapter_key(name)] if "lora_" in name else non_lora[name]
        assert torch.equal(saved, value), name


def test_zero3_trains_lora_and_projector_only(zero3_run, tiny):
    output_dir, gathered, _ = zero3_run
    for name, original in base_llm_weights(tiny).items():
        module, _, leaf = name.rpartition(".")
        key = f"base_model.model.{module}.base_layer.{leaf}"
        assert torch.equal(gathered.get(key, gathered.get(f"base_model.model.{name}")), original), name
    middle = load_bin(output_dir / "checkpoint-2" / "adapter_model.bin")
    final = load_bin(output_dir / "adapter_model.bin")
    assert all(not torch.equal(middle[k], final[k]) for k in final)
    pretrained = load_bin(tiny.projector)
    trained = load_bin(output_dir / "non_lora_trainables.bin")
    for key in PROJECTOR_KEYS:
        before, after = pretrained[f"model.{key}"], trained[f"base_model.model.model.{key}"]
        # loaded into the partitioned projector, then trained a little
        assert not torch.equal(before, after) and (before - after).abs().max() < 4 * 3 * PROJECTOR_LR, key


def test_zero3_projector_learning_rate(zero3_run):
    _, _, record = zero3_run
    # LoRA weights (decay group), projector weights (decay group), projector biases (no-decay group)
    assert [group["initial_lr"] for group in record["param_groups"]] == [LEARNING_RATE, PROJECTOR_LR, PROJECTOR_LR]


def test_zero3_config_records_the_run(zero3_run):
    output_dir, _, _ = zero3_run
    for directory in (output_dir, output_dir / "checkpoint-2"):
        config = load_config(directory)
        assert (config["model_type"], config["use_cache"], config["mm_projector_lr"]) == (
            "llava_llama", True, PROJECTOR_LR,
        )  # fmt: skip


def test_zero3_resume_continues_exactly(zero3_run, tiny, zero3_config, tmp_path):
    output_dir, gathered, _ = zero3_run
    shutil.copytree(output_dir / "checkpoint-2", tmp_path / "out" / "checkpoint-2")
    _run_zero3(tiny, zero3_config, tmp_path / "out", tmp_path / "dump")
    original = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    resumed = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert logged_losses(resumed) == logged_losses(original)
    assert sorted(logged_losses(resumed)) == [1, 2, 3, 4]
    resumed_gathered = torch.load(tmp_path / "dump" / "gathered.pt", weights_only=True)
    assert all(torch.equal(resumed_gathered[k], gathered[k]) for k in gathered)


def test_pretrained_projector_loads_into_partitioned_parameters(tiny, zero3_config, tmp_path):
    """From a LLaVA checkpoint, ZeRO-3 creates the projector partitioned; the adapter must still land whole."""
    dump_dir = tmp_path / "dump"
    _run_zero3(
        tiny, zero3_config, tmp_path / "out", dump_dir,
        model_name_or_path=tiny.llava, max_steps=1, save_steps=10, learning_rate=0.0, mm_projector_lr=0.0,
    )  # fmt: skip
    gathered = torch.load(dump_dir / "gathered.pt", weights_only=True)
    pretrained = load_bin(tiny.projector)
    for key in PROJECTOR_KEYS:
        assert torch.equal(gathered[f"base_model.model.model.{key}"], pretrained[f"model.{key}"]), key


def test_zero3_lora_with_packing_writes_the_usual_files(tiny, zero3_config, tmp_path):
    """--packing under ZeRO-3 on 2 processes: packed rows on each rank (text-only and image batches, modality
    grouped), the usual files everywhere, the packing efficiency in the log."""
    output_dir, dump_dir = tmp_path / "out", tmp_path / "dump"
    _run_zero3(tiny, zero3_config, output_dir, dump_dir, packing=True, per_device_train_batch_size=3)
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    assert checkpoints(output_dir) == ["checkpoint-2", "checkpoint-4"]
    for checkpoint in checkpoints(output_dir):
        assert files_in(output_dir / checkpoint) == LORA_FILES | DEEPSPEED_RESUME_FILES, checkpoint
    adapter = load_bin(output_dir / "adapter_model.bin")
    assert set(adapter) == expected_adapter_keys() and all(value.numel() > 0 for value in adapter.values())
    log_history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    losses = logged_losses(log_history)
    assert sorted(losses) == [1, 2, 3, 4] and all(0 < loss < 20 for loss in losses.values())
    efficiency = [entry["packing_efficiency"] for entry in log_history if "packing_efficiency" in entry]
    assert len(efficiency) >= 4 and all(0.3 < value <= 1.0 for value in efficiency), efficiency


def test_zero2_lora_with_packing_and_invalid_samples_skipped(tiny, tmp_path):
    """--packing under upstream's zero2.json on 2 processes: the usual files and the packing efficiency. The data
    has a broken sample in each rank's half of the pre-check (--skip_invalid_samples): every rank learns of both
    from the gathered report and drops the same two; each node's record store leaves nothing in the temp folder."""
    output_dir, dump_dir, temp = tmp_path / "out", tmp_path / "dump", tmp_path / "tmp"
    temp.mkdir()
    records = json.loads(Path(tiny.data).read_text())
    gone = {"id": "gone", "image": "missing/nowhere.png", "conversations": records[0]["conversations"]}
    no_reply = {"id": "no-reply", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}]}
    data = tmp_path / "data.json"
    data.write_text(json.dumps([gone, *records, no_reply]))  # records 0 and 49: rank 0's and rank 1's halves
    argv = multimodal_flags(
        tiny, output_dir, deepspeed=REPO_ROOT / "configs" / "zero2.json", packing=True, max_steps=2,
        data_path=data, skip_invalid_samples=True,
    )  # fmt: skip
    result = launch_deepspeed(
        DIST_SCRIPTS / "train_and_dump.py", argv, num_procs=NUM_PROCESSES,
        env={DUMP_DIR_ENV: str(dump_dir), "TMPDIR": str(temp)},
    )  # fmt: skip
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    log_history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert sorted(logged_losses(log_history)) == [1, 2]
    assert any("packing_efficiency" in entry for entry in log_history)
    log = result.stdout + result.stderr
    for ident in ("gone", "no-reply"):  # logged by both ranks (rank 1 logs warnings too)
        assert log.count(f"skipping sample {ident!r}") == NUM_PROCESSES, ident
    summary = f"--skip_invalid_samples: dropped 2 of {len(records) + 2} samples of {data}; training on the other 48"
    assert log.count(summary) == NUM_PROCESSES
    assert json.loads((dump_dir / "record.json").read_text())["train_samples"] == [len(records)] * NUM_PROCESSES
    assert not [path.name for path in temp.iterdir() if path.name.startswith("llava-records-")]


def test_qlora_4bit_under_zero3(tiny, zero3_config, tmp_path):
    """Upstream's QLoRA always passes device_map, which ZeRO-3 refuses (upstream #1692); here it shards. With
    upstream's default --mm_use_im_patch_token True the added token's rows are gathered whole and saved beside the
    projector (docs/upstream_differences.md #20)."""
    output_dir, dump_dir = tmp_path / "out", tmp_path / "dump"
    _run_zero3(tiny, zero3_config, output_dir, dump_dir, bits=4, max_steps=2, mm_use_im_patch_token=True)
    non_lora = load_bin(output_dir / "non_lora_trainables.bin")
    rows = {key: value for key, value in non_lora.items() if key.endswith(".added_rows")}
    assert {key: tuple(value.shape) for key, value in rows.items()} == {
        "base_model.model.model.embed_tokens.weight.added_rows": (1, 64),
        "base_model.model.lm_head.weight.added_rows": (1, 64),
    }
    from llava.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(output_dir, tiny.llm, None, device="cpu")
    assert torch.equal(model.get_output_embeddings().weight[-1:], rows["base_model.model.lm_head.weight.added_rows"])
    record = json.loads((dump_dir / "record.json").read_text())
    quantized = record["layout"]["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    # A 64x64 nf4 weight packs into 2048 bytes, stored as 512 fp32 "elements"; none of it stays on either rank.
    assert quantized == {"local_numel": 0, "full_shape": [512, 1]}
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    assert json.loads((output_dir / "adapter_config.json").read_text())["target_modules"]
    gathered = torch.load(dump_dir / "gathered.pt", weights_only=True)
    adapter = load_bin(output_dir / "adapter_model.bin")
    assert set(adapter) == expected_adapter_keys()
    for name, value in gathered.items():
        if "lora_" in name:
            assert torch.equal(adapter[adapter_key(name)], value), name
    assert all(adapter[key].abs().sum() > 0 for key in adapter if "lora_B" in key)  # B starts at zero
    losses = logged_losses(json.loads((output_dir / "trainer_state.json").read_text())["log_history"])
    assert sorted(losses) == [1, 2] and all(loss == loss for loss in losses.values())


# ----------------------------------------------------------------------------------------------------------------
# Two nodes on one machine (issue 19): one launcher per node, one process each, against the same run on one node


@pytest.fixture(scope="module")
def zero2_run(tiny, tmp_path_factory):
    """The 4-step LoRA run under upstream's zero2.json on one node of 2 processes (zero3_run is ZeRO-3's)."""
    output_dir, dump_dir = tmp_path_factory.mktemp("zero2-lora"), tmp_path_factory.mktemp("zero2-dump")
    argv = multimodal_flags(tiny, output_dir, deepspeed=REPO_ROOT / "configs" / "zero2.json")
    launch_deepspeed(
        DIST_SCRIPTS / "train_and_dump.py", argv, num_procs=NUM_PROCESSES, env={DUMP_DIR_ENV: str(dump_dir)}
    )
    return output_dir, torch.load(dump_dir / "gathered.pt", weights_only=True)


def _node_commands(launcher: str, argv: list[str], port: int, folder: Path) -> list[list[str]]:
    script = DIST_SCRIPTS / "train_and_dump.py"
    if launcher == "torchrun":
        return [
            torchrun_node_command(script, argv, nnodes=NUM_PROCESSES, node_rank=node, port=port)
            for node in range(NUM_PROCESSES)
        ]
    hostfile = folder / "hostfile"  # with --no_ssh the names are labels: both nodes are this machine
    hostfile.write_text("".join(f"node-{node} slots=1\n" for node in range(NUM_PROCESSES)))
    return [
        deepspeed_node_command(script, argv, hostfile=hostfile, node_rank=node, port=port)
        for node in range(NUM_PROCESSES)
    ]


@pytest.mark.parametrize(
    "stage, launcher, shared_tmp",
    [("zero2", "torchrun", True), ("zero3", "deepspeed", False)],
    ids=["zero2-torchrun-shared-tmp", "zero3-deepspeed-hostfile-own-tmp"],
)
def test_two_nodes_train_as_one(request, tiny, zero3_config, tmp_path, stage, launcher, shared_tmp):
    """--nnodes 2, one process per node, --dataloader_num_workers 2: both launchers exit 0, the run's files and
    checkpoints are complete, finite and load, and the losses, the trained weights and the saved tensors are
    exactly those of the 2-process run on one node (zero2_run / zero3_run: same flags and data, no workers).
    With a shared temp folder both nodes' local rank 0 used to build the record store at one path."""
    reference_dir, reference_gathered = request.getfixturevalue(f"{stage}_run")[:2]
    config = zero3_config if stage == "zero3" else REPO_ROOT / "configs" / "zero2.json"
    output_dir, dump_dir = tmp_path / "out", tmp_path / "dump"
    temps = [tmp_path / ("tmp" if shared_tmp else f"tmp{node}") for node in range(NUM_PROCESSES)]
    for temp in temps:
        temp.mkdir(exist_ok=True)
    argv = multimodal_flags(tiny, output_dir, deepspeed=config, dataloader_num_workers=2)
    port = free_port()
    launch_nodes(
        _node_commands(launcher, argv, port, tmp_path),
        port,
        envs=[{DUMP_DIR_ENV: str(dump_dir), "TMPDIR": str(temp)} for temp in temps],
    )

    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    assert checkpoints(output_dir) == ["checkpoint-2", "checkpoint-4"]
    for checkpoint in checkpoints(output_dir):
        assert files_in(output_dir / checkpoint) == LORA_FILES | DEEPSPEED_RESUME_FILES, checkpoint
    for temp in temps:  # each node's store is gone
        assert not [path.name for path in temp.iterdir() if path.name.startswith("llava-records-")]
    assert json.loads((dump_dir / "record.json").read_text())["world_size"] == NUM_PROCESSES

    losses = logged_losses(json.loads((output_dir / "trainer_state.json").read_text())["log_history"])
    reference = logged_losses(json.loads((reference_dir / "trainer_state.json").read_text())["log_history"])
    assert sorted(losses) == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(list(losses.values()))))
    assert losses == reference
    gathered = torch.load(dump_dir / "gathered.pt", weights_only=True)
    assert set(gathered) == set(reference_gathered)
    assert all(torch.equal(gathered[name], reference_gathered[name]) for name in gathered)
    for directory in (output_dir, output_dir / "checkpoint-2"):
        for file_name in ("adapter_model.bin", "non_lora_trainables.bin"):
            saved = load_bin(directory / file_name)
            expected = load_bin(reference_dir / directory.relative_to(output_dir) / file_name)
            assert set(saved) == set(expected) and saved, (directory, file_name)
            for key, value in saved.items():
                assert value.numel() > 0 and torch.isfinite(value).all(), (directory, key)
                assert torch.equal(value, expected[key]), (directory, key)
        _loads_and_merges(directory, tiny.llm)


# ----------------------------------------------------------------------------------------------------------------
# upstream's scripts, unchanged but for paths


def _run_script(name: str, env: dict) -> subprocess.CompletedProcess:
    child_env = launch_env([TESTS_DIR])
    child_env.update(env)
    child_env["LAUNCHER_ARGS"] = f"--master_port {free_port()}"
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / name)],
        cwd=REPO_ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result


def test_upstream_scripts_pretrain_then_finetune_lora(tiny, tmp_path):
    image_data = write_caption_data(tiny, tmp_path / "captions.json")
    paths = {
        "MODEL_VERSION": "vicuna-tiny",
        "MODEL_PATH": str(tiny.llm),
        "IMAGE_FOLDER": str(tiny.image_folder),
        "VISION_TOWER": str(tiny.vision_tower),
    }
    pretrain_dir = tmp_path / "llava-tiny-pretrain"
    _run_script("pretrain.sh", {**paths, "DATA_PATH": str(image_data), "OUTPUT_DIR": str(pretrain_dir)})
    assert PROJECTOR_FILES <= files_in(pretrain_dir)
    projector = load_bin(pretrain_dir / "mm_projector.bin")
    assert {k: tuple(v.shape) for k, v in projector.items()} == {
        "model.mm_projector.weight": (64, 32), "model.mm_projector.bias": (64,),
    }  # fmt: skip

    lora_dir = tmp_path / "llava-tiny-finetune_lora"
    finetune_env = {
        **paths,
        "PROMPT_VERSION": "v1",
        "DATA_PATH": str(tiny.data),
        "PRETRAIN_MM_MLP_ADAPTER": str(pretrain_dir / "mm_projector.bin"),
        "OUTPUT_DIR": str(lora_dir),
    }
    result = _run_script("finetune_lora.sh", finetune_env)
    assert "using PyTorch SDPA attention" in result.stdout + result.stderr
    assert LORA_FILES <= files_in(lora_dir)
    adapter = load_bin(lora_dir / "adapter_model.bin")
    assert set(adapter) == expected_adapter_keys()
    assert json.loads((lora_dir / "adapter_config.json").read_text())["r"] == 64  # upstream's default lora_r
    config = load_config(lora_dir)
    assert (config["mm_projector_type"], config["tokenizer_model_max_length"]) == ("linear", 2048)


# ----------------------------------------------------------------------------------------------------------------
# The peers' flags (issue 20) under DeepSpeed: each run's files, its optimizer groups, and the saved tensors equal to
# the trained (gathered) model; loading through load_pretrained_model


def _loads_and_merges(output_dir: Path, base) -> None:
    from llava.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(output_dir, base, None, device="cpu", dtype=torch.float32)
    assert not any("lora_" in name for name, _ in model.named_parameters())


def test_zero3_dora_tower_loraplus_neftune_packing(tiny, zero3_config, tmp_path):
    output_dir, dump_dir = tmp_path / "out", tmp_path / "dump"
    _run_zero3(
        tiny, zero3_config, output_dir, dump_dir, use_dora=True, loraplus_lr_ratio=4, neftune_noise_alpha=5,
        unfreeze_mm_vision_tower=True, mm_vision_tower_lr=1e-4, packing=True,
    )  # fmt: skip
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    for checkpoint in checkpoints(output_dir):
        assert files_in(output_dir / checkpoint) == LORA_FILES | DEEPSPEED_RESUME_FILES, checkpoint
    record = json.loads((dump_dir / "record.json").read_text())
    # lora_A (decay); B + magnitudes at 4 x lr (decay); projector (decay, no decay); tower (decay, no decay)
    assert [group["initial_lr"] for group in record["param_groups"]] == pytest.approx(
        [LEARNING_RATE, 4 * LEARNING_RATE, PROJECTOR_LR, PROJECTOR_LR, 1e-4, 1e-4]
    )
    gathered = torch.load(dump_dir / "gathered.pt", weights_only=True)
    adapter = load_bin(output_dir / "adapter_model.bin")
    non_lora = load_bin(output_dir / "non_lora_trainables.bin")
    assert sum("lora_magnitude_vector" in key for key in adapter) == 14
    tower = [key for key in non_lora if "vision_tower" in key]
    assert tower and all(torch.equal(non_lora[key], gathered[key]) for key in tower)
    for name, value in gathered.items():
        if "lora_" in name:
            saved = adapter[adapter_key(name).removesuffix(".weight") if "magnitude" in name else adapter_key(name)]
            assert torch.equal(saved, value), name
    _loads_and_merges(output_dir, tiny.llm)


def test_zero2_pissa_with_tower_lora_and_rslora(tiny, tmp_path):
    output_dir, dump_dir = tmp_path / "out", tmp_path / "dump"
    argv = multimodal_flags(
        tiny, output_dir, deepspeed=REPO_ROOT / "configs" / "zero2.json", init_lora_weights="pissa",
        lora_vision_tower=True, use_rslora=True, max_steps=2, save_steps=2,
    )  # fmt: skip
    launch_deepspeed(
        DIST_SCRIPTS / "train_and_dump.py", argv, num_procs=NUM_PROCESSES, env={DUMP_DIR_ENV: str(dump_dir)}
    )
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
    adapter_config = json.loads((output_dir / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["init_lora_weights"], adapter_config["use_rslora"]) == (8, True, True)
    gathered = torch.load(dump_dir / "gathered.pt", weights_only=True)
    adapter = load_bin(output_dir / "adapter_model.bin")
    assert any("vision_tower" in key for key in adapter)
    for name, value in gathered.items():  # the first r rows / columns of the rank-2r adapter are the trained A, B
        if ".lora_A." in name:
            assert torch.equal(adapter[adapter_key(name)][: value.shape[0]], value), name
        elif ".lora_B." in name:
            assert torch.equal(adapter[adapter_key(name)][:, : value.shape[1]], value), name
    _loads_and_merges(output_dir, tiny.llm)
