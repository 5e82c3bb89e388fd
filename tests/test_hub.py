"""Hub ids and the released checkpoints' layout, through an offline Hugging Face cache built from the tiny models.

The cache (`hub_cache` / `hub` fixtures) holds tiny stand-ins under the real repo ids, laid out like the releases:
`liuhaotian/llava-v1.5-7b` / `-13b` (config `"model_type": "llava"`, fp16 `pytorch_model-0000k-of-00002.bin` shards
with an index, no vision tower weights), `lmsys/vicuna-7b-v1.5` / `-13b-v1.5`, `openai/clip-vit-large-patch14-336`
(a full CLIPModel) and the released projector. Nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava.model.hub import HubResolutionError, is_hub_id, resolve_file, resolve_model_dir
from llava.testing import cli as tiny_cli
from llava.testing import hub as tiny_hub
from llava.testing import sizes as tiny_sizes

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What color is the shape in the image?"
RELEASE_SHARDS = {"pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"}
TOKENIZER_FILES = {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}


def _image_file(tiny) -> Path:
    return Path(tiny.image_folder) / json.loads(Path(tiny.data).read_text())[0]["image"]


def _shard_state(directory: Path) -> dict[str, torch.Tensor]:
    index = json.loads((directory / "pytorch_model.bin.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(torch.load(directory / shard, map_location="cpu", weights_only=True))
    assert set(state) == set(index["weight_map"])
    return state


# ----------------------------------------------------------------------------------------------------------------
# The cache itself


@pytest.mark.parametrize(
    ("repo_id", "files"),
    [
        (
            tiny_hub.LLAVA_7B_REPO,
            RELEASE_SHARDS
            | TOKENIZER_FILES
            | {"config.json", "pytorch_model.bin.index.json", "generation_config.json"},
        ),
        (
            tiny_hub.LLAVA_13B_REPO,
            RELEASE_SHARDS
            | TOKENIZER_FILES
            | {"config.json", "pytorch_model.bin.index.json", "generation_config.json"},
        ),
        (
            tiny_hub.VICUNA_7B_REPO,
            RELEASE_SHARDS
            | TOKENIZER_FILES
            | {"config.json", "pytorch_model.bin.index.json", "generation_config.json"},
        ),
        (
            tiny_hub.VICUNA_13B_REPO,
            RELEASE_SHARDS
            | TOKENIZER_FILES
            | {"config.json", "pytorch_model.bin.index.json", "generation_config.json"},
        ),
        (tiny_hub.CLIP_336_REPO, {"config.json", "preprocessor_config.json", "pytorch_model.bin"}),
        (tiny_hub.PROJECTOR_7B_REPO, {"config.json", "mm_projector.bin"}),
    ],
)
def test_cache_resolves_offline_like_a_download(hub, repo_id, files):
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(repo_id))
    repo_dir = hub / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = (repo_dir / "refs" / "main").read_text()
    assert snapshot == repo_dir / "snapshots" / revision
    assert {path.name for path in snapshot.iterdir()} == files
    for path in snapshot.iterdir():  # huggingface_hub's layout: snapshot entries link into blobs/
        assert path.is_symlink() and path.resolve().parent == repo_dir / "blobs"
    assert snapshot_download(repo_id, revision=revision) == str(snapshot)


def test_release_layout_matches_the_real_one(hub, tiny):
    llava_dir = resolve_model_dir(tiny_hub.LLAVA_7B_REPO)
    config = json.loads((llava_dir / "config.json").read_text())
    assert config["model_type"] == "llava" and config["architectures"] == ["LlavaLlamaForCausalLM"]
    assert (config["torch_dtype"], config["transformers_version"], config["rope_scaling"]) == (
        "float16",
        "4.31.0",
        None,
    )
    assert "mm_patch_merge_type" not in config and "rope_theta" not in config
    assert config["mm_vision_tower"] == tiny_hub.CLIP_336_REPO
    state = _shard_state(llava_dir)
    assert {tensor.dtype for tensor in state.values()} == {torch.float16}
    assert not any("vision_tower" in key for key in state)
    assert {key for key in state if "mm_projector" in key} == {
        f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }
    tiny_state = load_file(Path(tiny.llava) / "model.safetensors")
    assert all(torch.equal(state[key], tiny_state[key].half()) for key in tiny_state)

    vicuna = _shard_state(resolve_model_dir(tiny_hub.VICUNA_7B_REPO))
    assert {tensor.dtype for tensor in vicuna.values()} == {torch.float16} and "lm_head.weight" in vicuna

    clip = torch.load(resolve_model_dir(tiny_hub.CLIP_336_REPO) / "pytorch_model.bin", weights_only=True)
    assert any(key.startswith("text_model.") for key in clip) and any(key.startswith("vision_model.") for key in clip)
    processor = json.loads((resolve_model_dir(tiny_hub.CLIP_336_REPO) / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": tiny_sizes.CLIP_IMAGE_SIZE, "width": tiny_sizes.CLIP_IMAGE_SIZE}


# ----------------------------------------------------------------------------------------------------------------
# The resolver


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("liuhaotian/llava-v1.5-7b", True),
        ("openai/clip-vit-large-patch14-336", True),
        ("./checkpoints/llava-v1.5-13b", False),
        ("/abs/path", False),
        ("~/models/x", False),
        ("vicuna", False),
        ("a/b/c", False),
    ],
)
def test_is_hub_id(name, expected):
    assert is_hub_id(name) is expected


def test_a_local_directory_wins_over_a_hub_id(hub, tmp_path, monkeypatch):
    (tmp_path / "liuhaotian" / "llava-v1.5-7b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("liuhaotian/llava-v1.5-7b") == Path("liuhaotian/llava-v1.5-7b")


def test_a_file_in_a_repo_resolves(hub, tiny):
    path = resolve_file(tiny_hub.PROJECTOR_7B_FILE)
    assert path.name == "mm_projector.bin" and path.parent.parent.parent.name.endswith(
        tiny_hub.PROJECTOR_7B_REPO.split("/")[1]
    )
    assert resolve_file(tiny.projector) == Path(tiny.projector)


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        (
            lambda: resolve_model_dir("liuhaotian/llava-v1.5-70b", what="--model-path"),
            [
                "--model-path 'liuhaotian/llava-v1.5-70b'",
                "repo 'liuhaotian/llava-v1.5-70b'",
                "HF_HUB_OFFLINE=1",
                "hf auth login",
                "hf download liuhaotian/llava-v1.5-70b",
                "or pass a local path",
            ],
        ),
        (
            lambda: resolve_file("liuhaotian/llava-v1.5-7b/mm_projector.bin", what="--pretrain_mm_mlp_adapter"),
            [
                "--pretrain_mm_mlp_adapter",
                "file 'mm_projector.bin' of the Hugging Face repo 'liuhaotian/llava-v1.5-7b'",
                "hf download liuhaotian/llava-v1.5-7b mm_projector.bin",
                "or pass a local path",
            ],
        ),
        (
            lambda: resolve_model_dir("liuhaotian/llava-v1.5-7b", revision="0" * 40),
            ["revision " + "0" * 40, "hf download"],
        ),
        (
            lambda: resolve_model_dir("./checkpoints/nowhere", what="--model-base"),
            ["--model-base './checkpoints/nowhere' does not exist", "not a local directory"],
        ),
    ],
)
def test_unresolvable_names_give_one_clear_error(hub, call, fragments):
    with pytest.raises(HubResolutionError) as caught:
        call()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message


def test_transformers_own_llava_registration_is_intact(hub):
    import transformers
    from transformers import AutoConfig

    import llava.model  # noqa: F401  (registers llava_llama)
    from llava.model.language_model.llava_llama import LlavaConfig, load_checkpoint_config

    assert type(AutoConfig.for_model("llava")) is transformers.LlavaConfig
    assert type(AutoConfig.for_model("llava_llama")) is LlavaConfig
    config = load_checkpoint_config(resolve_model_dir(tiny_hub.LLAVA_7B_REPO))
    assert type(config) is LlavaConfig and config.model_type == "llava_llama"
    assert config.mm_vision_tower == tiny_hub.CLIP_336_REPO and config.hidden_size == tiny_sizes.LLM_HIDDEN


def test_transformers_format_llava_is_named_not_misread(tmp_path):
    from llava.model.language_model.llava_llama import load_checkpoint_config

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {}, "vision_config": {}}))
    with pytest.raises(ValueError, match="transformers' own format"):
        load_checkpoint_config(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Loading and the entry points


def test_load_pretrained_model_accepts_the_release_hub_id(hub, tiny):
    from llava.model.builder import load_pretrained_model
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    tokenizer, model, processor, context_len = load_pretrained_model(
        tiny_hub.LLAVA_7B_REPO, None, "llava-v1.5-7b", device="cpu"
    )
    assert type(model) is LlavaLlamaForCausalLM and model.config.model_type == "llava_llama"
    assert {param.dtype for param in model.parameters()} == {torch.float32}  # not the checkpoint's fp16
    tower = model.get_vision_tower()
    assert tower.is_loaded and tower.vision_tower_name == tiny_hub.CLIP_336_REPO
    assert processor.crop_size == {"height": tiny_sizes.CLIP_IMAGE_SIZE, "width": tiny_sizes.CLIP_IMAGE_SIZE}
    assert context_len == 2048 and tokenizer.bos_token_id == 1
    tiny_state = load_file(Path(tiny.llava) / "model.safetensors")
    own = model.state_dict()
    assert all(torch.equal(own[key], tiny_state[key].half().float()) for key in tiny_state)


@pytest.mark.dist
def test_run_llava_and_cli_accept_the_release_hub_id(hub, tiny, capsys):
    from llava.eval.run_llava import main

    argv = ["--model-path", tiny_hub.LLAVA_7B_REPO, "--image-file", str(_image_file(tiny)), "--query", QUESTION,
            "--temperature", "0", "--max_new_tokens", "6", "--device", "cpu"]  # fmt: skip
    answer = main(argv)
    assert answer and capsys.readouterr().out.strip() == answer
    local = main(argv[:1] + [str(resolve_model_dir(tiny_hub.LLAVA_7B_REPO))] + argv[2:])
    assert local == answer

    result = subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", "--model-path", tiny_hub.LLAVA_7B_REPO, "--image-file",
         str(_image_file(tiny)), "--device", "cpu", "--temperature", "0", "--max-new-tokens", "6"],
        input=f"{QUESTION}\n\n", capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    assert first == f"USER: ASSISTANT: {answer}"  # conv mode llava_v1 from the name, as upstream


def test_vision_tower_and_projector_from_hub_ids(hub, tiny):
    import types

    from llava.model.multimodal_encoder.builder import build_vision_tower

    tower = build_vision_tower(types.SimpleNamespace(mm_vision_tower=tiny_hub.CLIP_336_REPO, mm_vision_select_layer=-2))
    reference = build_vision_tower(
        types.SimpleNamespace(mm_vision_tower=str(tiny.vision_tower), mm_vision_select_layer=-2)
    )
    pixels = torch.rand(1, 3, tiny_sizes.CLIP_IMAGE_SIZE, tiny_sizes.CLIP_IMAGE_SIZE)
    assert torch.equal(tower(pixels), reference(pixels))
    with pytest.raises(HubResolutionError, match="'openai/clip-vit-base-patch32'"):
        build_vision_tower(
            types.SimpleNamespace(mm_vision_tower="openai/clip-vit-base-patch32", mm_vision_select_layer=-2)
        )


@pytest.mark.parametrize(
    ("adapter", "problem"),
    [
        (tiny_hub.PROJECTOR_7B_FILE, None),
        (
            "liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-13b-v1.5/mm_projector.bin",
            "hf download liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-13b-v1.5 mm_projector.bin",
        ),
        ("./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin", "does not exist; pass the mm_projector.bin"),
    ],
)
def test_pretrain_adapter_may_be_a_hub_file(hub, tiny, adapter, problem):
    from llava.train.arguments import ArgumentsError, parse_args

    argv = ["--model_name_or_path", tiny_hub.VICUNA_7B_REPO, "--vision_tower", tiny_hub.CLIP_336_REPO,
            "--pretrain_mm_mlp_adapter", adapter, "--data_path", str(tiny.data), "--version", "v1",
            "--output_dir", "/tmp/unused", "--report_to", "none"]  # fmt: skip
    if problem is None:
        parse_args(argv)
        return
    with pytest.raises(ArgumentsError) as caught:
        parse_args(argv)
    assert problem in str(caught.value) and str(caught.value).startswith("1 problem(s)")


# ----------------------------------------------------------------------------------------------------------------
# Dtypes and non-finite weights


@pytest.mark.parametrize(
    ("deepspeed", "bf16", "fp16", "current", "expected"),
    [
        # DeepSpeed: one dtype for every trainable parameter, the engine's (ZeRO-2 and ZeRO-3 alike).
        ("zero3.json", True, False, torch.float32, torch.bfloat16),  # PEFT's fp32 LoRA next to a bf16 projector
        ("zero3.json", True, False, torch.float16, torch.bfloat16),
        ("zero2.json", False, True, torch.float32, torch.float16),
        ("zero2.json", False, False, torch.float16, torch.float32),
        ("zero3.json", False, False, torch.bfloat16, torch.float32),
        # Without DeepSpeed the optimizer steps the parameters: never fp16, bf16 only with --bf16.
        (None, False, False, torch.float16, torch.float32),
        (None, False, True, torch.float16, torch.float32),
        (None, False, False, torch.bfloat16, torch.float32),
        (None, True, False, torch.bfloat16, torch.bfloat16),
        (None, True, False, torch.float32, torch.float32),
    ],
)
def test_trainable_dtype(deepspeed, bf16, fp16, current, expected):
    import types

    from llava.train.model_setup import trainable_dtype

    args = types.SimpleNamespace(deepspeed=deepspeed, bf16=bf16, fp16=fp16)
    assert trainable_dtype(args, current) == expected


def test_align_casts_whole_parameters_and_names_a_partitioned_one():
    import types

    from llava.train.model_setup import align_trainable_dtypes

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).half(), torch.nn.Linear(2, 2).half())
    model[2].requires_grad_(False)
    args = types.SimpleNamespace(deepspeed="zero3.json", bf16=True, fp16=False)
    align_trainable_dtypes(model, args)
    assert [p.dtype for p in model.parameters()] == [torch.bfloat16] * 4 + [torch.float16] * 2  # frozen: untouched
    model[0].weight.data = model[0].weight.data.float()
    model[0].weight.ds_id = 0  # a ZeRO-3 partition cannot be cast in place
    with pytest.raises(
        ValueError, match=r"partitioned by ZeRO-3 in another dtype than the run's torch.bfloat16: 0.weight"
    ):
        align_trainable_dtypes(model, args)


def test_loader_refuses_non_finite_weights(tiny, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from llava.model.builder import load_pretrained_model

    broken = tmp_path / "diverged"
    shutil.copytree(tiny.llava, broken)
    state = load_file(broken / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"has weights with NaN or inf values: model.layers.1.mlp.up_proj.weight"):
        load_pretrained_model(broken, None, device="cpu")


def test_merge_refuses_weights_past_the_saved_dtype(tiny, tmp_path):
    import argparse
    import importlib.util
    import shutil

    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO_ROOT / "scripts" / "merge_lora_weights.py")
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    large = tmp_path / "large"
    shutil.copytree(tiny.llava, large)
    state = load_file(large / "model.safetensors")
    state["model.layers.0.mlp.down_proj.weight"][0, 0] = 1e6  # finite in fp32, inf in fp16 (max 65504)
    save_file(state, large / "model.safetensors", metadata={"format": "pt"})
    args = argparse.Namespace(
        model_path=str(large), model_base=None, save_model_path=str(tmp_path / "out"), dtype="float16"
    )
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.down_proj.weight exceed the range of float16"):
        merge.merge_lora(args)
    assert not (tmp_path / "out").exists()
    args.dtype = "bfloat16"
    assert merge.merge_lora(args) == tmp_path / "out"


def test_cache_dir_is_honoured(hub_cache, tmp_path, monkeypatch):
    from hub_cache import use_hub_cache

    use_hub_cache(monkeypatch, tmp_path / "empty-home")  # the default cache has nothing
    with pytest.raises(HubResolutionError, match="cache .*empty-home"):
        resolve_model_dir(tiny_hub.VICUNA_7B_REPO)
    resolved = resolve_model_dir(tiny_hub.VICUNA_7B_REPO, cache_dir=hub_cache / "hub")
    assert resolved.parent.parent == hub_cache / "hub" / "models--lmsys--vicuna-7b-v1.5"


def test_tiny_cli_writes_the_hub_cache(tiny, tmp_path, caplog):
    with caplog.at_level("INFO", logger=tiny_cli.logger.name):
        tiny_cli.main([str(tiny.root), "--hub-cache", str(tmp_path)])
    assert f"hub cache: {tmp_path / 'hub'} (HF_HOME={tmp_path})" in caplog.messages[-1]
    repos = sorted(path.name for path in (tmp_path / "hub").glob("models--*"))
    expected = [tiny_hub.CLIP_336_REPO, tiny_hub.PROJECTOR_7B_REPO, *tiny_hub.VICUNA_REPOS, *tiny_hub.LLAVA_REPOS]
    assert repos == sorted(f"models--{repo.replace('/', '--')}" for repo in expected)
    # Same files, same revision: a rebuild elsewhere gives the same cache.
    revision = (tmp_path / "hub" / "models--liuhaotian--llava-v1.5-7b" / "refs" / "main").read_text()
    tiny_hub.build_hub_cache(tmp_path / "again", tiny)
    assert (tmp_path / "again" / "hub" / "models--liuhaotian--llava-v1.5-7b" / "refs" / "main").read_text() == revision
