"""Batched evaluation: answers per second of ``llava.eval``'s answer loop (the code behind ``model_vqa*``: prompt
building, tokenising, image preprocessing, ``generate``, decoding, the answers file) at ``--batch-size 8`` against
``--batch-size 1`` (upstream's only choice), on the same questions in the same run.

The model is a randomly initialised LLaVA whose language model is big enough that a decoding step reads a
meaningful amount of weights from memory (quick: hidden 768, 6 layers, 44M parameters, 176 MB in float32), behind the tiny CLIP
tower (16 image tokens: a 576-token prefill per question would measure the CPU's matmul speed, which batching does
not change). The output head is scaled up so that greedy choices are not near-ties; the batch-8 answers are checked
against batch 1's.
"""

from __future__ import annotations

import json
import tempfile
from argparse import Namespace
from pathlib import Path

import torch
from common import Row, paired_seconds

SHAPES = {
    "tiny": dict(hidden=None, layers=None, intermediate=None, heads=None, questions=8, new_tokens=4, repeat=1),
    "quick": dict(hidden=768, layers=6, intermediate=2048, heads=12, questions=8, new_tokens=16, repeat=2),
    "full": dict(hidden=2048, layers=16, intermediate=5504, heads=16, questions=32, new_tokens=32, repeat=3),
}
BATCH = 8
LM_HEAD_SCALE = 10.0
PADDING = " Describe what you see in detail, please."


def _model(tiny, shape):
    """The tiny LLaVA (tiny size), or a larger random language model behind the tiny tower and tokenizer."""
    from transformers import AutoTokenizer

    from llava.eval.common import LoadedModel
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny.llava)
    if shape["hidden"] is None:
        model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava, dtype=torch.float32)
    else:
        config = LlavaConfig.from_pretrained(tiny.llava)
        config.update(dict(hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                           intermediate_size=shape["intermediate"], num_attention_heads=shape["heads"],
                           num_key_value_heads=shape["heads"], head_dim=shape["hidden"] // shape["heads"]))  # fmt: skip
        torch.manual_seed(0)
        model = LlavaLlamaForCausalLM(config)
        with torch.no_grad():
            model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.get_vision_tower().load_model()
    model.generation_config.pad_token_id = tokenizer.unk_token_id
    model.eval()
    return LoadedModel(tokenizer, model, model.get_vision_tower().image_processor, "bench")


def _requests(tiny, count: int):
    from llava.eval.common import Request, image_query

    records = [record for record in json.loads(Path(tiny.data).read_text()) if "image" in record]
    requests = []
    for index in range(count):
        record = records[index % len(records)]
        text = record["conversations"][0]["value"].replace("<image>", "").strip() + PADDING * (index % 3)
        image = str(Path(tiny.image_folder) / record["image"])
        requests.append(Request(index, text, image_query(text, False), image_path=image))
    return requests


def run(size: str, tiny) -> list[Row]:
    from llava.eval.common import answer

    shape = SHAPES[size]
    loaded = _model(tiny, shape)
    requests = _requests(tiny, shape["questions"])
    texts: dict[int, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def answer_all(batch_size: int) -> None:
            path = Path(tmp) / f"answers_{batch_size}.jsonl"
            args = Namespace(batch_size=batch_size, num_workers=0, answers_file=str(path), temperature=0.0,
                             top_p=None, num_beams=1, max_new_tokens=shape["new_tokens"])  # fmt: skip
            answer(requests, loaded, args, "vicuna_v1")
            texts[batch_size] = [json.loads(line)["text"] for line in path.read_text().splitlines()]

        # Alternated, best of each: load from the machine's other users hits both alike.
        batched, single = paired_seconds(lambda: answer_all(BATCH), lambda: answer_all(1), repeat=shape["repeat"])
    same = sum(a == b for a, b in zip(texts[1], texts[BATCH]))
    hidden = loaded.model.config.hidden_size
    layers = loaded.model.config.num_hidden_layers
    return [
        Row(
            f"eval answers/s, batch {BATCH} vs 1 (H{hidden}, {layers} layers, {len(requests)} questions, "
            f"{shape['new_tokens']} new tokens)",
            len(requests) / batched,
            len(requests) / single,
            "answers/s",
            ">= 3x",
            note=f"same answers {same}/{len(requests)}",
        )  # fmt: skip
    ]
