"""Multimodal splice: `prepare_inputs_labels_for_multimodal` at LLaVA-1.5 shapes (batch 16, 576 image tokens,
sequences up to 2048, hidden 4096) against the floor - one embedding lookup producing a tensor of the output's size
(its bytes must be written once) - and against upstream's algorithm (a per-sample Python loop with `torch.cat`s,
re-implemented here from reading upstream's `llava_arch.py`).

The vision tower is not timed: image features are precomputed and handed to the splice.
Host-device synchronisation: ours reads the batch's output length once (`.tolist()` of two numbers); upstream's loop
synchronises per sample (`.sum()` used as a Python bool/int, `torch.where(...).tolist()`).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from common import Row, seconds
from torch import nn

SHAPES = {
    "tiny": dict(batch=2, image_tokens=16, max_len=64, hidden=64, vocab=1000),
    "quick": dict(batch=16, image_tokens=576, max_len=2048, hidden=4096, vocab=32000),
    "full": dict(batch=16, image_tokens=576, max_len=2048, hidden=4096, vocab=32000),
}
IMAGE_AT = 35  # where the image token sits (after the v1 system prompt)


class _StubLlava:
    """Just what the splice touches: config, embed_tokens (via get_model) and a vision tower that exists."""

    def __init__(self, hidden: int, vocab: int, device):
        from llava.model.llava_arch import LlavaMetaForCausalLM

        self._embed = nn.Embedding(vocab, hidden).to(device).requires_grad_(False)
        self.config = SimpleNamespace(tokenizer_padding_side="right", tokenizer_model_max_length=2048)
        self._splice = LlavaMetaForCausalLM._splice.__get__(self)

    def get_model(self):
        return SimpleNamespace(embed_tokens=self._embed)


def _batch(shape: dict, device):
    generator = torch.Generator().manual_seed(0)
    text_max = shape["max_len"] - shape["image_tokens"] + 1
    lengths = torch.linspace(max(text_max // 2, IMAGE_AT + 2), text_max, shape["batch"]).long()
    ids = torch.randint(3, shape["vocab"], (shape["batch"], text_max), generator=generator)
    mask = torch.arange(text_max)[None] < lengths[:, None]
    ids[:, IMAGE_AT] = -200
    ids[~mask] = 0
    labels = torch.where(mask, ids, -100)
    labels[:, : IMAGE_AT + 1] = -100
    features = torch.randn(shape["batch"], shape["image_tokens"], shape["hidden"], generator=generator)
    return ids.to(device), mask.to(device), labels.to(device), features.to(device)


def upstream_splice(embed, input_ids, attention_mask, labels, features, max_length):
    """Upstream's algorithm: per sample, cut at image tokens, embed, cat, then pad in a second loop."""
    new_embeds, new_labels, image_index = [], [], 0
    for ids, mask, lab in zip(input_ids, attention_mask, labels):
        ids, lab = ids[mask], lab[mask]
        num_images = int((ids == -200).sum())
        cuts = [-1] + torch.where(ids == -200)[0].tolist() + [ids.shape[0]]
        pieces = [ids[cuts[i] + 1 : cuts[i + 1]] for i in range(len(cuts) - 1)]
        label_pieces = [lab[cuts[i] + 1 : cuts[i + 1]] for i in range(len(cuts) - 1)]
        embedded = torch.split(embed(torch.cat(pieces)), [p.shape[0] for p in pieces])
        row, row_labels = [], []
        for i in range(num_images + 1):
            row.append(embedded[i])
            row_labels.append(label_pieces[i])
            if i < num_images:
                row.append(features[image_index])
                row_labels.append(torch.full((features[image_index].shape[0],), -100, device=ids.device))
                image_index += 1
        if num_images == 0:
            image_index += 1  # a text-only sample consumes its placeholder image
        new_embeds.append(torch.cat(row)[:max_length])
        new_labels.append(torch.cat(row_labels)[:max_length])
    width = max(x.shape[0] for x in new_embeds)
    out = []
    padded_labels = torch.full((len(new_embeds), width), -100, device=input_ids.device)
    out_mask = torch.zeros(len(new_embeds), width, dtype=torch.bool, device=input_ids.device)
    for i, (row, lab) in enumerate(zip(new_embeds, new_labels)):
        out.append(torch.cat([row, row.new_zeros(width - row.shape[0], row.shape[1])]))
        padded_labels[i, : row.shape[0]] = lab
        out_mask[i, : row.shape[0]] = True
    return torch.stack(out), padded_labels, out_mask


def run(size: str) -> list[Row]:
    shape = SHAPES[size]
    rows = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        model = _StubLlava(shape["hidden"], shape["vocab"], device)
        ids, mask, labels, features = _batch(shape, device)
        out_ids = torch.randint(3, shape["vocab"], (shape["batch"], shape["max_len"]), device=device)
        repeat = 2 if size == "tiny" else 5
        with torch.no_grad():
            ours = seconds(lambda: model._splice(ids, mask, labels, features), repeat=repeat)
            floor = seconds(lambda: model._embed(out_ids), repeat=repeat)
            upstream = seconds(
                lambda: upstream_splice(model._embed, ids, mask, labels, features, shape["max_len"]), repeat=repeat
            )
            embeds, _, got_mask, _ = model._splice(ids, mask, labels, features)
            reference, _, ref_mask = upstream_splice(model._embed, ids, mask, labels, features, shape["max_len"])
            assert torch.equal(got_mask, ref_mask) and torch.equal(embeds[got_mask], reference[ref_mask])
        label = f"splice ({device.type}, B{shape['batch']} L{shape['max_len']} H{shape['hidden']})"
        rows.append(Row(f"{label} vs floor", ours * 1e3, floor * 1e3, "ms", "<= 2x"))
        rows.append(Row(f"{label} vs upstream loop", ours * 1e3, upstream * 1e3, "ms", "",
                        note=f"upstream {upstream / floor:.2f}x floor"))  # fmt: skip
    return rows
