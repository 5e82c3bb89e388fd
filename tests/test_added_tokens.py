"""Runs that add tokens to the vocabulary load as the model that trained (docs/upstream_differences.md #20).

``--mm_use_im_patch_token True`` (upstream's default), ``--mm_use_im_start_end True`` and ``--version v0`` (a
``[PAD]`` token) grow the embeddings and ``lm_head``. Every such run, LoRA and QLoRA, loads through
``load_pretrained_model``, its ``checkpoint-N/`` too, merges, and answers through an evaluation entry point; the
loaded model's logits are the in-training model's (the added tokens' rows are saved beside the projector).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_helpers import LORA_TARGETS, multimodal_flags

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.added_tokens import ADDED_ROWS_SUFFIX
from llava.model.builder import load_pretrained_model
from llava.model.files import NON_LORA_TRAINABLES_FILE
from llava.testing.sizes import VOCAB_SIZE

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "USER: <im_start><image><im_end>\nWhat color is the shape? ASSISTANT: The square is red.</s>"
EMBEDDING_KEYS = ("base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight")

# (name, flags, tokens the run adds)
RUNS = [
    ("patch token (upstream's default)", dict(mm_use_im_patch_token=True), [DEFAULT_IMAGE_PATCH_TOKEN]),
    ("image start/end", dict(mm_use_im_start_end=True), [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]),
    ("v0 [PAD]", dict(version="v0"), ["[PAD]"]),
    (
        "all three",
        dict(version="v0", mm_use_im_patch_token=True, mm_use_im_start_end=True),
        ["[PAD]", DEFAULT_IMAGE_PATCH_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN],
    ),
    ("patch token, QLoRA", dict(mm_use_im_patch_token=True, bits=4), [DEFAULT_IMAGE_PATCH_TOKEN]),
]


def _inputs(tiny, tokenizer, processor) -> dict:
    record = next(record for record in json.loads(Path(tiny.data).read_text()) if "image" in record)
    image = Image.open(Path(tiny.image_folder) / record["image"]).convert("RGB")
    config = type("Config", (), {"image_aspect_ratio": "pad"})()
    return dict(
        input_ids=tokenizer_image_token(PROMPT, tokenizer, return_tensors="pt")[None],
        images=process_images([image], processor, config),
    )


def _merge(run: Path, base: Path, out: Path) -> None:
    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO_ROOT / "scripts" / "merge_lora_weights.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--model-path", str(run), "--model-base", str(base), "--save-model-path", str(out), "--dtype", "float32"]
    script.merge_lora(script.build_parser().parse_args(argv))


@pytest.mark.parametrize(("name", "overrides", "added"), RUNS, ids=[run[0] for run in RUNS])
def test_run_with_added_tokens_loads_merges_and_answers_as_trained(tiny, tmp_path, name, overrides, added):
    from llava.eval.run_llava import main as run_llava
    from llava.train.train import train

    values = dict(pretrain_mm_mlp_adapter=None, max_steps=1, save_steps=1, per_device_train_batch_size=1)
    run = tmp_path / "run"
    trainer = train(argv=multimodal_flags(tiny, run, **{**values, **overrides}))
    trained, tokenizer = trainer.model.eval(), trainer.processing_class
    assert len(tokenizer) == VOCAB_SIZE + len(added)
    assert tokenizer.convert_tokens_to_ids(added) == list(range(VOCAB_SIZE, VOCAB_SIZE + len(added)))

    adapter_config = json.loads((run / "adapter_config.json").read_text())  # upstream's form of the targets
    assert adapter_config["target_modules"] == sorted(LORA_TARGETS) and "exclude_modules" not in adapter_config
    saved = torch.load(run / NON_LORA_TRAINABLES_FILE, weights_only=True)
    weights = dict(trained.named_parameters())
    for key in EMBEDDING_KEYS:  # the rows the run trained with, beside the projector
        rows = saved[key + ADDED_ROWS_SUFFIX]
        assert rows.shape == (len(added), trained.config.hidden_size)
        assert torch.equal(rows, weights[key][VOCAB_SIZE:].detach().float())

    _, _, processor, _ = load_pretrained_model(tiny.llava, None, None, device="cpu")
    inputs = _inputs(tiny, tokenizer, processor)
    if "mm_use_im_start_end" in overrides:
        assert {VOCAB_SIZE + added.index(DEFAULT_IM_START_TOKEN)} <= set(inputs["input_ids"][0].tolist())
    with torch.no_grad():
        expected = trained(**inputs).logits
    for folder in (run, run / "checkpoint-1"):
        loaded_tokenizer, model, _, _ = load_pretrained_model(folder, tiny.llm, None, device="cpu")
        assert len(loaded_tokenizer) == len(tokenizer)
        own = dict(model.named_parameters())
        for key in EMBEDDING_KEYS:
            plain = key.removeprefix("base_model.model.")
            assert torch.equal(own[plain][VOCAB_SIZE:], weights[key][VOCAB_SIZE:].detach().float()), (folder, key)
        if overrides.get("bits") == 4:
            continue  # (trained through 4-bit weights; the loader merges into the full-precision base, as upstream)
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)

    merged = tmp_path / "merged"
    _merge(run, tiny.llm, merged)
    _, merged_model, _, _ = load_pretrained_model(merged, None, None, device="cpu")
    assert merged_model.get_input_embeddings().num_embeddings == VOCAB_SIZE + len(added)
    assert torch.equal(
        merged_model.get_output_embeddings().weight[VOCAB_SIZE:],
        weights["base_model.model.lm_head.weight"][VOCAB_SIZE:].detach().float(),
    )

    image = Path(tiny.image_folder) / next(r for r in json.loads(Path(tiny.data).read_text()) if "image" in r)["image"]
    argv = ["--model-path", str(run), "--model-base", str(tiny.llm), "--image-file", str(image), "--query", "Color?",
            "--temperature", "0", "--max_new_tokens", "3", "--device", "cpu"]  # fmt: skip
    assert isinstance(run_llava(argv), str)


def test_a_run_saved_without_the_rows_loads_with_a_warning(tiny, tmp_path, caplog):
    from llava.train.train import train

    run = tmp_path / "run"
    train(argv=multimodal_flags(tiny, run, mm_use_im_patch_token=True, max_steps=1, save_strategy="no"))
    state = torch.load(run / NON_LORA_TRAINABLES_FILE, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.endswith(ADDED_ROWS_SUFFIX)}, run / NON_LORA_TRAINABLES_FILE)
    with caplog.at_level("WARNING", logger="llava.model.builder"):
        load_pretrained_model(run, tiny.llm, None, device="cpu")
    assert "has no rows for the 1 token(s) the run added" in caplog.text
