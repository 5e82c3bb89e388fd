"""Upstream's ``auto_upgrade``: bring a LLaVA-v0 checkpoint's config to the current code base.

The first LLaVA checkpoints were saved as plain Llama models (``"model_type": "llama"``) with LLaVA's ``mm_*``
fields. Upstream recognises them by the word "llava" in the folder's name (docs/upstream_differences.md #5); here by
the config itself: a vision tower named in a config whose ``model_type`` is no LLaVA family's. The upgrade rewrites
``model_type`` and ``architectures`` to the family's LLaVA class, after asking, as upstream does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from os import PathLike
from pathlib import Path

from llava.model.families import MODEL_FAMILIES, VISION_TOWER_FIELD, family_of
from llava.model.files import CONFIG_FILE

logger = logging.getLogger(__name__)


def needs_upgrade(config: dict) -> bool:
    """A LLaVA config (it names a vision tower) saved under a plain language model's ``model_type``."""
    llava_types = {
        name for family in MODEL_FAMILIES.values() for name in (family.model_type, *family.checkpoint_model_types)
    }
    return VISION_TOWER_FIELD in config and config.get("model_type") not in llava_types


def auto_upgrade(config: str | PathLike[str], confirm: Callable[[str], str] | bool = input) -> bool:
    """Upgrade ``config`` (a checkpoint directory) in place when it is an old LLaVA checkpoint; returns whether it
    did. ``confirm`` asks the user (upstream asks on stdin; pass ``True`` to upgrade without asking).

    Raises:
        SystemExit: the user declined (upstream exits too).
    """
    path = Path(config) / CONFIG_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    if not needs_upgrade(data):
        return False
    family = family_of(data)
    print("You are using newer LLaVA code base, while the checkpoint of v0 is from older code base.")
    print("You must upgrade the checkpoint to the new code base (this can be done automatically).")
    answer = "y" if confirm is True else confirm("Please confirm that you want to upgrade the checkpoint. [Y/N]")
    if answer.strip().lower() not in ("y", "yes"):
        print("Checkpoint upgrade aborted.")
        raise SystemExit(1)
    data.update(model_type=family.model_type, architectures=[family.causal_lm_class.__name__])
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("upgraded %s to model_type %s", path, family.model_type)
    print("Checkpoint upgraded.")
    return True
