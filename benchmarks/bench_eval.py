"""Batched evaluation: answers per second of ``llava.eval``'s answer loop (the code behind ``model_vqa*``: prompt
building, tokenising, image preprocessing, ``generate``, decoding, the answers file) at ``--batch-size 8`` against
``--batch-size 1`` (upstream's only choice), on the same questions in the same run, in CPU time on one thread
(`common.paired_cpu_times`: alternating rounds, best of each, the rounds' spread in the note), in the dtype
evaluation runs in: bf16 where the CPU computes it in hardware, fp32 otherwise (`_dtype`). On one thread batching
gains what it saves in work: one read of the weights per decoding step for 8 rows. In fp32 a batch-8 step on this
CPU's one core costs about 2.7x a batch-1 step (so the ratio is capped near 8 / 2.7 = 3x, and measured 2.6-2.9x);
in bf16 about 2x (4x measured); 2 threads in wall time gave more (3.0-3.4x) because batch 8 also used the second
core that batch 1 left idle.

The model is a randomly initialised LLaVA whose language model is big enough that a decoding step reads a
meaningful amount of weights from memory (quick: hidden 768, 6 layers, 44M parameters, 176 MB in float32), behind the tiny CLIP
tower (16 image tokens: a 576-token prefill per question would measure the CPU's matmul speed, which batching does
not change). The output head is scaled up so that greedy choices are not near-ties; the note counts the batch-8
answers identical to batch 1's (all of them in fp32; in bf16 padding changes the rounding, and about half the
answers part from their batch-1 twins after a few tokens, as half-precision batched generation does elsewhere).
"""

from __future__ import annotations

import json
import tempfile
from argparse import Namespace
from pathlib import Path

import torch
from common import Row, dtype_label, paired_cpu_times

SHAPES = {
    "tiny": dict(hidden=None, layers=None, intermediate=None, heads=None, questions=8, new_tokens=4, repeat=1),
    "quick": dict(hidden=768, layers=6, intermediate=2048, heads=12, questions=8, new_tokens=32, repeat=3),
    "full": dict(hidden=2048, layers=16, intermediate=5504, heads=16, questions=32, new_tokens=32, repeat=3),
}
BATCH = 8
LM_HEAD_SCALE = 10.0
PADDING = " Describe what you see in detail, please."


def _dtype() -> tuple[torch.dtype, str]:
    """Evaluation's dtype: half precision as evaluation runs it (upstream loads fp16), bf16 on a CPU that computes
    it in hardware; fp32 on one that does not (see `common.native_cpu_dtype`), and the label says why."""
    from common import native_cpu_dtype

    from llava.utils import cpu_description

    if torch.cuda.is_available():
        return torch.bfloat16, ""
    return native_cpu_dtype(cpu_description()[1])


def _model(tiny, shape, dtype):
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
    model.to(dtype)
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
    dtype, reason = _dtype()
    loaded = _model(tiny, shape, dtype)
    requests = _requests(tiny, shape["questions"])
    texts: dict[int, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def answer_all(batch_size: int) -> None:
            path = Path(tmp) / f"answers_{batch_size}.jsonl"
            args = Namespace(batch_size=batch_size, num_workers=0, answers_file=str(path), temperature=0.0,
                             top_p=None, num_beams=1, max_new_tokens=shape["new_tokens"])  # fmt: skip
            answer(requests, loaded, args, "vicuna_v1")
            texts[batch_size] = [json.loads(line)["text"] for line in path.read_text().splitlines()]

        # CPU time on one thread, alternated, best of each: the machine's other users neither add to it nor take
        # cores away from one side only.
        times = paired_cpu_times(lambda: answer_all(BATCH), lambda: answer_all(1), repeat=shape["repeat"])
    batched, single = times.best
    same = sum(a == b for a, b in zip(texts[1], texts[BATCH]))
    hidden = loaded.model.config.hidden_size
    layers = loaded.model.config.num_hidden_layers
    return [
        Row(
            f"eval answers/s, batch {BATCH} vs 1 (H{hidden}, {layers} layers, {len(requests)} questions, "
            f"{shape['new_tokens']} new tokens, {dtype_label(dtype)}{', ' + reason if reason else ''})",
            len(requests) / batched,
            len(requests) / single,
            "answers/CPU-s",
            ">= 3x",
            note=f"same answers {same}/{len(requests)}; 1 thread, CPU time; {times.spread(per_second=True)}",
        )  # fmt: skip
    ]
