"""Shared fixtures: a tiny synthetic data set, prepro'd once per session, and a tiny trained run."""
from __future__ import annotations

import os
from pathlib import Path

# Before torch loads OpenMP: busy-waiting threads make small ops 100x slower when the cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

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


def tiny_train_options(data: Path, run: Path, **kw):
    """TrainOptions for a model small enough to train a few iterations in about a second."""
    from imcap.train import TrainOptions

    base = dict(
        data=str(data), checkpoint_path=str(run), cnn="small", cnn_width=4, input_encoding_size=16, rnn_size=16,
        batch_size=4, seq_per_img=2, max_iters=6, save_checkpoint_every=3, val_images_use=4, progress=False,
        learning_rate=1e-3, seed=5,
    )
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A run directory trained for 6 iterations on `tiny_data`."""
    from imcap.train import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    return train(tiny_train_options(tiny_data, run))
