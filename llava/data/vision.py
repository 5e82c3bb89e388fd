"""What the data pipeline needs from the vision side of the model: one typed object, decided once and passed down.

Upstream's ``train()`` bolts the image processor and ``mm_use_im_start_end`` onto ``data_args`` after building the
vision tower and sets ``data_args.is_multimodal``; its dataset and ``preprocess_multimodal`` read them back from
there. Here model set-up returns a :class:`VisionSetup` that the dataset, the collator's caller and
``preprocess_multimodal`` take; a run is multimodal exactly when it has one. Upstream's attributes are still accepted
where its callers pass ``data_args`` (:func:`vision_setup`), so a fork's ``LazySupervisedDataset(data_path,
tokenizer, data_args)`` works as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llava.mm_utils import parse_grid_pinpoints

ANYRES = "anyres"


def anyres_problems(image_aspect_ratio: str | None, image_grid_pinpoints) -> list[str]:
    """What is wrong with these anyres settings (empty when nothing): the one definition of the rules, which the
    flag check (`llava.train.arguments`) reports before anything loads and a dataset raises on.

    anyres needs candidate resolutions, and candidate resolutions (also given without anyres) must be a list of
    ``[width, height]`` pairs."""
    problems = []
    if image_aspect_ratio == ANYRES and not image_grid_pinpoints:
        problems.append(
            "--image_aspect_ratio anyres needs --image_grid_pinpoints (candidate resolutions), "
            "e.g. '[[336,672],[672,336]]'."
        )
    elif image_grid_pinpoints is not None and parse_grid_pinpoints(image_grid_pinpoints) is None:
        problems.append(
            f"--image_grid_pinpoints {image_grid_pinpoints!r} is not a list of [width, height] pairs, "
            "e.g. '[[336,672],[672,336],[672,672]]'."
        )
    return problems


@dataclass(frozen=True)
class VisionSetup:
    """The vision tower's image processor and how images enter the prompt.

    Attributes:
        image_processor: the tower's processor (its crop size is the size of the placeholder image of text-only
            samples).
        mm_use_im_start_end: wrap each ``<image>`` in ``<im_start>``/``<im_end>``.
        image_aspect_ratio: ``square``, ``pad`` or ``anyres``.
        image_grid_pinpoints: anyres's candidate resolutions (a list of ``[width, height]`` or its text form).
    """

    image_processor: Any
    mm_use_im_start_end: bool = False
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: str | Sequence[Sequence[int]] | None = None


def vision_setup(
    data_args,
    vision: VisionSetup | None = None,
    *,
    image_processor: Any = None,
    mm_use_im_start_end: bool | None = None,
    image_grid_pinpoints: str | Sequence | None = None,
) -> VisionSetup | None:
    """The vision set-up of a dataset: ``vision`` itself, or one built from the explicit arguments, falling back on
    the attributes upstream's ``train()`` sets on ``data_args`` (``image_processor``, ``mm_use_im_start_end``,
    ``is_multimodal``, ``image_aspect_ratio``, ``image_grid_pinpoints``); None for a text-only run.

    Raises:
        ValueError: ``data_args.is_multimodal`` without an image processor anywhere.
    """
    if vision is not None:
        return vision
    processor = image_processor if image_processor is not None else getattr(data_args, "image_processor", None)
    if image_processor is None and not getattr(data_args, "is_multimodal", False):
        return None
    if processor is None:
        raise ValueError(
            "a multimodal dataset needs the vision tower's image processor: pass vision=VisionSetup(...) or "
            "image_processor=, or set data_args.image_processor as upstream's train() does"
        )
    if mm_use_im_start_end is None:
        mm_use_im_start_end = bool(getattr(data_args, "mm_use_im_start_end", False))
    return VisionSetup(
        image_processor=processor,
        mm_use_im_start_end=mm_use_im_start_end,
        image_aspect_ratio=getattr(data_args, "image_aspect_ratio", "square"),
        image_grid_pinpoints=image_grid_pinpoints or getattr(data_args, "image_grid_pinpoints", None),
    )
