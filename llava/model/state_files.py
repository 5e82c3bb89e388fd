"""Reading tensor files (``.bin`` pickles and ``.safetensors``) that training and upstream LLaVA write.

Every state file the project reads goes through :func:`load_state_file`, so there is exactly one place that decides
how a file is opened. ``.bin`` files are unpickled with ``torch.load(..., weights_only=True)``: upstream LLaVA calls
``torch.load`` without it, so a downloaded ``non_lora_trainables.bin`` or ``mm_projector.bin`` could run arbitrary
code on load (docs/upstream_differences.md #9). Here such a file is refused before anything in it runs.
"""

from __future__ import annotations

import pickle
from os import PathLike
from pathlib import Path

import torch

SAFETENSORS_SUFFIX = ".safetensors"


class UnsafeStateFileError(ValueError):
    """A ``.bin`` file holds pickled Python objects other than tensors and plain containers."""


def load_state_file(path: str | PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` mapping from ``path`` onto the CPU.

    ``.safetensors`` files are read with safetensors; anything else is treated as a ``torch.save`` pickle and read
    with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeStateFileError: the pickle references code (a class or function) that ``weights_only`` does not
            allow; nothing from it is executed.
        ValueError: the file does not hold a mapping of string names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state file {path} does not exist")
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeStateFileError(
                f"refusing to load {path}: it is a pickle that references Python code, not only tensors, and "
                "unpickling it could execute that code. Nothing from it was run. If you trust its origin, convert it "
                "to a tensors-only file (for example with safetensors) and load that instead. "
                f"Detail from torch: {_last_line(err)}"
            ) from err
    _check_tensor_mapping(state, path)
    return state


def _check_tensor_mapping(state: object, path: Path) -> None:
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a mapping of parameter names to tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{path} is not a state dict: entry {key!r} is a {type(value).__name__}, expected a tensor under a "
                "string name"
            )


def _last_line(err: BaseException) -> str:
    """The informative part of torch's long ``weights_only`` message (the line naming the refused global)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line
    return lines[-1] if lines else type(err).__name__


def nonfinite_tensors(named_tensors) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf, from a state dict or ``named_parameters()``.

    Quantized storage (uint8 / int8) is skipped: it holds codes, not values.
    """
    items = named_tensors.items() if isinstance(named_tensors, dict) else named_tensors
    return [name for name, tensor in items if tensor.is_floating_point() and not _all_finite(tensor)]


# Elements per `isfinite` call. Over a whole tensor its temporaries take about 2.5x the tensor (measured on a
# 32000 x 1024 float16 embedding): slice by slice they stay a few MiB.
FINITE_CHECK_ELEMENTS = 1 << 20


def _all_finite(tensor: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(part).all()) for part in tensor.detach().reshape(-1).split(FINITE_CHECK_ELEMENTS))
