"""Helpers shared by tests (a uniquely named module: several conftest.py files exist)."""
from __future__ import annotations

from pathlib import Path


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
