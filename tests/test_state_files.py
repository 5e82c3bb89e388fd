"""`load_state_file`: the one reader of .bin / .safetensors tensor files refuses pickles that carry code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from llava.model.state_files import UnsafeStateFileError, load_state_file


class _CreatesMarkerFile:
    """Unpickling this object would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_bin(path, marker) -> None:
    """A torch.save file that looks like a state dict but runs code when fully unpickled."""
    torch.save({"model.mm_projector.0.weight": torch.zeros(2, 2), "payload": _CreatesMarkerFile(str(marker))}, path)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    bin_file, marker = tmp_path / "non_lora_trainables.bin", tmp_path / "marker"
    write_malicious_bin(bin_file, marker)

    with pytest.raises(
        UnsafeStateFileError, match="refusing to load .*non_lora_trainables.bin.*Nothing from it was run"
    ):
        load_state_file(bin_file)
    assert not marker.exists()


def test_the_malicious_pickle_really_runs_code_without_weights_only(tmp_path):
    """Guards the test above: the payload is live, so its marker's absence there means something."""
    bin_file, marker = tmp_path / "evil.bin", tmp_path / "marker"
    write_malicious_bin(bin_file, marker)
    torch.load(bin_file, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_reads_tensors_onto_cpu_with_names_and_values(tmp_path, suffix):
    state = {
        "base_model.model.model.mm_projector.0.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "base_model.model.model.mm_projector.0.bias": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
    }
    path = tmp_path / f"weights{suffix}"
    if suffix == ".bin":
        torch.save(state, path)
    else:
        save_file(state, path)

    loaded = load_state_file(path)

    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert loaded[key].device.type == "cpu"
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.bin does not exist"):
        load_state_file(tmp_path / "absent.bin")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([torch.zeros(1)], "holds a list"),
        ({"weight": 3}, "entry 'weight' is a int"),
        ({0: torch.zeros(1)}, "entry 0 is a Tensor"),
    ],
)
def test_non_state_dict_content_is_rejected(tmp_path, content, message):
    path = tmp_path / "odd.bin"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        load_state_file(path)


def test_plain_pickle_with_code_is_refused(tmp_path):
    """Not a torch zip archive but a bare pickle stream (old `torch.save(_use_new_zipfile_serialization=False)`)."""
    path, marker = tmp_path / "mm_projector.bin", tmp_path / "marker"
    with open(path, "wb") as handle:
        pickle.dump({"w": _CreatesMarkerFile(str(marker))}, handle, protocol=2)
    with pytest.raises(UnsafeStateFileError, match="mm_projector.bin"):
        load_state_file(path)
    assert not os.path.exists(marker)
