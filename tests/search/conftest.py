"""Fixtures of the search tests: tiny GNA and dual runs trained once per session on `tiny_data`."""
from __future__ import annotations

from pathlib import Path

import pytest


def tiny_search_options(data: Path, run: Path, **kw):
    """SearchTrainOptions for a model that trains a few iterations in about a second."""
    from imcap.search.options import SearchTrainOptions

    base = dict(data=str(data), checkpoint_path=str(run), cnn="small", cnn_width=4, image_size=32, input_encoding_size=16,
                rnn_size=16, units=16, embed_size=16, drop_prob_lm=0.0, batch_size=8, max_iters=12, save_checkpoint_every=6,
                val_images_use=6, learning_rate=1e-3, progress=False, seed=3)
    base.update(kw)
    return SearchTrainOptions(**base)


@pytest.fixture(scope="session")
def search_options():
    """The `tiny_search_options(data, run, **overrides)` factory."""
    return tiny_search_options


@pytest.fixture(scope="session")
def search_runs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """{"gna": run dir, "dual": run dir}, each trained 12 iterations on `tiny_data`."""
    from imcap.search.train import train_search

    root = tmp_path_factory.mktemp("search_runs")
    return {kind: train_search(tiny_search_options(tiny_data, root / kind, model=kind)) for kind in ("gna", "dual")}


@pytest.fixture(scope="session")
def synth_images(tiny_data) -> Path:
    """The folder of the 60 synthetic scene images behind `tiny_data`."""
    return tiny_data.parent / "synth" / "images"
