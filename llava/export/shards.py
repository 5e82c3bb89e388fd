"""Write tensors into safetensors shards one tensor at a time: nothing but the tensor being written is held.

``safetensors.torch.save_file`` takes a whole dict, so writing a 13B model with it means holding every (cast) tensor
of a shard at once, on top of the model. The format needs only the names, dtypes and shapes up front (an 8-byte
little-endian header length, the JSON header with each tensor's byte range, then the bytes in that order), so the
header is written from the plan and each tensor is produced, written and dropped in turn.

Shards are named as ``transformers`` names them (``model-00001-of-00003.safetensors`` with
``model.safetensors.index.json``; ``model.safetensors`` alone when everything fits in one) and cut the way it cuts
them: a new shard starts when the next tensor would take the current one past ``max_shard_bytes``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# The header is padded with spaces so that the tensor data starts at an 8-byte boundary, as safetensors writes it.
HEADER_ALIGNMENT = 8


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor to write: its name in the file, dtype, shape and how to produce it (called once, when written)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(tensors: Sequence[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Consecutive groups of ``tensors``, each at most ``max_shard_bytes`` unless one tensor alone is larger."""
    shards: list[list[PlannedTensor]] = []
    current: list[PlannedTensor] = []
    current_bytes = 0
    for tensor in tensors:
        if current and current_bytes + tensor.nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(tensor)
        current_bytes += tensor.nbytes
    if current:
        shards.append(current)
    return shards


def shard_file_name(index: int, count: int) -> str:
    return SINGLE_FILE if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_shards(tensors: Sequence[PlannedTensor], out_dir: str | Path, max_shard_bytes: int) -> list[str]:
    """Write ``tensors`` into ``out_dir`` as safetensors shards (+ the index when there are several); returns the
    file names written."""
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"tensor names must be unique; repeated: {', '.join(duplicated)}")
    out_dir = Path(out_dir)
    shards = plan_shards(tensors, max_shard_bytes)
    files = []
    weight_map = {}
    for index, shard in enumerate(shards):
        file_name = shard_file_name(index, len(shards))
        write_safetensors(shard, out_dir / file_name)
        files.append(file_name)
        weight_map.update({tensor.name: file_name for tensor in shard})
    if len(shards) > 1:
        index_data = {
            "metadata": {"total_size": sum(tensor.nbytes for tensor in tensors)},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (out_dir / INDEX_FILE).write_text(json.dumps(index_data, indent=2) + "\n")
        files.append(INDEX_FILE)
    return files


def write_safetensors(tensors: Sequence[PlannedTensor], path: str | Path) -> None:
    """One safetensors file, its tensors produced and written one at a time in the order given."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{tensor.name}: safetensors cannot store {tensor.dtype}")
        header[tensor.name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % HEADER_ALIGNMENT)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for planned in tensors:
            value = planned.produce()
            if value.dtype != planned.dtype or tuple(value.shape) != planned.shape:
                raise ValueError(
                    f"{planned.name}: produced {value.dtype} {tuple(value.shape)}, planned {planned.dtype} "
                    f"{planned.shape}"
                )
            # A flat byte view of the (contiguous, CPU) tensor: written without another copy.
            flat = value.detach().to("cpu").contiguous().reshape(-1)
            handle.write(flat.view(torch.uint8).numpy().data)
            del value, flat
