"""The tiny models: a Llama-2-style tokenizer, a CLIP tower, a Vicuna-like LM, a projector, a LLaVA checkpoint."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

from llava.testing.files import write_json
from llava.testing.sizes import (
    CLIP_HEADS,
    CLIP_HIDDEN,
    CLIP_IMAGE_SIZE,
    CLIP_INTERMEDIATE,
    CLIP_LAYERS,
    CLIP_MEAN,
    CLIP_PATCH_SIZE,
    CLIP_STD,
    LLM_HEADS,
    LLM_HIDDEN,
    LLM_INTERMEDIATE,
    LLM_LAYERS,
    LLM_MAX_POSITIONS,
    LM_HEAD_SCALE,
    MODEL_MAX_LENGTH,
    VOCAB_SIZE,
)

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
    write_json(out_dir / "tokenizer_config.json", tokenizer_config)
    write_json(
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
    write_json(out_dir / "config.json", config)
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
    write_json(out_dir / "config.json", config)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(llm_dir / name, out_dir / name)
    return out_dir
