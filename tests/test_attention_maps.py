"""Attention pictures: cell geometry, upsampling, figures, and attention that really points at the named object."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from imcap.attention_maps import (
    GridGeometry,
    attention_figure,
    attention_peak,
    default_geometry,
    grid_geometry,
    smooth,
    spotlight,
    upsample,
    write_attention_maps,
)
from imcap.models.encoders import build_encoder


@pytest.mark.parametrize("width,size", [(4, 64), (16, 64), (8, 128)])
def test_small_cnn_cells_are_centred_on_multiples_of_the_stride(width, size):
    # Strided "same" convolutions centre cell j on pixel 8j (continuous 8j + 0.5), not on 8j + 4.
    geo = grid_geometry(build_encoder("small", 8, None, width, size), size)
    assert geo == GridGeometry(size, 0.5, 0.5, 8.0, 8.0)
    assert geo.centre(2, 3) == (24.5, 16.5)


def test_upsampled_map_peaks_at_the_cell_centre():
    geo = GridGeometry(64, 0.5, 0.5, 8.0, 8.0)
    maps = torch.zeros(2, 8, 8)
    maps[0, 2, 5] = 1.0
    maps[1, 7, 0] = 1.0
    up = upsample(maps, 64, geo)  # one output pixel per input pixel
    assert up.shape == (2, 64, 64)
    for k, (row, col) in enumerate([(2, 5), (7, 0)]):
        y, x = divmod(int(up[k].argmax()), 64)
        cx, cy = geo.centre(row, col)
        assert (x + 0.5, y + 0.5) == (cx, cy)
        assert attention_peak(maps[k], geo) == (cx, cy)
        assert attention_peak(maps[k], geo, 32) == (cx / 2, cy / 2)
    centred = upsample(maps[:1], 64, default_geometry(64, 8, 8))  # cells in the middle of their blocks
    y, x = divmod(int(centred[0].argmax()), 64)
    assert (x // 8, y // 8) == (5, 2) and up[0].sum() > 0


def test_smoothing_moves_the_peak_into_a_ring_of_attention():
    # Attention around an object's edges (a ring of cells) peaks, once smoothed, on the object in the middle.
    ring = torch.zeros(8, 8)
    ring[2:5, 2:5] = 1.0
    ring[3, 3] = 0.0
    ring[2, 2] = 1.2  # the raw peak is on the ring
    geo = GridGeometry(64, 0.5, 0.5, 8.0, 8.0)
    assert attention_peak(ring, geo, sigma=0.0) == geo.centre(2, 2)
    assert attention_peak(ring, geo) == geo.centre(3, 3)
    assert torch.equal(smooth(ring, 0.0), ring)
    inner = torch.zeros(8, 8)
    inner[4, 4] = 1.0
    torch.testing.assert_close(smooth(inner, 1.0).sum(), torch.tensor(1.0))  # mass kept away from the border


def test_spotlight_and_figure():
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    weights = torch.zeros(3, 8, 8)
    weights[:, 1, 6] = 1.0
    lit = torch.from_numpy(np.asarray(spotlight(image, weights[0], 128), dtype=np.float32))  # (128, 128, 3)
    assert lit[2 * 9, 2 * 49].sum() > 3 * lit[100, 20].sum()  # bright at the attended cell, dark far away
    fig = attention_figure(image, "a red circle", weights[:3], columns=6)
    assert fig.size[1] < 2 * 128 and fig.size[0] > 3 * 128  # one row: the image and three tokens


def test_write_attention_maps_keeps_files_with_the_same_name_apart(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.new("RGB", (64, 64), "white").save(tmp_path / d / "x.png")
    results = [{"file": str(tmp_path / d / "x.png"), "caption": "a cat", "attention": torch.rand(3, 8, 8)} for d in ("a", "b")]
    written = write_attention_maps(results, tmp_path / "out")
    assert [p.name for p in written] == ["x.png", "x-1.png"] and all(p.is_file() for p in written)


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    """show_attend_tell after a short focused run; its grounding on the val + test scenes.

    Focused: scenes with one or two objects (object words are unambiguous more often), captions cut to
    their first 8 words (half the decoding steps), 128 px input (the 64 px scenes upsampled, so that the
    small CNN's 8 px cells are 4 scene pixels and objects span several cells).
    """
    from imcap.attention_maps import grounding
    from imcap.captioner import Captioner
    from imcap.config import TrainOptions
    from imcap.data.loader import PreproData
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes
    from imcap.decoding import DecodeOptions
    from imcap.train import train

    root = tmp_path_factory.mktemp("ground")
    generate_scenes(root / "synth", num_images=500, seed=11, progress=False)
    captions = root / "synth" / "captions.json"
    meta = json.loads(captions.read_text())
    meta["images"] = [r for r in meta["images"] if len(r["objects"]) <= 2]
    captions.write_text(json.dumps(meta))
    prepro(PreproOptions(input=str(root / "synth"), output_dir=str(root / "data"), word_count_threshold=0, max_length=8))
    run = train(TrainOptions(
        data=str(root / "data"), checkpoint_path=str(root / "run"), model="show_attend_tell", cnn="small", cnn_width=8,
        image_size=128, input_encoding_size=48, rnn_size=48, drop_prob_lm=0.0, batch_size=32, seq_per_img=1,
        learning_rate=4e-3, max_iters=200, save_checkpoint_every=200, val_images_use=8, progress=False, seed=5,
    ))
    data = PreproData.load(root / "data")
    captioner = Captioner.load(run / "last.pt", "cpu")
    indices = data.split_indices("val") + data.split_indices("test")
    opts = DecodeOptions(max_length=16)
    return grounding(captioner, data, indices, opts), grounding(captioner, data, indices, opts, sigma=0.0)


def test_attention_peaks_inside_the_named_object(grounded):
    # Words naming one object (its colour or its shape): the attention map's peak lies in that object's box.
    smoothed, raw = grounded
    assert smoothed.words >= 60
    assert smoothed.rate > 0.5, smoothed  # measured 0.70-0.85 over seeds 5-8
    assert smoothed.rate > 5 * smoothed.chance_rate, smoothed
    assert raw.rate > 3 * raw.chance_rate, raw  # even the highest raw cell: measured 0.51-0.69
