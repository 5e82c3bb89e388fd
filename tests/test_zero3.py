"""ZeRO-3 gather helpers (`llava.distributed.zero3`) and CPU DeepSpeed setup (`llava.distributed.state`).

Single-process tests run in this process on a tiny PEFT LoRA Llama. Multi-process tests launch the
real `deepspeed` launcher with two CPU workers (gloo) running scripts from tests/dist_scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from dist_scripts.tiny_peft import LORA_TARGETS, NUM_LAYERS, add_lora_and_projector, save_tiny_llama
from launch import DIST_SCRIPTS, REPO_ROOT, TESTS_DIR, launch_deepspeed
from peft import PeftModel
from safetensors.torch import load_file

from llava.distributed import state as distributed
from llava.distributed.zero3 import (
    ALONE_BYTES,
    _take_gathered,
    gather_to_cpu,
    get_mm_adapter_state_maybe_zero_3,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
    maybe_zero_3,
    plan_buckets,
)

PREFIX = "base_model.model.model"
PROJECTOR_KEYS = {f"{PREFIX}.mm_projector.{index}.{kind}" for index in (0, 2) for kind in ("weight", "bias")}
MODULE_PATH = {"q_proj": "self_attn.q_proj", "v_proj": "self_attn.v_proj", "gate_proj": "mlp.gate_proj"}
LORA_KEYS = {
    f"{PREFIX}.layers.{layer}.{MODULE_PATH[target]}.lora_{ab}.default.weight"
    for layer in range(NUM_LAYERS)
    for target in LORA_TARGETS
    for ab in ("A", "B")
}
# Biases of the modules that carry LoRA (q/v; gate_proj has none), where PEFT keeps them.
LORA_MODULE_BIAS_KEYS = {
    f"{PREFIX}.layers.{layer}.self_attn.{proj}.base_layer.bias"
    for layer in range(NUM_LAYERS)
    for proj in ("q_proj", "v_proj")
}
OTHER_BIAS_KEYS = {
    f"{PREFIX}.layers.{layer}.self_attn.{proj}.bias" for layer in range(NUM_LAYERS) for proj in ("k_proj", "o_proj")
} | {key for key in PROJECTOR_KEYS if key.endswith(".bias")}
EXPECTED_PEFT_KEYS = {
    "none": LORA_KEYS,
    "all": LORA_KEYS | LORA_MODULE_BIAS_KEYS | OTHER_BIAS_KEYS,
    "lora_only": LORA_KEYS | LORA_MODULE_BIAS_KEYS,
}
HELPER_STATES = ("peft_none", "peft_all", "peft_lora_only", "non_lora_trainable", "non_lora_all", "mm_adapter")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def build_peft_model(model_dir: Path, bias: str = "none") -> PeftModel:
    return add_lora_and_projector(transformers.LlamaForCausalLM.from_pretrained(model_dir), bias=bias)


@pytest.fixture(scope="module")
def peft_model(model_dir: Path) -> PeftModel:
    return build_peft_model(model_dir)


# --- single process ----------------------------------------------------------------------------


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_peft_state_keys_per_bias_mode(peft_model: PeftModel, bias: str) -> None:
    state = get_peft_state_maybe_zero_3(peft_model.named_parameters(), bias)
    assert set(state) == EXPECTED_PEFT_KEYS[bias]


def test_unknown_bias_mode_is_rejected(peft_model: PeftModel) -> None:
    with pytest.raises(ValueError, match="lora_bias must be one of 'none', 'all', 'lora_only'; got 'some'"):
        get_peft_state_maybe_zero_3(peft_model.named_parameters(), "some")


def test_helpers_return_detached_cpu_clones(peft_model: PeftModel) -> None:
    params = dict(peft_model.named_parameters())
    state = get_peft_state_maybe_zero_3(peft_model.named_parameters(), "all")
    for key, copy in state.items():
        assert copy.device == torch.device("cpu")
        assert not copy.requires_grad and copy.grad_fn is None
        assert copy.shape == params[key].shape and copy.dtype == params[key].dtype
        assert torch.equal(copy, params[key])
        assert copy.data_ptr() != params[key].data_ptr()
    key = next(iter(LORA_KEYS))
    before = state[key].clone()
    with torch.no_grad():
        params[key].add_(1.0)
    try:
        assert torch.equal(state[key], before)
    finally:
        with torch.no_grad():
            params[key].sub_(1.0)


@pytest.mark.parametrize(
    ("require_grad_only", "expected"),
    [(True, "projector"), (False, "all_non_lora")],
)
def test_non_lora_state(peft_model: PeftModel, require_grad_only: bool, expected: str) -> None:
    state = get_peft_state_non_lora_maybe_zero_3(peft_model.named_parameters(), require_grad_only=require_grad_only)
    all_non_lora = {name for name, _ in peft_model.named_parameters() if "lora_" not in name}
    assert set(state) == (PROJECTOR_KEYS if expected == "projector" else all_non_lora)
    assert PROJECTOR_KEYS < all_non_lora and len(all_non_lora) == 33


@pytest.mark.parametrize(
    ("keys_to_match", "expected"),
    [
        (["mm_projector"], PROJECTOR_KEYS),
        (["mm_projector", "embed_tokens"], PROJECTOR_KEYS | {f"{PREFIX}.embed_tokens.weight"}),
        (["vision_resampler"], set()),
    ],
)
def test_mm_adapter_state_keys(peft_model: PeftModel, keys_to_match: list[str], expected: set[str]) -> None:
    assert set(get_mm_adapter_state_maybe_zero_3(peft_model.named_parameters(), keys_to_match)) == expected


def test_gather_accepts_mapping_and_keeps_order(peft_model: PeftModel) -> None:
    named = dict(reversed(list(peft_model.named_parameters())))
    assert list(gather_to_cpu(named)) == list(named)
    with pytest.raises(ValueError, match="bucket_bytes must be >= 0"):
        gather_to_cpu(named, bucket_bytes=-1)


MIB = 2**20


@pytest.mark.parametrize(
    ("sizes", "bucket_bytes", "plan"),
    [
        # Small tensors fill buckets in order; the one that would overflow starts the next bucket.
        ([100, 200, 300, 400], 600, [[0, 1, 2], [3]]),
        ([100, 200, 300, 400], 300, [[0, 1], [2], [3]]),
        # A tensor of ALONE_BYTES or more is gathered alone, when it comes; the open bucket goes on filling.
        ([100, MIB, 200, 3 * MIB, 300], 256 * MIB, [[1], [3], [0, 2, 4]]),
        ([MIB - 1, MIB, 2], 256 * MIB, [[1], [0, 2]]),
        # A bucket never passes bucket_bytes, even with the big ones left out.
        ([600, MIB, 600, 600], 1200, [[1], [0, 2], [3]]),
        # 0: every tensor alone, in order (upstream's one context per tensor).
        ([100, MIB, 200], 0, [[0], [1], [2]]),
        ([], 256 * MIB, []),
    ],
)
def test_plan_buckets(sizes: list[int], bucket_bytes: int, plan: list[list[int]]) -> None:
    assert ALONE_BYTES == MIB
    assert plan_buckets(sizes, bucket_bytes) == plan


def test_gathered_buffer_is_returned_only_when_it_holds_exactly_that_tensor() -> None:
    """`_take_gathered` inside a gather: the fresh CPU buffer itself, else a copy (padded buffer, own partition)."""
    partition = torch.arange(6.0)

    def param_with(data: torch.Tensor) -> torch.nn.Parameter:
        param = torch.nn.Parameter(data, requires_grad=True)
        param.ds_tensor = partition
        return param

    fresh = param_with(torch.arange(12.0).view(3, 4))
    taken = _take_gathered(fresh)
    assert taken.untyped_storage().data_ptr() == fresh.data.untyped_storage().data_ptr()
    assert not taken.requires_grad and torch.equal(taken, torch.arange(12.0).view(3, 4))
    padded = param_with(torch.arange(12.0).narrow(0, 0, 11))  # 11 elements in a buffer of 12 (2 ranks x 6)
    for param in (padded, param_with(partition.view(2, 3))):  # world size 1: the data is the partition
        taken = _take_gathered(param)
        assert taken.untyped_storage().data_ptr() != param.data.untyped_storage().data_ptr()
        assert torch.equal(taken, param.data) and taken.untyped_storage().nbytes() == taken.numel() * 4


def test_maybe_zero_3_copies_plain_tensor() -> None:
    tensor = torch.arange(6.0, requires_grad=True).reshape(2, 3)
    copy = maybe_zero_3(tensor, name="t")
    assert torch.equal(copy, tensor.detach()) and not copy.requires_grad
    assert copy.data_ptr() != tensor.data_ptr()


def test_no_deepspeed_import_without_zero3() -> None:
    code = (
        "import sys, torch\n"
        "from llava.distributed.zero3 import get_peft_state_non_lora_maybe_zero_3\n"
        "state = get_peft_state_non_lora_maybe_zero_3(torch.nn.Linear(2, 3).named_parameters())\n"
        "assert sorted(state) == ['bias', 'weight'], state\n"
        "assert 'deepspeed' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_state_round_trips_through_peft_save_pretrained(model_dir: Path, tmp_path: Path, bias: str) -> None:
    """peft 0.21 `save_pretrained(state_dict=...)` wants the model's own keys (adapter name and
    `base_layer` included), strips `.default`, and re-filters biases by `LoraConfig.bias`."""
    model = build_peft_model(model_dir, bias=bias)
    state = get_peft_state_maybe_zero_3(model.named_parameters(), bias)
    model.save_pretrained(tmp_path, state_dict=state)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert set(saved) == {key.replace(".default", "") for key in EXPECTED_PEFT_KEYS[bias]}
    for key, value in state.items():
        assert torch.equal(saved[key.replace(".default", "")], value)

    reloaded = PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(model_dir), tmp_path)
    reloaded_params = dict(reloaded.named_parameters())
    for key in LORA_KEYS | (LORA_MODULE_BIAS_KEYS if bias != "none" else set()):
        assert torch.equal(reloaded_params[key], state[key]), key


def test_distributed_helpers_without_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()) == (0, 1, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()) == (3, 4, False)


@pytest.mark.parametrize("config", [None, ""])
def test_init_distributed_state_without_deepspeed_is_noop(config: str | None) -> None:
    assert distributed.init_distributed_state(config) == {}


@pytest.mark.slow
@pytest.mark.dist
def test_single_process_deepspeed_on_cpu(model_dir: Path, tmp_path: Path) -> None:
    """`python train.py --deepspeed zero3.json` without a launcher: without the fix DeepSpeed
    tries MPI discovery and dies with "No module named 'mpi4py'"."""
    env_without_launcher = {
        key: value
        for key, value in os.environ.items()
        if key not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    }
    env_without_launcher["OMP_NUM_THREADS"] = "1"
    env_without_launcher["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)])
    subprocess.run(
        [sys.executable, str(DIST_SCRIPTS / "single_process_deepspeed.py"), str(model_dir), str(tmp_path)],
        cwd=REPO_ROOT,
        env=env_without_launcher,
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == {
        "launcher_env_before": False,
        "extra_args": {"accelerator_config": {"use_configured_state": True}, "use_cpu": True},
        "deepspeed_state": True,
        "zero3": True,
        "rank": 0,
        "world_size": 1,
        "main": True,
        "embed_partitioned": True,
        "global_step": 2,
    }


# --- two processes, ZeRO-3 over gloo ------------------------------------------------------------


def run_zero3_gather(model_dir: Path, out_dir: Path, persistence_threshold: str) -> list[dict]:
    launch_deepspeed(
        DIST_SCRIPTS / "zero3_gather.py",
        [str(model_dir), str(out_dir), "--persistence-threshold", persistence_threshold],
    )
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.fixture(scope="module")
def zero3_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every tensor partitioned (persistence threshold 0)."""
    return run_zero3_gather(model_dir, tmp_path_factory.mktemp("zero3_gather"), "0")


@pytest.fixture(scope="module")
def single_process_states(model_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    model = build_peft_model(model_dir)
    named = list(model.named_parameters())
    return {
        "peft_none": get_peft_state_maybe_zero_3(named, "none"),
        "peft_all": get_peft_state_maybe_zero_3(named, "all"),
        "peft_lora_only": get_peft_state_maybe_zero_3(named, "lora_only"),
        "non_lora_trainable": get_peft_state_non_lora_maybe_zero_3(named),
        "non_lora_all": get_peft_state_non_lora_maybe_zero_3(named, require_grad_only=False),
        "mm_adapter": get_mm_adapter_state_maybe_zero_3(named, ["mm_projector"]),
    }


@pytest.mark.slow
@pytest.mark.dist
def test_zero3_partitions_every_tensor(zero3_run: list[dict]) -> None:
    for record in zero3_run:
        assert record["world_size"] == 2
        assert record["shm_op_loaded"] and record["shm_segments_left"] == []
        assert record["available_before"] == record["available_after"] == []
        for layout in ("layout_trained", "layout_after_gather"):
            for name, (local_numel, full_numel, full_shape) in record[layout].items():
                assert local_numel == 0 and full_numel == torch.Size(full_shape).numel() > 0, (layout, name)
        # from_pretrained under zero.Init partitions the base model; LoRA and projector are created
        # afterwards and are partitioned when the Trainer wraps the model.
        for name, (local_numel, full_numel, _) in record["layout_loaded"].items():
            is_added = "lora_" in name or "mm_projector" in name
            assert (local_numel > 0 and full_numel == -1) if is_added else local_numel == 0, name


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("state", HELPER_STATES)
def test_zero3_gather_equals_single_process_build(
    zero3_run: list[dict], single_process_states: dict[str, dict[str, torch.Tensor]], state: str
) -> None:
    expected = single_process_states[state]
    for record in zero3_run:
        gathered = record["before"][state]
        assert list(gathered) == list(expected)
        for key, value in expected.items():
            assert torch.equal(gathered[key], value), key


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("variant", ["after", "after_per_tensor", "after_small"])
def test_zero3_gather_after_training_equals_one_by_one(zero3_run: list[dict], variant: str) -> None:
    for record in zero3_run:
        reference = record["reference"]
        layout = record["layout_trained"]
        assert set(record[variant]["peft_lora_only"]) == EXPECTED_PEFT_KEYS["lora_only"]
        for state in HELPER_STATES:
            for key, value in record[variant][state].items():
                assert value.shape == torch.Size(layout[key][2]), key
                assert torch.equal(value, reference[key]), (state, key)


@pytest.mark.slow
@pytest.mark.dist
def test_zero3_gather_inside_an_enclosing_gather(zero3_run: list[dict]) -> None:
    """Parameters another context already gathered are copied as they are, not gathered again."""
    for record in zero3_run:
        assert set(record["inside_gather"]) == PROJECTOR_KEYS
        for key, value in record["inside_gather"].items():
            assert torch.equal(value, record["reference"][key]), key


@pytest.mark.slow
@pytest.mark.dist
def test_zero3_training_changed_only_trainable_weights(
    zero3_run: list[dict], single_process_states: dict[str, dict[str, torch.Tensor]]
) -> None:
    record = zero3_run[0]
    assert len(record["losses"]) == 3
    initial = single_process_states["non_lora_all"] | single_process_states["peft_none"]
    trainable = LORA_KEYS | PROJECTOR_KEYS
    for key, value in initial.items():
        changed = not torch.equal(record["reference"][key], value)
        assert changed == (key in trainable), key
    assert torch.equal(record["maybe_zero_3_embed"], initial[f"{PREFIX}.embed_tokens.weight"])


@pytest.mark.slow
@pytest.mark.dist
def test_zero3_helpers_keep_persistent_parameters_whole(model_dir: Path, tmp_path: Path) -> None:
    """With upstream's "auto" threshold small tensors stay whole on every rank (ZeRO-3 status
    AVAILABLE). The helpers copy them without a gather, leave them whole, and gather only the rest;
    upstream's per-tensor `GatheredParameters` re-partitions (frees) them on exit."""
    for record in run_zero3_gather(model_dir, tmp_path, "auto"):
        persistent = set(record["available_before"])
        # 10 x hidden (320): the LoRA tensors, biases and norms; not the 32x32 and larger weights.
        assert len(persistent) == 27 and LORA_KEYS < persistent
        assert record["available_after"] == record["available_before"]
        gathered_per_call = [sum(key not in persistent for key in record["after"][state]) for state in HELPER_STATES]
        assert gathered_per_call == [0, 0, 0, 2, 18, 2]
        assert record["sizes_default"] == [2, 18, 2]  # calls with nothing to gather open no context
        for state in HELPER_STATES:
            for key, value in record["after"][state].items():
                assert torch.equal(value, record["reference"][key]), (state, key)


def greedy_bucket_sizes(tensors: list[torch.Tensor], bucket_bytes: int) -> list[int]:
    """How many tensors each bucket holds when filled in order up to bucket_bytes."""
    sizes: list[int] = []
    used = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if sizes and used + nbytes <= bucket_bytes:
            sizes[-1] += 1
            used += nbytes
        else:
            sizes.append(1)
            used = nbytes
    return sizes


@pytest.mark.slow
@pytest.mark.dist
def test_zero3_gathers_in_buckets(zero3_run: list[dict]) -> None:
    small_bucket_bytes = 4096  # SMALL_BUCKET_BYTES in dist_scripts/zero3_gather.py
    for record in zero3_run:
        states = [list(record["after"][state].values()) for state in HELPER_STATES]
        # Default bucket (256 MiB): one GatheredParameters context per helper call.
        assert record["sizes_default"] == [len(tensors) for tensors in states] == [12, 22, 16, 4, 33, 4]
        # bucket_bytes=0: upstream's one context per tensor.
        assert record["sizes_per_tensor"] == [1] * sum(len(tensors) for tensors in states)
        expected_small = [size for tensors in states for size in greedy_bucket_sizes(tensors, small_bucket_bytes)]
        assert record["sizes_small"] == expected_small
        # The small bucket really groups: more than one context, fewer than one per tensor.
        assert 1 < len(greedy_bucket_sizes(states[4], small_bucket_bytes)) < len(states[4])


# --- QLoRA under ZeRO-3 (docs/qlora_zero3.md) -----------------------------------------------------

QLORA_HIDDEN = 64  # >= bitsandbytes' 4-bit block size (64), so its CPU kernels take their real paths
QLORA_VARIANTS = {
    "4bit_fp32": ["--bits", "4"],
    "4bit_bf16": ["--bits", "4", "--dtype", "bfloat16"],
    "8bit": ["--bits", "8"],
    "4bit_keep_cpu_repacking": ["--bits", "4", "--keep-cpu-repacking"],
}
# The product's settings: the 7 linears of each of the 2 layers are quantized, lm_head and mm_projector are not.
ALL_LINEARS = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
}  # fmt: skip
NUM_QUANTIZED = len(ALL_LINEARS) * NUM_LAYERS
# add_lora targets every linear of the language model (find_all_linear_names).
QLORA_LORA_KEYS = {
    f"{PREFIX}.layers.{layer}.{path}.lora_{ab}.default.weight"
    for layer in range(NUM_LAYERS)
    for path in ALL_LINEARS.values()
    for ab in ("A", "B")
}
# LoRA A/B on 7 modules x 2 layers, plus the projector's 2 weights and 2 biases.
NUM_TRAINABLE = len(QLORA_LORA_KEYS) + len(PROJECTOR_KEYS)


@pytest.fixture(scope="module")
def qlora_runs(tmp_path_factory: pytest.TempPathFactory):
    """Launch qlora_zero3_smoke.py once per variant, lazily; returns a function variant -> records."""
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("tiny_llama_64"), hidden=QLORA_HIDDEN)
    records: dict[str, list[dict]] = {}

    def run(variant: str) -> list[dict]:
        if variant not in records:
            out_dir = tmp_path_factory.mktemp(f"qlora_{variant}")
            launch_deepspeed(
                DIST_SCRIPTS / "qlora_zero3_smoke.py", [str(model_dir), str(out_dir), *QLORA_VARIANTS[variant]]
            )
            records[variant] = [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
        return records[variant]

    return run


def assert_trained_and_partitioned(records: list[dict], storage_bytes: int, q_proj_bytes: int) -> None:
    """Loss went down, every quantized weight is split across the 2 ranks and gathers back byte-exact."""
    assert records[0]["losses"] == records[1]["losses"]
    losses = records[0]["losses"]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.05, losses
    for record in records:
        layout = record["quantized_layout"]
        assert len(layout) == NUM_QUANTIZED
        for name, (local_numel, full_numel, partition_numel, loaded_bytes) in layout.items():
            # Nothing left locally outside the gather; each rank owns half of the stored elements.
            assert local_numel == 0 and partition_numel * 2 == full_numel, name
            assert full_numel * storage_bytes == loaded_bytes, name
        assert layout[f"{PREFIX}.layers.0.self_attn.q_proj.base_layer.weight"][3] == q_proj_bytes
        assert all(record["quantized_bytes_equal"].values()) and len(record["quantized_bytes_equal"]) == NUM_QUANTIZED
        assert record["trainable_changed"] == {name: True for name in record["trainable_changed"]}
        assert len(record["trainable_changed"]) == NUM_TRAINABLE
        assert set(record["adapter_shapes"]) == QLORA_LORA_KEYS


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize(("variant", "storage_bytes"), [("4bit_fp32", 4), ("4bit_bf16", 2)])
def test_qlora_4bit_trains_under_zero3(qlora_runs, variant: str, storage_bytes: int) -> None:
    records = qlora_runs(variant)
    # 64 x 64 NF4 values, two per byte, stored as float32 / bfloat16 elements.
    assert_trained_and_partitioned(records, storage_bytes, q_proj_bytes=QLORA_HIDDEN * QLORA_HIDDEN // 2)
    for record in records:
        # Eval and train forwards agree, also after a gather/partition cycle of every parameter.
        assert record["eval_max_abs_diff"] == [0.0, 0.0, 0.0, 0.0]
        assert record["int8_elements_outside_partition"] == 0
        q_proj = record["adapter_shapes"][f"{PREFIX}.layers.0.self_attn.q_proj.lora_A.default.weight"]
        assert q_proj == (4, QLORA_HIDDEN)


@pytest.mark.slow
@pytest.mark.dist
def test_qlora_8bit_trains_but_bitsandbytes_keeps_full_int8_copies(qlora_runs) -> None:
    """8-bit runs under ZeRO-3, but `Int8Params.CB` / `Linear8bitLt.state.CB` keep every int8
    weight whole on every rank, so ZeRO-3 saves no memory on them."""
    records = qlora_runs("8bit")
    assert_trained_and_partitioned(records, storage_bytes=1, q_proj_bytes=QLORA_HIDDEN * QLORA_HIDDEN)
    for record in records:
        full_int8 = sum(full_numel for _, full_numel, _, _ in record["quantized_layout"].values())
        # 2 layers x (q, o: 64x64; k, v: 32x64; gate, up, down: 128x64)
        assert record["int8_elements_outside_partition"] == full_int8 == 73728


@pytest.mark.slow
@pytest.mark.dist
def test_bnb_cpu_repacking_corrupts_partitioned_4bit_weights(qlora_runs) -> None:
    """Negative control for `disable_4bit_cpu_repacking`: without it, on an AVX512-BF16 CPU, the
    forward after a gather/partition cycle reads the old layout through a "packed" quant state."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes repacks 4-bit weights only on CPUs with AVX512-BF16")
    for record in qlora_runs("4bit_keep_cpu_repacking"):
        before_cycle, after_cycle = record["eval_max_abs_diff"][1], record["eval_max_abs_diff"][2]
        assert before_cycle < 0.01 and after_cycle > 0.1, record["eval_max_abs_diff"]
