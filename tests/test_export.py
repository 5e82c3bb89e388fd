"""scripts/convert_to_hf.py: a LoRA checkpoint, a merged model, a release from the hub cache and an anyres run,
each exported once and loaded by transformers' own classes with nothing else, against our own loader."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hub_cache import use_hub_cache
from PIL import Image
from safetensors import safe_open
from train_helpers import multimodal_flags

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates, get_conv_template
from llava.eval.common import build_prompt
from llava.export.convert import ExportOptions, export, probe_prompts
from llava.export.tokenizer import reference_ids
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.testing.anyres import build_anyres_llava
from llava.testing.hub import LLAVA_7B_REPO
from llava.testing.sizes import VOCAB_SIZE

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What color is the shape in the image?"
CONV_MODE = "llava_v1"
LOGITS_TOLERANCE = 1e-3
PIXEL_TOLERANCE = 1 / 255 + 1e-4  # float32 rounding of the normalised values
GREEDY_TOKENS = 8
EXPORT_FILES = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
    "processor_config.json", "chat_template.jinja",
}  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory):
    from llava.train.train import train

    output_dir = tmp_path_factory.mktemp("lora-run")
    train(argv=multimodal_flags(tiny, output_dir, max_steps=2, save_steps=2, learning_rate=5e-3, mm_projector_lr=5e-3))
    return output_dir


def _merge(lora_run: Path, base: Path, save_dir: Path) -> Path:
    """scripts/merge_lora_weights.py's own function, in this process."""
    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO_ROOT / "scripts" / "merge_lora_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = module.build_parser()
    args = ["--model-path", str(lora_run), "--model-base", str(base), "--save-model-path", str(save_dir)]
    return module.merge_lora(parser.parse_args([*args, "--dtype", "float32"]))


@dataclass
class Exported:
    """One source, its export, and both sides loaded."""

    name: str
    export_dir: Path
    tokenizer: Any
    ours: Any
    image_processor: Any
    hf: Any
    loading_info: dict
    processor: Any


SOURCES = ("lora_checkpoint", "merged", "release", "anyres")


class Exports:
    """Each source exported and loaded once per module, when a test first asks for it."""

    def __init__(self, tiny, hub_cache, lora_run, tmp_path_factory):
        self.tiny, self.hub_cache, self.lora_run, self.tmp_path_factory = tiny, hub_cache, lora_run, tmp_path_factory
        self.done: dict[str, Exported] = {}

    def get(self, name: str) -> Exported:
        if name not in self.done:
            self.done[name] = self._export(name)
        return self.done[name]

    def _export(self, name: str) -> Exported:
        from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

        tiny, root = self.tiny, self.tmp_path_factory.mktemp(f"export-{name}")
        with pytest.MonkeyPatch.context() as patch:
            use_hub_cache(patch, self.hub_cache)
            model_path, model_base = {
                "lora_checkpoint": lambda: (self.lora_run / "checkpoint-2", tiny.llm),
                "merged": lambda: (_merge(self.lora_run, tiny.llm, root / "merged"), None),
                "release": lambda: (LLAVA_7B_REPO, None),
                "anyres": lambda: (build_anyres_llava(tiny.llava, root / "anyres"), None),
            }[name]()
            export_dir = root / "hf"
            options = ExportOptions(
                model_path=str(model_path), model_base=str(model_base) if model_base else None,
                save_model_path=str(export_dir), dtype="float32", conv_mode=CONV_MODE, max_shard_size="150KB",
            )  # fmt: skip
            export(options)
            tokenizer, ours, image_processor, _ = load_pretrained_model(
                model_path, model_base, None, device="cpu", dtype=torch.float32
            )
        hf_class = LlavaNextForConditionalGeneration if name == "anyres" else LlavaForConditionalGeneration
        hf, info = hf_class.from_pretrained(export_dir, dtype=torch.float32, output_loading_info=True)
        processor = AutoProcessor.from_pretrained(export_dir)
        return Exported(name, export_dir, tokenizer, ours, image_processor, hf.eval(), info, processor)


@pytest.fixture(scope="module")
def exports(tiny, hub_cache, lora_run, tmp_path_factory) -> Exports:
    return Exports(tiny, hub_cache, lora_run, tmp_path_factory)


@pytest.fixture(scope="module", params=SOURCES)
def exported(request, exports) -> Exported:
    return exports.get(request.param)


def _images(tiny) -> dict[tuple[int, int], Image.Image]:
    """One image of each size in the tiny dataset: square 32x32, wide 48x32 and 64x40, tall 32x48 and 40x64."""
    found = {}
    for record in json.loads(Path(tiny.data).read_text()):
        if "image" in record:
            image = Image.open(Path(tiny.image_folder) / record["image"]).convert("RGB")
            found.setdefault(image.size, image)
    return found


def _ours(case: Exported, image: Image.Image):
    """Our prompt ids, pixels and last-position logits (through our own loader's model)."""
    prompt = build_prompt(DEFAULT_IMAGE_TOKEN + "\n" + QUESTION, CONV_MODE)
    ids = tokenizer_image_token(prompt, case.tokenizer, return_tensors="pt")[None]
    pixels = process_images([image], case.image_processor, case.ours.config)
    with torch.no_grad():
        output = case.ours(input_ids=ids, images=pixels, image_sizes=[image.size])
    return prompt, ids, pixels, output.logits[0]


def _hf_inputs(case: Exported, image: Image.Image):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = case.processor.apply_chat_template(messages, add_generation_prompt=True)
    return text, case.processor(images=image, text=text, return_tensors="pt")


def _as_hf_pixels(pixels) -> torch.Tensor:
    """Our pixels in transformers' shape: (1, C, H, W) for one image; (1, views, C, H, W) for anyres."""
    return pixels[0][None] if isinstance(pixels, list) else pixels


def _greedy_ours(case, ids, pixels, image):
    return case.ours.generate(
        ids, images=pixels, image_sizes=[image.size], do_sample=False, max_new_tokens=GREEDY_TOKENS
    )[0].tolist()


def _greedy_hf(case, inputs, **overrides):
    inputs = {**inputs, **overrides}
    output = case.hf.generate(**inputs, do_sample=False, max_new_tokens=GREEDY_TOKENS)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def test_transformers_loads_the_export_with_nothing_else(exported):
    info = exported.loading_info
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    files = {path.name for path in exported.export_dir.iterdir()}
    shards = {name for name in files if name.startswith("model")}
    assert files - shards == EXPORT_FILES
    assert "model.safetensors.index.json" in shards and len(shards) > 2  # 150KB shards: several, with an index
    next_model = exported.name == "anyres"
    assert type(exported.hf).__name__ == ("LlavaNext" if next_model else "Llava") + "ForConditionalGeneration"
    assert type(exported.processor).__name__ == ("LlavaNextProcessor" if next_model else "LlavaProcessor")
    config = exported.hf.config
    assert config.image_token_id == VOCAB_SIZE == exported.processor.tokenizer.convert_tokens_to_ids("<image>")
    assert config.text_config.vocab_size == 1088 and 1088 % 64 == 0  # 1024 + <image> + <pad>, padded to 64
    # Trained tokenizers pad with <unk> (upstream's train()); one without a pad token gets <pad>, as transformers'.
    expected_pad = "<unk>" if exported.name in ("lora_checkpoint", "merged") else "<pad>"
    assert exported.processor.tokenizer.convert_ids_to_tokens(config.pad_token_id) == expected_pad


def test_every_exported_weight_is_ours_bit_for_bit(exported):
    """float32 exports: each tensor equals our loaded model's (the vision tower's too); the grown embedding and head
    rows beyond ours sit at the mean of ours."""
    from llava.export import keys

    index = json.loads((exported.export_dir / "model.safetensors.index.json").read_text())["weight_map"]
    ours = exported.ours.state_dict()
    names = keys.hf_names(ours)
    assert sorted(names.values()) == sorted(index)
    for name, hf_name in names.items():
        with safe_open(exported.export_dir / index[hf_name], framework="pt") as handle:
            theirs = handle.get_tensor(hf_name)
        mine = ours[name]
        if hf_name in (keys.HF_EMBED_TOKENS, keys.HF_LM_HEAD_WEIGHT):
            assert torch.allclose(theirs[mine.shape[0] :], mine.mean(dim=0).expand(theirs.shape[0] - mine.shape[0], -1))
            theirs = theirs[: mine.shape[0]]
        assert theirs.dtype == torch.float32 and torch.equal(theirs, mine), name


def test_same_last_logits_and_greedy_answer_on_a_square_image(exported, tiny):
    """Each side through its own pipeline: our prompt, tokenizer and image processing against the processor's."""
    image = _images(tiny)[(32, 32)]
    prompt, ids, pixels, ours = _ours(exported, image)
    text, inputs = _hf_inputs(exported, image)
    assert text == prompt
    with torch.no_grad():
        theirs = exported.hf(**inputs).logits[0]
    vocab = ours.shape[-1]
    assert (ours[-1] - theirs[-1, :vocab]).abs().max() < LOGITS_TOLERANCE
    assert theirs[-1, vocab:].max() < theirs[-1, :vocab].max()  # the added rows never win a greedy step
    assert _greedy_hf(exported, inputs) == _greedy_ours(exported, ids, pixels, image)


@pytest.mark.parametrize("size", [(48, 32), (32, 48), (64, 40), (40, 64)])
def test_non_square_images_pixels_within_1_255_and_same_model_on_our_pixels(exported, tiny, size):
    """``pad`` pads to a square with the mean colour (anyres: tiles and base view) as we do: pixels within 1/255
    (ours is the fast transform of llava.mm_utils, within 1/255 of PIL's). On our pixels, same logits and answer."""
    image = _images(tiny)[size]
    _, ids, pixels, ours = _ours(exported, image)
    _, inputs = _hf_inputs(exported, image)
    std = torch.tensor(exported.image_processor.image_std).view(3, 1, 1)
    ours_pixels = _as_hf_pixels(pixels)
    assert ours_pixels.shape == inputs.pixel_values.shape
    assert ((ours_pixels - inputs.pixel_values) * std).abs().max() <= PIXEL_TOLERANCE
    with torch.no_grad():
        theirs = exported.hf(**{**inputs, "pixel_values": ours_pixels}).logits[0]
    assert (ours[-1] - theirs[-1, : ours.shape[-1]]).abs().max() < LOGITS_TOLERANCE
    assert _greedy_hf(exported, inputs, pixel_values=ours_pixels) == _greedy_ours(exported, ids, pixels, image)


def test_image_token_expands_to_our_feature_count(exported, tiny):
    for image in _images(tiny).values():
        _, ids, pixels, ours = _ours(exported, image)
        _, inputs = _hf_inputs(exported, image)
        image_tokens = int((inputs.input_ids == exported.hf.config.image_token_id).sum())
        assert image_tokens == ours.shape[0] - (ids.shape[1] - 1), image.size  # our spliced length
        assert inputs.input_ids.shape[1] == ours.shape[0]
        if exported.name != "anyres":
            assert image_tokens == 16 == exported.hf.config.image_seq_length  # 4 x 4 patches, CLS dropped


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_the_exported_tokenizer_gives_our_ids_for_every_template(exports, name):
    """Including the "▁" our piecewise tokenization puts after <image> (llava.export.tokenizer)."""
    exported = exports.get("merged")
    tokenizer = exported.processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    for prompt in probe_prompts(get_conv_template(name)):
        assert tokenizer(prompt).input_ids == reference_ids(prompt, exported.tokenizer, image_token_id), prompt


def test_576_image_tokens_at_336_px(exports, tmp_path):
    """LLaVA-1.5's tower (336 px, patch 14) by arithmetic on the exported processor config: 24 x 24 = 576."""
    from transformers import AutoProcessor

    shutil.copytree(exports.get("release").export_dir, tmp_path / "hf", ignore=shutil.ignore_patterns("model*"))
    for name, changes in (
        ("preprocessor_config.json", {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}),
        ("processor_config.json", {"patch_size": 14}),
    ):
        path = tmp_path / "hf" / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    inputs = processor(images=Image.new("RGB", (640, 480), (10, 200, 30)), text="USER: <image>\nHi ASSISTANT:")
    assert inputs["input_ids"][0].count(processor.tokenizer.convert_tokens_to_ids("<image>")) == 576


def test_default_dtype_is_float16_as_the_merge_script(tiny, tmp_path):
    export(ExportOptions(model_path=str(tiny.llava), save_model_path=str(tmp_path / "hf"), conv_mode=CONV_MODE))
    with safe_open(tmp_path / "hf" / "model.safetensors", framework="pt") as handle:
        dtypes = {handle.get_slice(name).get_dtype() for name in handle.keys()}
    assert dtypes == {"F16"}
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["dtype"], config["torch_dtype"], config["text_config"]["torch_dtype"]) == ("float16",) * 3


# ----------------------------------------------------------------------------------------------------------------
# Refusals


def test_a_lora_run_without_its_base_is_refused(lora_run, tmp_path):
    with pytest.raises(ValueError, match="holds a LoRA adapter .* pass the model it was trained over .*--model-base"):
        export(ExportOptions(model_path=str(lora_run), save_model_path=str(tmp_path / "hf"), conv_mode=CONV_MODE))
    assert not (tmp_path / "hf").exists() and list(tmp_path.iterdir()) == []


def test_a_base_with_other_shapes_is_refused(lora_run, tiny, tmp_path):
    other = shutil.copytree(tiny.llm, tmp_path / "other-base")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "intermediate_size": 2 * config["intermediate_size"]}))
    with pytest.raises(ValueError, match="is not the model this run was trained from .*intermediate_size"):
        export(ExportOptions(str(lora_run), str(tmp_path / "hf"), model_base=str(other), conv_mode=CONV_MODE))


def test_a_folder_that_is_not_empty_is_refused_unless_overwrite(tiny, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    options = dict(model_path=str(tiny.llava), save_model_path=str(out), conv_mode=CONV_MODE)
    with pytest.raises(FileExistsError, match="is not empty; pass --overwrite"):
        export(ExportOptions(**options))
    assert (out / "notes.txt").read_text() == "keep me"
    export(ExportOptions(**options, overwrite=True))
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]  # no staging folder left behind
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)


def test_an_output_inside_the_source_is_refused(tiny, tmp_path):
    source = shutil.copytree(tiny.llava, tmp_path / "llava-v1.5-run")
    with pytest.raises(FileExistsError, match="overlaps the model it exports"):
        export(ExportOptions(str(source), str(source / "hf"), conv_mode=CONV_MODE, overwrite=True))


def test_a_name_that_says_no_template_needs_conv_mode(tiny, tmp_path):
    source = shutil.copytree(tiny.llava, tmp_path / "my-run")
    with pytest.raises(ValueError, match="--conv-mode is needed: neither the name 'my-run'"):
        export(ExportOptions(str(source), str(tmp_path / "hf")))


def test_weights_past_float16_are_refused_and_nothing_is_written(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    source = shutil.copytree(tiny.llava, tmp_path / "llava-v1.5-big")
    state = load_file(source / "model.safetensors")
    state["model.norm.weight"] = torch.full_like(state["model.norm.weight"], 1e6)
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.norm.weight exceeds the range of torch.float16 .* --dtype bfloat16"):
        export(ExportOptions(str(source), str(tmp_path / "hf")))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["llava-v1.5-big"]


# ----------------------------------------------------------------------------------------------------------------
# The command line, the reference stack and the GPU check's CPU path


@pytest.mark.dist
def test_the_script_exports_a_lora_run(lora_run, tiny, tmp_path):
    out = tmp_path / "hf"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_to_hf.py"), "--model-path", str(lora_run),
         "--model-base", str(tiny.llm), "--save-model-path", str(out), "--conv-mode", CONV_MODE],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LlavaForConditionalGeneration" in json.loads((out / "config.json").read_text())["architectures"]


@pytest.mark.upstream
@pytest.mark.parametrize("name", ["lora_checkpoint", "release"])  # 4.37 has no LlavaNext
def test_transformers_4_37_reads_the_export_with_the_same_logits(exports, name, tiny, upstream, tmp_path):
    """The llava-hf layout as older readers read it: transformers 4.37.2 (upstream's stack) with its own
    LlavaForConditionalGeneration, tokenizer (tokenizers 0.15) and CLIPImageProcessor, on a square image."""
    exported = exports.get(name)
    image = _images(tiny)[(32, 32)]
    image.save(tmp_path / "square.png")
    prompt, ids, pixels, ours = _ours(exported, image)
    answer = upstream.run(
        "hf_llava",
        dict(model_dir=str(exported.export_dir), image=str(tmp_path / "square.png"), prompt=prompt,
             logits_out=str(tmp_path / "logits.pt"), max_new_tokens=GREEDY_TOKENS),
    )  # fmt: skip
    assert answer["versions"]["transformers"] == "4.37.2"
    assert answer["missing"] == [] and answer["unexpected"] == []
    image_token_id = exported.hf.config.image_token_id
    assert answer["input_ids"] == [image_token_id if token < 0 else token for token in ids[0].tolist()]
    theirs = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert (ours[-1] - theirs[: ours.shape[-1]]).abs().max() < LOGITS_TOLERANCE
    assert answer["generated"] == _greedy_ours(exported, ids, pixels, image)


def test_the_vllm_check_dry_run_gives_our_answer(tiny, capsys):
    """scripts/check_vllm_export.py without vLLM: every step but the server, transformers answering in its place."""
    from llava.export.vllm_check import main

    assert main(["--dry-run", "--tiny-root", str(tiny.root)]) == 0
    printed = capsys.readouterr().out
    assert "SAME ANSWER" in printed
    assert " serve " in printed and "--chat-template" in printed and "chat_template.jinja" in printed
