"""A tiny LLaVA-1.6-style model: the tiny LLaVA-1.5 checkpoint fully fine-tuned to anyres tiles with
``spatial_unpad`` (its config says so, and its weights carry the ``model.image_newline`` that merge type adds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llava.testing.files import write_json
from llava.testing.sizes import LLM_HIDDEN

# (width, height) each, at the tiny tower's 32 px. Not symmetric (no 64x32 for 32x64): a reader that took them as
# (height, width), as transformers does, would cut other grids.
ANYRES_PINPOINTS = [[32, 64], [64, 64], [96, 32]]
ANYRES_FIELDS = {
    "image_aspect_ratio": "anyres",
    "mm_patch_merge_type": "spatial_unpad",
    "image_grid_pinpoints": ANYRES_PINPOINTS,
}


def build_anyres_llava(llava_dir: str | Path, out_dir: str | Path, seed: int = 3) -> Path:
    """Copy the LLaVA checkpoint ``llava_dir`` to ``out_dir`` as an anyres + spatial_unpad model (a random
    ``image_newline`` from ``seed``)."""
    import torch
    from safetensors.torch import load_file, save_file

    llava_dir, out_dir = Path(llava_dir), Path(out_dir)
    shutil.copytree(llava_dir, out_dir)
    state = load_file(llava_dir / "model.safetensors")
    state["model.image_newline"] = torch.randn(LLM_HIDDEN, generator=torch.Generator().manual_seed(seed))
    save_file(dict(sorted(state.items())), out_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((llava_dir / "config.json").read_text())
    write_json(out_dir / "config.json", {**config, **ANYRES_FIELDS})
    return out_dir
