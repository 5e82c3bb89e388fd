"""Tiny offline stand-ins for LLaVA-1.5's parts, built by our own code (no model hub).

Tests and the demo need a Llama-2-style tokenizer, a CLIP vision tower, a Vicuna-like language model, a LLaVA
checkpoint that joins them, a pretrained projector and a dataset in LLaVA's JSON format. Everything here is built
from a seed: the same seed gives the same bytes, so a build can be cached and compared.

Layout written by :func:`build_all` under ``root``::

    clip-vit-tiny/          CLIPModel (vision + text) + CLIPImageProcessor, like openai/clip-vit-large-patch14-336
    vicuna-tiny/            LlamaForCausalLM + sentencepiece tokenizer, like lmsys/vicuna-7b-v1.5
    llava-tiny-pretrain/    mm_projector.bin + config.json, like upstream's pretraining output
    llava-v1.5-tiny/        a full LLaVA-1.5 checkpoint in upstream's layout (config with mm_* fields)
    data/llava_tiny.json    LLaVA conversations; images under data/images/

:func:`build_hub_cache` writes the same tiny models into a Hugging Face cache under the real repo ids
(``liuhaotian/llava-v1.5-7b``, ``lmsys/vicuna-7b-v1.5``, ``openai/clip-vit-large-patch14-336``, ...), laid out like
the released files, so that hub ids resolve offline (``HF_HOME=<root> HF_HUB_OFFLINE=1``).

Command line: ``python -m llava.tiny ROOT`` (or ``llava-tiny ROOT``; ``--hub-cache HF_HOME`` adds the cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Bump when anything below changes what is written: cached builds with another version are rebuilt.
BUILD_VERSION = "2"

# Sizes. Llama-2 / CLIP ViT-L/14-336 have the same structure, only much larger.
VOCAB_SIZE = 1024
LLM_HIDDEN = 64
LLM_INTERMEDIATE = 172
LLM_LAYERS = 2
LLM_HEADS = 4
LLM_MAX_POSITIONS = 2048
CLIP_HIDDEN = 32
CLIP_INTERMEDIATE = 64
CLIP_LAYERS = 3
CLIP_HEADS = 2
CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8  # 4 x 4 = 16 patches (LLaVA-1.5: 24 x 24 = 576)
MODEL_MAX_LENGTH = 2048
LM_HEAD_SCALE = 10.0
# Grid pinpoints for anyres at the tiny tower's resolution (LLaVA-1.6 uses multiples of 336).
IMAGE_GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]

# OpenAI CLIP normalisation constants (as in CLIPImageProcessor for openai/clip-vit-*).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
SHAPES = ("square", "circle", "triangle", "stripe")

_WORDS = (
    "the a an of to in on at for with from by about into over under between after before and or but not is are was "
    "were be been has have had do does did can could will would should may might must this that these those it its "
    "there here what which who whom whose where when why how all any both each few more most other some such no "
    "only own same so than too very image picture photo scene object shape color colour size left right top bottom "
    "center middle corner background foreground small large big tiny bright dark light red green blue yellow purple "
    "orange white black gray square circle triangle stripe line dot pattern person people man woman child dog cat "
    "bird car bus tree house street table chair window door water sky cloud sun grass road sign book cup plate food "
    "describe explain answer question tell show see look find count name identify detail details visible appears "
    "shows contains holding standing sitting walking running looking wearing near next behind front inside outside "
    "one two three four five six seven eight nine ten first second third number many several yes maybe sure "
    "helpful detailed polite honest assistant user human chat curious artificial intelligence gives answers "
    "questions visual content provided following format language understand assist variety tasks natural "
    "respectful safe harmful unethical racist sexist toxic dangerous illegal unbiased positive nature sense factually "
    "coherent instead correct know share false information conversation between system model based"
).split()

_TEMPLATE_LINES = (
    # Vicuna v1 / LLaVA v1: roles glued to </s> exactly as in the rendered prompts.
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: <image>\nWhat is this? ASSISTANT: A square.</s>"
    "USER: And the color? ASSISTANT: It is red.</s>",
    "A chat between a curious human and an artificial intelligence assistant. ### Human: Hello ### Assistant: Hi",
    "[INST] <<SYS>>\nYou are a helpful language and vision assistant.\n<</SYS>>\n\nDescribe it [/INST] A dog </s>",
    "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nWhat?<|im_end|><|im_start|>assistant\nIt.",
)


@dataclass(frozen=True)
class TinyPaths:
    """Where :func:`build_all` put each part."""

    root: Path
    vision_tower: Path
    llm: Path
    pretrain: Path
    projector: Path
    llava: Path
    data: Path
    image_folder: Path


def _torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _synthetic_corpus(seed: int, num_lines: int = 6000) -> list[str]:
    """Text for training the tokenizer: random word sentences plus the prompt templates.

    Like the real Llama-2 vocabulary, the result must hold ``USER`` as one piece but not ``▁USER``: in vicuna_v1
    prompts the role follows ``</s>`` with no space, and upstream's label masking compensates for exactly that
    difference (``round_len -= 1`` for non-legacy tokenizers). So ``USER`` only ever appears glued to ``</s>``.
    """
    rng = random.Random(seed)
    lines = []
    for i in range(num_lines):
        n = rng.randint(4, 18)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(n), str(rng.randint(0, 999)))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!", ","])
        if i % 3 == 0:
            sentence = f"{sentence} ASSISTANT: {sentence}</s>USER: {sentence}"
        lines.append(sentence)
    lines.extend(_TEMPLATE_LINES * 50)
    return lines


def build_tokenizer(out_dir: str | Path, seed: int = 0) -> Path:
    """Train a Llama-2-style sentencepiece BPE tokenizer and write it with its Hugging Face config.

    Llama-2 settings: BPE, byte fallback, digits split, identity normalisation with a dummy prefix, whitespace kept,
    ``<unk>``/``<s>``/``</s>`` = 0/1/2, no pad token (LLaVA uses ``unk`` as pad).
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(_synthetic_corpus(seed)) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "tok"),
            model_type="bpe",
            vocab_size=VOCAB_SIZE,
            character_coverage=1.0,
            byte_fallback=True,
            split_digits=True,
            split_by_unicode_script=True,
            split_by_whitespace=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            seed_sentencepiece_size=100_000,
            minloglevel=2,
        )
        model = model_pb2.ModelProto()
        model.ParseFromString((Path(tmp) / "tok.model").read_bytes())
    # The trainer records its temporary input and output paths; drop them so that builds are byte-identical.
    model.trainer_spec.ClearField("input")
    model.trainer_spec.model_prefix = "tokenizer"
    (out_dir / "tokenizer.model").write_bytes(model.SerializeToString(deterministic=True))
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "padding_side": "right",
    }
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config)
    _write_json(
        out_dir / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    )
    return out_dir


def build_vision_tower(out_dir: str | Path, seed: int = 0) -> Path:
    """A CLIP model laid out like ``openai/clip-vit-large-patch14-336`` (full CLIPModel + image processor)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out_dir = Path(out_dir)
    _torch_seed(seed)
    config = CLIPConfig(
        vision_config=dict(
            hidden_size=CLIP_HIDDEN,
            intermediate_size=CLIP_INTERMEDIATE,
            num_hidden_layers=CLIP_LAYERS,
            num_attention_heads=CLIP_HEADS,
            image_size=CLIP_IMAGE_SIZE,
            patch_size=CLIP_PATCH_SIZE,
            projection_dim=CLIP_HIDDEN,
            hidden_act="quick_gelu",
        ),
        text_config=dict(
            hidden_size=CLIP_HIDDEN,
            intermediate_size=CLIP_INTERMEDIATE,
            num_hidden_layers=1,
            num_attention_heads=CLIP_HEADS,
            vocab_size=100,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            max_position_embeddings=16,
            projection_dim=CLIP_HIDDEN,
            hidden_act="quick_gelu",
        ),
        projection_dim=CLIP_HIDDEN,
    )
    model = CLIPModel(config).to(torch.float32)
    model.save_pretrained(out_dir)
    processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def build_llm(out_dir: str | Path, tokenizer_dir: str | Path, seed: int = 0) -> Path:
    """A Vicuna-like Llama (random weights) with the tiny tokenizer beside it."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(Path(tokenizer_dir) / name, out_dir / name)
    _torch_seed(seed)
    config = _llama_config()
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        # A random head at the usual init (std 0.02) cannot produce confident predictions after the final RMSNorm
        # (logits stay within about +-1), so LoRA could not teach it anything; a pretrained head can. Scale it up.
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out_dir)
    return out_dir


def _llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=LLM_HIDDEN,
        intermediate_size=LLM_INTERMEDIATE,
        num_hidden_layers=LLM_LAYERS,
        num_attention_heads=LLM_HEADS,
        num_key_value_heads=LLM_HEADS,
        max_position_embeddings=LLM_MAX_POSITIONS,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )


def _projector_state(mm_hidden: int, hidden: int, seed: int, prefix: str) -> dict:
    """mlp2x_gelu projector weights under upstream's key names (``<prefix>mm_projector.{0,2}.{weight,bias}``)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (fan_in, fan_out) in ((0, (mm_hidden, hidden)), (2, (hidden, hidden))):
        bound = fan_in**-0.5
        state[f"{prefix}mm_projector.{index}.weight"] = (
            torch.rand(fan_out, fan_in, generator=generator) * 2 - 1
        ) * bound
        state[f"{prefix}mm_projector.{index}.bias"] = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
    return state


def _mm_config_fields(vision_tower_dir: Path) -> dict:
    """The ``mm_*`` fields upstream's LLaVA-1.5 checkpoints carry in config.json."""
    return {
        "mm_vision_tower": str(vision_tower_dir),
        "mm_hidden_size": CLIP_HIDDEN,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "flat",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_projector_lr": None,
        "use_mm_proj": True,
        "image_aspect_ratio": "pad",
        "image_grid_pinpoints": None,
        "tokenizer_model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
    }


def build_pretrain(out_dir: str | Path, llm_dir: str | Path, vision_tower_dir: str | Path, seed: int = 0) -> Path:
    """Upstream's projector-pretraining output: ``mm_projector.bin`` (keys ``model.mm_projector.*``) + config."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(llm_dir) / "config.json").read_text())
    config.update(_mm_config_fields(Path(vision_tower_dir)))
    config.update(
        {"model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"], "tune_mm_mlp_adapter": True}
    )
    config["image_aspect_ratio"] = "square"  # pretraining runs without --image_aspect_ratio (upstream default)
    _write_json(out_dir / "config.json", config)
    torch.save(_projector_state(CLIP_HIDDEN, LLM_HIDDEN, seed + 1, "model."), out_dir / "mm_projector.bin")
    return out_dir


def build_llava(out_dir: str | Path, llm_dir: str | Path, vision_tower_dir: str | Path, seed: int = 0) -> Path:
    """A full LLaVA-1.5 checkpoint in upstream's layout, written without our model class.

    The language model's weights are copied from ``llm_dir``, the projector is added under
    ``model.mm_projector.*``, and the config gets ``model_type: llava_llama`` plus the ``mm_*`` fields. The vision
    tower is not stored: like upstream's, the checkpoint names it in ``mm_vision_tower``.
    """
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    llm_dir = Path(llm_dir)
    state = load_file(llm_dir / "model.safetensors")
    state.update(_projector_state(CLIP_HIDDEN, LLM_HIDDEN, seed + 2, "model."))
    state = {k: v.contiguous() for k, v in sorted(state.items())}
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((llm_dir / "config.json").read_text())
    config.update(_mm_config_fields(Path(vision_tower_dir)))
    config.update({"model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"], "use_cache": True})
    _write_json(out_dir / "config.json", config)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(llm_dir / name, out_dir / name)
    return out_dir


# ----------------------------------------------------------------------------------------------------------------
# Dataset


def draw_image(rng: random.Random, color: str, shape: str, size: tuple[int, int], mode: str):
    """One synthetic image: a coloured shape on a grey background, in the requested PIL mode."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    fill = COLORS[color]
    margin_x, margin_y = width // 6, height // 6
    box = (margin_x, margin_y, width - margin_x, height - margin_y)
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":
        draw.polygon(
            [(width // 2, margin_y), (margin_x, height - margin_y), (width - margin_x, height - margin_y)], fill=fill
        )
    else:
        for x in range(0, width, 8):
            draw.rectangle((x, 0, x + 3, height), fill=fill)
    # A little deterministic noise so that images are not trivially identical.
    for _ in range(8):
        x, y = rng.randrange(width), rng.randrange(height)
        image.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
    if mode == "RGB":
        return image
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.new("L", size, 200))
        return image
    if mode == "L":
        return image.convert("L")
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    raise ValueError(f"unsupported image mode {mode!r}")


def _image_conversation(rng: random.Random, color: str, shape: str, rounds: int) -> list[dict]:
    qa = [
        ("What color is the shape in the image?", f"The {shape} is {color}."),
        ("What shape is shown?", f"It is a {shape}."),
        ("Describe the image briefly.", f"A {color} {shape} on a gray background."),
        ("Is the background dark or light?", "The background is gray, neither dark nor light."),
        ("How many shapes are there?", "There is one shape."),
    ]
    rng.shuffle(qa)
    turns = []
    for index, (question, answer) in enumerate(qa[:rounds]):
        if index == 0:
            # Upstream data puts <image> before or after the first question; preprocessing moves it to the front.
            question = f"<image>\n{question}" if rng.random() < 0.7 else f"{question}\n<image>"
        turns.append({"from": "human", "value": question})
        turns.append({"from": "gpt", "value": answer})
    return turns


def _text_conversation(rng: random.Random, rounds: int) -> list[dict]:
    turns = []
    for _ in range(rounds):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        turns.append({"from": "human", "value": f"What is {a} plus {b}?"})
        turns.append({"from": "gpt", "value": f"{a} plus {b} is {a + b}."})
    return turns


def build_dataset(out_dir: str | Path, num_samples: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """A small dataset in LLaVA's JSON format with images of varied sizes and modes.

    Returns ``(json_path, image_folder)``. Every 6th sample is text-only; images are stored under nested folders
    (like ``coco/train2017/...``) as PNG and JPEG, in modes RGB, L, RGBA and P, in sizes wide, tall and square.
    """
    out_dir = Path(out_dir)
    image_folder = out_dir / "images"
    rng = random.Random(seed)
    sizes = [(32, 32), (48, 32), (32, 48), (64, 40), (40, 64), (96, 32)]
    modes = ["RGB", "L", "RGBA", "P"]
    samples = []
    for index in range(num_samples):
        rounds = 1 + index % 3
        sample_id = f"tiny-{index:05d}"
        if index % 6 == 5:
            samples.append({"id": sample_id, "conversations": _text_conversation(rng, rounds)})
            continue
        color = rng.choice(sorted(COLORS))
        shape = rng.choice(SHAPES)
        mode = modes[index % len(modes)]
        size = sizes[index % len(sizes)]
        # JPEG cannot hold RGBA or P; those stay PNG.
        extension = "jpg" if mode in ("RGB", "L") and index % 2 == 0 else "png"
        relative = f"{'coco/train2017' if index % 2 else 'synthetic'}/{sample_id}.{extension}"
        path = image_folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_image(rng, color, shape, size, mode).save(path)
        samples.append(
            {"id": sample_id, "image": relative, "conversations": _image_conversation(rng, color, shape, rounds)}
        )
    json_path = out_dir / "llava_tiny.json"
    _write_json(json_path, samples)
    return json_path, image_folder


# ----------------------------------------------------------------------------------------------------------------
# Everything at once


def _paths(root: Path) -> TinyPaths:
    return TinyPaths(
        root=root,
        vision_tower=root / "clip-vit-tiny",
        llm=root / "vicuna-tiny",
        pretrain=root / "llava-tiny-pretrain",
        projector=root / "llava-tiny-pretrain" / "mm_projector.bin",
        llava=root / "llava-v1.5-tiny",
        data=root / "data" / "llava_tiny.json",
        image_folder=root / "data" / "images",
    )


def build_all(root: str | Path, seed: int = 0) -> TinyPaths:
    """Build every tiny part under ``root`` (reusing a complete build of the same version and seed)."""
    root = Path(root).resolve()
    paths = _paths(root)
    stamp = root / ".tiny-build.json"
    wanted = {"version": BUILD_VERSION, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return paths
    root.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    # Each part is one small file: transformers' "Writing model shards" bars would only add noise.
    hf_logging.disable_progress_bar()
    try:
        _build_parts(root, paths, seed)
    finally:
        hf_logging.enable_progress_bar()
    _write_json(stamp, wanted)
    logger.info("tiny models and data are in %s", root)
    return paths


def _build_parts(root: Path, paths: TinyPaths, seed: int) -> None:
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tokenizer_dir = build_tokenizer(Path(tmp) / "tokenizer", seed)
        build_vision_tower(paths.vision_tower, seed)
        build_llm(paths.llm, tokenizer_dir, seed)
    build_pretrain(paths.pretrain, paths.llm, paths.vision_tower, seed)
    build_llava(paths.llava, paths.llm, paths.vision_tower, seed)
    build_dataset(paths.data.parent, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# A Hugging Face cache holding the tiny models under the released repo ids

LLAVA_7B_REPO = "liuhaotian/llava-v1.5-7b"
LLAVA_13B_REPO = "liuhaotian/llava-v1.5-13b"
VICUNA_7B_REPO = "lmsys/vicuna-7b-v1.5"
VICUNA_13B_REPO = "lmsys/vicuna-13b-v1.5"
CLIP_336_REPO = "openai/clip-vit-large-patch14-336"
PROJECTOR_7B_REPO = "liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5"
PROJECTOR_7B_FILE = f"{PROJECTOR_7B_REPO}/mm_projector.bin"  # what upstream's scripts pass as a path
LLAVA_REPOS = (LLAVA_7B_REPO, LLAVA_13B_REPO)
VICUNA_REPOS = (VICUNA_7B_REPO, VICUNA_13B_REPO)
RELEASE_SHARDS = 2
HUB_BUILD_VERSION = "1"

# The keys of the released LLaVA-1.5 config.json (written by transformers 4.31): no mm_patch_merge_type, no
# rope_theta, rope_scaling null, model_type "llava" (transformers 5's own LlavaConfig owns that name).
_RELEASE_LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_length": 4096,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.31.0",
    "use_cache": True,
}
_RELEASE_LLAVA_FIELDS = {
    "architectures": ["LlavaLlamaForCausalLM"],
    "model_type": "llava",
    "freeze_mm_mlp_adapter": False,
    "freeze_mm_vision_resampler": False,
    "image_aspect_ratio": "pad",
    "mm_projector_type": "mlp2x_gelu",
    "mm_resampler_type": None,
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower": CLIP_336_REPO,
    "tune_mm_mlp_adapter": False,
    "tune_mm_vision_resampler": False,
    "unfreeze_mm_vision_tower": False,
    "use_mm_proj": True,
}


def _release_llama_config(name: str) -> dict:
    return {
        **_RELEASE_LLAMA_CONFIG,
        "_name_or_path": name,
        "hidden_size": LLM_HIDDEN,
        "intermediate_size": LLM_INTERMEDIATE,
        "num_attention_heads": LLM_HEADS,
        "num_hidden_layers": LLM_LAYERS,
        "num_key_value_heads": LLM_HEADS,
        "vocab_size": VOCAB_SIZE,
    }


def _write_fp16_shards(state: dict, out_dir: Path, num_shards: int = RELEASE_SHARDS) -> None:
    """``pytorch_model-0000k-of-0000n.bin`` + ``pytorch_model.bin.index.json``, fp16, as the releases store them."""
    import torch

    keys = sorted(state)
    per_shard = -(-len(keys) // num_shards)
    weight_map, total_size = {}, 0
    for index in range(num_shards):
        name = f"pytorch_model-{index + 1:05d}-of-{num_shards:05d}.bin"
        shard = {
            key: state[key].to(torch.float16).contiguous() for key in keys[index * per_shard : (index + 1) * per_shard]
        }
        torch.save(shard, out_dir / name)
        for key, tensor in shard.items():
            weight_map[key] = name
            total_size += tensor.numel() * tensor.element_size()
    _write_json(
        out_dir / "pytorch_model.bin.index.json", {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    )


def _stage_clip(staging: Path, paths: TinyPaths) -> None:
    """A full CLIPModel (text + vision) as ``pytorch_model.bin`` with its config and preprocessor config."""
    import torch
    from safetensors.torch import load_file

    state = load_file(paths.vision_tower / "model.safetensors")
    torch.save({key: value.contiguous() for key, value in sorted(state.items())}, staging / "pytorch_model.bin")
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(paths.vision_tower / name, staging / name)


def _stage_vicuna(staging: Path, paths: TinyPaths, repo_id: str) -> None:
    from safetensors.torch import load_file

    _write_fp16_shards(load_file(paths.llm / "model.safetensors"), staging)
    _write_json(staging / "config.json", _release_llama_config(repo_id.split("/")[1]))
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(paths.llm / name, staging / name)


def _stage_llava(staging: Path, paths: TinyPaths, repo_id: str) -> None:
    """The released layout: fp16 shards of the LM + ``model.mm_projector.*``, no vision tower weights."""
    from safetensors.torch import load_file

    _write_fp16_shards(load_file(paths.llava / "model.safetensors"), staging)
    config = {**_release_llama_config(repo_id.split("/")[1]), **_RELEASE_LLAVA_FIELDS, "mm_hidden_size": CLIP_HIDDEN}
    _write_json(staging / "config.json", config)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(paths.llava / name, staging / name)


def _stage_projector(staging: Path, paths: TinyPaths) -> None:
    """The released pretrained projector: ``mm_projector.bin`` (keys ``model.mm_projector.*``) + config."""
    import torch

    state = torch.load(paths.projector, map_location="cpu", weights_only=True)
    torch.save({key: value.to(torch.float16) for key, value in state.items()}, staging / "mm_projector.bin")
    config = {**_release_llama_config("vicuna-7b-v1.5"), **_RELEASE_LLAVA_FIELDS, "mm_hidden_size": CLIP_HIDDEN}
    config.update({"tune_mm_mlp_adapter": True, "image_aspect_ratio": "square"})
    _write_json(staging / "config.json", config)


def commit_to_hub_cache(hub_dir: str | Path, repo_id: str, files_dir: str | Path) -> Path:
    """Put the files of ``files_dir`` into ``hub_dir`` as huggingface_hub caches a download of ``repo_id``.

    ``models--owner--name/blobs/<sha256>`` holds the bytes, ``snapshots/<revision>/<file>`` links to the blob
    (relative symlink, as huggingface_hub writes it), ``refs/main`` names the revision. The revision is a digest of
    the files, so the same files give the same cache. Returns the snapshot directory.
    """
    hub_dir, files_dir = Path(hub_dir), Path(files_dir)
    repo_dir = hub_dir / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(tree_digest(files_dir).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / revision
    for source in sorted(p for p in files_dir.rglob("*") if p.is_file()):
        data = source.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / source.relative_to(files_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def build_hub_cache(hf_home: str | Path, paths: TinyPaths | None = None, seed: int = 0) -> Path:
    """A Hugging Face cache (``<hf_home>/hub``) holding the tiny models under the released repo ids.

    ``paths``: a :func:`build_all` build to take the models from (built under ``hf_home/tiny`` when omitted).
    Use it with ``HF_HOME=<hf_home>`` and ``HF_HUB_OFFLINE=1``. Returns the hub cache directory.
    """
    hf_home = Path(hf_home).resolve()
    hub_dir = hf_home / "hub"
    if paths is None:
        paths = build_all(hf_home / "tiny", seed=seed)
    stamp = hub_dir / ".tiny-hub-build.json"
    source_stamp = paths.root / ".tiny-build.json"
    source = json.loads(source_stamp.read_text()) if source_stamp.exists() else None
    wanted = {"version": HUB_BUILD_VERSION, "source": str(paths.root), "source_build": source}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return hub_dir
    stages = [
        (CLIP_336_REPO, lambda d: _stage_clip(d, paths)),
        (PROJECTOR_7B_REPO, lambda d: _stage_projector(d, paths)),
    ]
    stages += [(repo, lambda d, repo=repo: _stage_vicuna(d, paths, repo)) for repo in VICUNA_REPOS]
    stages += [(repo, lambda d, repo=repo: _stage_llava(d, paths, repo)) for repo in LLAVA_REPOS]
    hub_dir.mkdir(parents=True, exist_ok=True)
    for repo_id, stage in stages:
        with tempfile.TemporaryDirectory(dir=hub_dir) as tmp:
            stage(Path(tmp))
            commit_to_hub_cache(hub_dir, repo_id, tmp)
    _write_json(stamp, wanted)
    logger.info("tiny models under the released repo ids are in the Hugging Face cache %s", hub_dir)
    return hub_dir


def tree_digest(root: str | Path) -> str:
    """SHA-256 over every file's relative path and bytes: equal digests mean byte-identical builds."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llava-tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="directory to build into (reused when already built with the same seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hub-cache",
        metavar="HF_HOME",
        default=None,
        help="also write a Hugging Face cache holding the models under the released repo ids",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = build_all(args.root, seed=args.seed)
    for field, value in paths.__dict__.items():
        print(f"{field:>13}: {value}")
    if args.hub_cache:
        print(f"{'hub cache':>13}: {build_hub_cache(args.hub_cache, paths)} (HF_HOME={args.hub_cache})")


if __name__ == "__main__":
    main()
