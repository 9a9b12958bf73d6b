"""Dashboard checks shared by the dashboard and pipeline tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from maira_sae.sae.dashboard import TENSORS_FILE, read_metadata


def assert_same_dashboard(folder: Path, reference: Path) -> None:
    """The same files: metadata equal key for key, every tensor equal to the last bit."""
    assert read_metadata(folder) == read_metadata(reference)
    ours, theirs = load_file(str(folder / TENSORS_FILE)), load_file(str(reference / TENSORS_FILE))
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        assert np.array_equal(ours[name], tensor, equal_nan=True), name
