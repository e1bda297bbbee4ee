"""A prepro folder whose labels.npy does not match its images.json is refused, not silently used."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from imcap.data.loader import PreproData
from imcap.errors import ImcapError


def test_mismatched_labels_are_refused(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    labels = np.load(data / "labels.npy")
    np.save(data / "labels.npy", labels[:-3])
    with pytest.raises(ImcapError, match="labels.npy: shape .* does not match images.json"):
        PreproData.load(data)
