"""Padding-free packing (``--packing``): its configuration, the rule on what it supports, and how a batch's samples
are laid out in rows. The collator (`llava.data.dataset.DataCollatorForSupervisedDataset.pack`) builds the rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llava.data.vision import ANYRES

# The packed batch's counts for the trainer's log (see DataCollatorForSupervisedDataset.pack); not a model input.
PACKING_STATS_KEY = "packing_stats"


@dataclass(frozen=True)
class PackingConfig:
    """How the collator packs (``--packing``).

    Attributes:
        image_feature_length: the number of features the model splices in per image token (the vision tower's
            patches, 576 for CLIP ViT-L/14-336), so that rows are filled by their length as the language model sees
            them; needed as soon as a sample has an image (training takes it from the model).
        attention_cost: weighs the row width against the padding saved (:func:`packing_attention_cost`).
    """

    image_feature_length: int | None = None
    attention_cost: float = 0.0

    @staticmethod
    def problem(image_aspect_ratio: str | None) -> str | None:
        """Why packing cannot take images of this aspect ratio (None when it can): the one definition of the rule,
        which the flag check (`llava.train.arguments`) reports before anything loads and the collator raises on.
        Rows are filled by the spliced length, which anyres images vary per image."""
        if image_aspect_ratio == ANYRES:
            return (
                "--packing fills rows by the spliced length, which anyres images vary per image; use "
                "--image_aspect_ratio pad or square, or drop --packing."
            )
        return None


def pack_rows(lengths: Sequence[int], capacity: int, attention_cost: float = 0.0) -> list[list[int]]:
    """Sample indices grouped into rows whose lengths sum to at most ``capacity``; within a row, samples keep their
    batch order.

    Every row is padded to the longest, so a layout of R rows of width W costs R * W positions; with a dense mask
    (SDPA, eager) each position also attends over the whole row, about ``attention_cost * W`` more (W / (6 *
    hidden size) for a Llama layer; 0 for flash-attention's varlen kernel, which pays per sample). For each row
    count the samples are balanced longest first into the row that holds the least so far, and the cheapest
    layout is kept: with one row per sample that is the padded batch, so packing never costs more than padding.
    """
    by_length = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best, best_cost = None, float("inf")
    for count in range(1, len(lengths) + 1):
        rows: list[list[int]] = [[] for _ in range(count)]
        load = [0] * count
        for index in by_length:
            r = load.index(min(load))
            if load[r] + lengths[index] > capacity:
                break
            rows[r].append(index)
            load[r] += lengths[index]
        else:
            width = max(load)
            cost = count * width * (1 + attention_cost * width)
            if cost < best_cost:
                best, best_cost = rows, cost
    if best is None:  # a sample longer than a row: only one per row fits (the splice truncates it, as unpacked)
        best = [[index] for index in range(len(lengths))]
    return [sorted(row) for row in best if row]


def packing_attention_cost(hidden_size: int, attn_implementation: str | None) -> float:
    """What attending over one more position of its row costs a position, relative to the rest of its work: a Llama
    layer spends about 24 * hidden**2 FLOPs per position on its linear layers and 4 * width * hidden on attention
    with a dense mask. Flash-attention's varlen kernel attends within each sample only: 0."""
    if str(attn_implementation or "").startswith("flash"):
        return 0.0
    return 1.0 / (6 * hidden_size)
