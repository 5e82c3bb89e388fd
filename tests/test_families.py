"""Model families through one seam (``llava.model.families``): Llama, Mistral (LLaVA-1.6-Mistral), and MPT refused.

The Mistral family is proved against upstream's own ``LlavaMistralForCausalLM`` (llava-torch in its reference
environment): a checkpoint its training code builds loads here as Mistral with its fp32 logits within 1e-4, and so
does ``liuhaotian/llava-v1.6-mistral-7b``'s layout (anyres, ``spatial_unpad``, the fine-tuned tower inside the
checkpoint) from the offline hub. LoRA and QLoRA runs with ``--version mistral_instruct`` trained here on upstream's
checkpoint load and merge into the model that trained.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hub_cache import use_hub_cache
from PIL import Image
from train_helpers import multimodal_flags

from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model import LlavaConfig, LlavaLlamaForCausalLM, LlavaMistralConfig, LlavaMistralForCausalLM
from llava.model.families import MODEL_FAMILIES, family_of, load_checkpoint_config
from llava.model.language_model.llava_mpt import MPT_UNSUPPORTED, LlavaMptConfig, LlavaMptForCausalLM
from llava.testing import families as tiny_families

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
FP32_TOLERANCE = 1e-4
QUESTION = "<image>\nWhat color is the shape in the image?"
# What upstream's train() records in the config beyond initialize_vision_modules (for a run like multimodal_flags).
TRAIN_CONFIG_FIELDS = dict(
    image_aspect_ratio="pad", image_grid_pinpoints=None, tokenizer_padding_side="right",
    tokenizer_model_max_length=2048, tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False,
    mm_use_im_start_end=False, mm_use_im_patch_token=False, mm_projector_lr=None,
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# The table


@pytest.mark.parametrize(
    ("model_type", "family"),
    [
        ("llava", "llava_llama"),  # the LLaVA-1.5 releases
        ("llava_llama", "llava_llama"),
        ("llama", "llava_llama"),  # Vicuna, trained into LLaVA
        ("llava_mistral", "llava_mistral"),
        ("mistral", "llava_mistral"),
    ],
)
def test_family_of_reads_the_model_type(model_type, family):
    assert family_of({"model_type": model_type}) is MODEL_FAMILIES[family]


def test_the_table_and_transformers_auto_classes_agree():
    from transformers import AutoConfig, AutoModelForCausalLM

    assert set(MODEL_FAMILIES) == {"llava_llama", "llava_mistral", "llava_mpt"}
    for model_type, family in MODEL_FAMILIES.items():
        assert family.model_type == family.config_class.model_type == model_type
        assert type(AutoConfig.for_model(model_type)) is family.config_class
    assert AutoModelForCausalLM._model_mapping[LlavaMistralConfig] is LlavaMistralForCausalLM
    assert AutoModelForCausalLM._model_mapping[LlavaConfig] is LlavaLlamaForCausalLM


def test_an_unknown_family_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not .* \(known: .*llava_mistral.*mistral.*\)"):
        family_of({"model_type": "gpt2"})


@pytest.mark.parametrize("model_type", ["llava_mpt", "mpt"])
def test_mpt_is_refused_by_the_table(model_type):
    with pytest.raises(NotImplementedError) as error:
        family_of({"model_type": model_type})
    assert str(error.value) == MPT_UNSUPPORTED and "LlavaMptForCausalLM" in MPT_UNSUPPORTED


@pytest.fixture(scope="module")
def tiny_mpt(tmp_path_factory):
    """A tiny MPT language model and a `llava_mpt` checkpoint config over it."""
    from transformers import MptConfig, MptForCausalLM

    root = tmp_path_factory.mktemp("mpt")
    MptForCausalLM(MptConfig(d_model=32, n_heads=2, n_layers=1, vocab_size=64, max_seq_len=64)).save_pretrained(
        root / "mpt"
    )
    config = json.loads((root / "mpt" / "config.json").read_text())
    (root / "llava-mpt").mkdir()
    (root / "llava-mpt" / "config.json").write_text(
        json.dumps({**config, "model_type": "llava_mpt", "mm_vision_tower": "openai/clip-vit-large-patch14-336"})
    )
    for name in ("model.safetensors",):
        (root / "llava-mpt" / name).write_bytes((root / "mpt" / name).read_bytes())
    return root


def test_every_way_into_mpt_stops_with_the_message(tiny_mpt, tiny):
    from llava.model.builder import load_pretrained_model
    from llava.train.arguments import parse_args
    from llava.train.model_setup import load_model

    with pytest.raises(NotImplementedError, match="LLaVA-MPT is not supported"):
        load_pretrained_model(tiny_mpt / "llava-mpt", None, None, device="cpu")
    model_args, _, training_args = parse_args(
        multimodal_flags(tiny, tiny_mpt / "out", model_name_or_path=tiny_mpt / "mpt", version="mpt")
    )
    with pytest.raises(NotImplementedError, match="LLaVA-MPT is not supported"):
        load_model(model_args, training_args)
    with pytest.raises(NotImplementedError, match="LLaVA-MPT is not supported"):
        LlavaMptForCausalLM(LlavaMptConfig(d_model=32, n_heads=2, n_layers=1, vocab_size=64))


# ----------------------------------------------------------------------------------------------------------------
# LLaVA-1.6-Mistral from the offline hub


@pytest.fixture(scope="session")
def families(tiny, tmp_path_factory):
    return tiny_families.build_families(tmp_path_factory.mktemp("families"), tiny)


@pytest.fixture(scope="session")
def families_hub(hub_cache, families):
    """The session's offline hub cache with `mistralai/Mistral-7B-Instruct-v0.2` and `liuhaotian/llava-v1.6-mistral-7b`
    added."""
    tiny_families.add_to_hub_cache(hub_cache, families)
    return hub_cache


@pytest.fixture
def mistral_hub(families_hub, monkeypatch):
    use_hub_cache(monkeypatch, families_hub)
    return families_hub


def _image(tiny, index: int = 1) -> Image.Image:
    records = [record for record in json.loads(Path(tiny.data).read_text()) if "image" in record]
    return Image.open(Path(tiny.image_folder) / records[index]["image"]).convert("RGB")


def _prompt(conv_mode: str = "mistral_instruct") -> str:
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], QUESTION)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def _checkpoint_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(directory / shard))
    return state


def test_llava_v16_mistral_loads_from_the_hub_as_mistral_with_its_own_tower(mistral_hub, tiny, families):
    from llava.model.builder import load_pretrained_model
    from llava.model.hub import resolve_model_dir

    tokenizer, model, processor, _ = load_pretrained_model(
        tiny_families.LLAVA_16_MISTRAL_REPO, None, "llava-v1.6-mistral-7b", device="cpu"
    )
    assert type(model) is LlavaMistralForCausalLM and model.config.model_type == "llava_mistral"
    assert model.config.num_key_value_heads == tiny_families.MISTRAL_KV_HEADS
    assert (model.config.image_aspect_ratio, model.config.mm_patch_merge_type) == ("anyres", "spatial_unpad")
    # The tower is the checkpoint's fine-tuned one (unfreeze_mm_vision_tower), not mm_vision_tower's weights.
    stored = _checkpoint_state(resolve_model_dir(tiny_families.LLAVA_16_MISTRAL_REPO))
    own = model.state_dict()
    tower_keys = [key for key in stored if ".vision_tower." in key]
    assert len(tower_keys) > 20
    for key in tower_keys:
        assert torch.equal(own[key.replace(".vision_model.", ".")], stored[key].float()), key
    from safetensors.torch import load_file

    clip = load_file(Path(tiny.vision_tower) / "model.safetensors")
    q_proj = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(own[f"model.vision_tower.vision_tower.{q_proj.removeprefix('vision_model.')}"], clip[q_proj])
    assert torch.equal(model.get_model().image_newline, stored["model.image_newline"].float())

    image = _image(tiny)
    images = process_images([image], processor, model.config)
    assert images.shape[1] > 1  # anyres: base image + tiles
    ids = tokenizer_image_token(_prompt(), tokenizer, return_tensors="pt")[None]
    answer = model.generate(ids, images=images, image_sizes=[image.size], max_new_tokens=4, min_new_tokens=4)
    assert answer.shape == (1, 4)


def test_run_llava_answers_llava_v16_mistral_with_mistral_instruct(mistral_hub, tiny):
    from llava.eval.run_llava import main

    answer = main(
        ["--model-path", tiny_families.LLAVA_16_MISTRAL_REPO, "--image-file", str(Path(tiny.image_folder) / json.loads(
            Path(tiny.data).read_text())[0]["image"]), "--query", "What color?", "--temperature", "0",
         "--max_new_tokens", "4", "--device", "cpu"]
    )  # fmt: skip
    assert isinstance(answer, str)


def test_lora_on_llava_v16_mistral_from_the_hub_keeps_its_tower_and_loads_as_trained(mistral_hub, tiny, tmp_path):
    """The release as --model_name_or_path (anyres, spatial_unpad, its fine-tuned tower built before LoRA wraps the
    model): the tower's q/k/v share the LM's leaf names, so adapter_config.json lists the names and excludes the
    multimodal modules; the run loads over the hub id with the in-training model's logits."""
    from llava.model.builder import load_pretrained_model
    from llava.testing.sizes import IMAGE_GRID_PINPOINTS
    from llava.train.lora import MULTIMODAL_EXCLUDE_PATTERN
    from llava.train.train import train

    run = tmp_path / "run"
    trainer = train(
        argv=multimodal_flags(
            tiny, run, model_name_or_path=tiny_families.LLAVA_16_MISTRAL_REPO, version="mistral_instruct",
            vision_tower=tiny_families.RELEASE_LLAVA_16_FIELDS["mm_vision_tower"], pretrain_mm_mlp_adapter=None,
            image_aspect_ratio="anyres", image_grid_pinpoints=str(IMAGE_GRID_PINPOINTS),
            mm_patch_merge_type="spatial_unpad", group_by_modality_length=False, max_steps=1, save_steps=1,
        )
    )  # fmt: skip
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    assert (
        adapter_config["target_modules"] == sorted(adapter_config["target_modules"])
        and "q_proj" in (adapter_config["target_modules"])
    )
    assert adapter_config["exclude_modules"] == MULTIMODAL_EXCLUDE_PATTERN
    assert not any("vision_tower" in name and "lora_" in name for name, _ in trainer.model.named_parameters())
    tokenizer, model, processor, _ = load_pretrained_model(run, tiny_families.LLAVA_16_MISTRAL_REPO, None, device="cpu")
    assert type(model) is LlavaMistralForCausalLM
    image = _image(tiny)
    inputs = _inputs(tokenizer, processor, image, model.config)
    with torch.no_grad():
        expected = trainer.model.eval()(**inputs).logits
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=FP32_TOLERANCE)


# ----------------------------------------------------------------------------------------------------------------
# Against upstream's own LlavaMistralForCausalLM


def _inputs(tokenizer, processor, image, config) -> dict:
    inputs = dict(
        input_ids=tokenizer_image_token(_prompt(), tokenizer, return_tensors="pt")[None],
        images=process_images([image], processor, config),
    )
    if getattr(config, "image_aspect_ratio", None) == "anyres":
        inputs["image_sizes"] = [image.size]
    return inputs


@pytest.fixture(scope="module")
def upstream_families(upstream, tiny, families, families_hub, tmp_path_factory):
    """One run of upstream's side: its training code builds a LLaVA-Mistral checkpoint from the tiny Mistral (and
    its fp32 logits), its class reads the 1.6 release layout (logits), its loader names the class it builds, and its
    LlavaMptForCausalLM runs one forward."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil

    from llava.testing.sizes import IMAGE_GRID_PINPOINTS

    root = tmp_path_factory.mktemp("upstream-families")
    tokenizer = AutoTokenizer.from_pretrained(families.mistral)
    processor = CLIPImageProcessorPil.from_pretrained(tiny.vision_tower)
    image = _image(tiny)
    flat = _inputs(tokenizer, processor, image, type("Config", (), {"image_aspect_ratio": "pad"})())
    anyres_config = type("Config", (), {"image_aspect_ratio": "anyres", "image_grid_pinpoints": IMAGE_GRID_PINPOINTS})
    anyres = _inputs(tokenizer, processor, image, anyres_config())
    torch.save(flat, root / "flat.pt")
    torch.save(anyres, root / "anyres.pt")
    model_args = dict(
        vision_tower=str(tiny.vision_tower), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=str(tiny.projector), mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu",
        mm_use_im_start_end=False, mm_use_im_patch_token=False, tune_mm_mlp_adapter=False,
    )  # fmt: skip
    built = root / "llava-mistral-upstream"
    release = families.llava_mistral
    jobs = [
        dict(name="build", kind="build_mistral", language_model=str(families.mistral), model_args=model_args,
             config_fields=TRAIN_CONFIG_FIELDS, out_dir=str(built), inputs=str(root / "flat.pt"),
             logits_out=str(root / "built.logits.pt")),
        dict(name="release", kind="logits", model_path=str(release), inputs=str(root / "anyres.pt"),
             logits_out=str(root / "release.logits.pt"), **{"class": "LlavaMistralForCausalLM"}),
        dict(name="loader", kind="load", model_path=str(built), model_name="llava-mistral-upstream"),
        dict(name="mpt", kind="mpt_forward"),
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_hub_cache(monkeypatch, families_hub)  # upstream's tower loads mm_vision_tower from the hub
        answer = upstream.run("families", dict(jobs=jobs))
    for name, result in answer["results"].items():
        assert "error" not in result, f"{name}: {result['error']}"
    return dict(
        results=answer["results"], built=built, release=release, flat=flat, anyres=anyres,
        built_logits=torch.load(root / "built.logits.pt", weights_only=True),
        release_logits=torch.load(root / "release.logits.pt", weights_only=True),
    )  # fmt: skip


def _merge_script():
    """scripts/merge_lora_weights.py, imported (its body runs in this process: no second start-up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO_ROOT / "scripts" / "merge_lora_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _our_logits(model_path, model_base, inputs) -> tuple[torch.nn.Module, torch.Tensor]:
    from llava.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(model_path, model_base, None, device="cpu")
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    return model, logits


@pytest.mark.upstream
@pytest.mark.slow
def test_upstream_built_llava_mistral_loads_here_as_mistral_with_its_logits(upstream_families):
    assert upstream_families["results"]["build"]["model_class"] == "LlavaMistralForCausalLM"
    assert json.loads((upstream_families["built"] / "config.json").read_text())["model_type"] == "llava_mistral"
    model, logits = _our_logits(upstream_families["built"], None, upstream_families["flat"])
    assert type(model) is LlavaMistralForCausalLM
    difference = (logits - upstream_families["built_logits"]).abs().max().item()
    logger.info("upstream-built LLaVA-Mistral: max fp32 logit difference %.3g", difference)
    assert difference <= FP32_TOLERANCE
    # Upstream's own loader builds the same class for it (from the word "mistral" in the name).
    assert upstream_families["results"]["loader"]["model_class"] == "LlavaMistralForCausalLM"


@pytest.mark.upstream
@pytest.mark.slow
def test_llava_v16_mistral_layout_gives_upstream_logits(upstream_families, mistral_hub):
    model, logits = _our_logits(tiny_families.LLAVA_16_MISTRAL_REPO, None, upstream_families["anyres"])
    assert type(model) is LlavaMistralForCausalLM
    assert upstream_families["results"]["release"]["vision_tower_loaded_at_init"]
    difference = (logits - upstream_families["release_logits"]).abs().max().item()
    logger.info("LLaVA-1.6-Mistral layout, anyres: max fp32 logit difference %.3g", difference)
    assert difference <= FP32_TOLERANCE


@pytest.mark.upstream
@pytest.mark.slow
def test_upstream_llava_mpt_cannot_run_forward_as_the_refusal_says(upstream_families):
    result = upstream_families["results"]["mpt"]
    assert result["raised"] == "TypeError" and "prepare_inputs_labels_for_multimodal" in result["message"]


@pytest.mark.upstream
@pytest.mark.slow
@pytest.mark.parametrize("bits", [16, 4])
def test_lora_run_on_upstream_llava_mistral_loads_and_merges(upstream_families, tiny, tmp_path, bits):
    from llava.train.train import train

    base = upstream_families["built"]
    run = tmp_path / "llava-mistral-lora"
    trainer = train(
        argv=multimodal_flags(
            tiny, run, model_name_or_path=base, version="mistral_instruct", pretrain_mm_mlp_adapter=None,
            max_steps=2, save_steps=2, bits=bits, learning_rate=5e-3,
        )
    )  # fmt: skip
    inputs = upstream_families["flat"]
    model, loaded = _our_logits(run, base, inputs)
    assert type(model) is LlavaMistralForCausalLM
    if bits == 16:  # (QLoRA trained through 4-bit weights; the loader merges into the full-precision base, as upstream)
        with torch.no_grad():
            expected = trainer.model.eval()(**inputs).logits[0].float()
        assert (loaded - expected).abs().max().item() <= FP32_TOLERANCE
    merged = tmp_path / "llava-mistral-merged"
    merge_script = _merge_script()
    merge_script.merge_lora(
        merge_script.build_parser().parse_args(
            [
                "--model-path",
                str(run),
                "--model-base",
                str(base),
                "--save-model-path",
                str(merged),
                "--dtype",
                "float32",
            ]
        )
    )
    assert json.loads((merged / "config.json").read_text())["model_type"] == "llava_mistral"
    merged_model, merged_logits = _our_logits(merged, None, inputs)
    assert type(merged_model) is LlavaMistralForCausalLM
    assert (merged_logits - loaded).abs().max().item() <= FP32_TOLERANCE


def test_a_llava_mistral_config_reads_as_mistral(families):
    config = load_checkpoint_config(families.llava_mistral)
    assert type(config) is LlavaMistralConfig and config.sliding_window is None
    assert config.rope_parameters["rope_theta"] == tiny_families.MISTRAL_ROPE_THETA
    plain = load_checkpoint_config(families.mistral, as_llava=True)
    assert type(plain) is LlavaMistralConfig
