"""Shared fixtures: a tiny synthetic data set, prepro'd once per session, and a tiny trained run."""
from __future__ import annotations

import os
from pathlib import Path

# Before torch loads OpenMP: busy-waiting threads make small ops 100x slower when the cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small NumPy matrices: BLAS threads only contend
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402, F401  (loaded once, after the environment above)
from imcap_testing import tiny_train_options  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepro directory of 60 synthetic scenes (48 train, 6 val, 6 test)."""
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes

    root = tmp_path_factory.mktemp("tiny")
    generate_scenes(root / "synth", num_images=60, seed=7)
    prepro(PreproOptions(input=str(root / "synth"), output_dir=str(root / "data"), word_count_threshold=0))
    return root / "data"


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A run directory trained for 6 iterations on `tiny_data`."""
    from imcap.train import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    return train(tiny_train_options(tiny_data, run))


@pytest.fixture()
def small_disk(tmp_path):
    """A folder on a 3 MB file system (a tmpfs as root, else simulated); yields (folder, "tmpfs" | "simulated")."""
    from imcap_testing import small_filesystem

    folder = tmp_path / "disk"
    with small_filesystem(folder, size_mb=3) as kind:
        yield folder, kind
