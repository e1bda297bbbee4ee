"""Search training: checkpoints, resume, evaluation, and learning beyond chance on tiny data."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from imcap.checkpoint import load_checkpoint
from imcap.errors import ImcapError
from imcap.search.data import SearchData
from imcap.search.evaluate import evaluate_search, run_search_eval
from imcap.search.models import load_search_model
from imcap.search.train import SearchTrainer, train_search


@pytest.mark.parametrize("kind", ["gna", "dual"])
def test_training_writes_search_checkpoints(search_runs, kind):
    run = search_runs[kind]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["kind"] == "search" and ckpt["model"] == kind and ckpt["iteration"] == 12
    assert ckpt["fingerprint"] == f"{ckpt['run_id']}:12"
    history = json.loads((run / "history.json").read_text())
    assert [v["iteration"] for v in history["val"]] == [6, 12]
    assert all(0.0 <= v["top1"] <= v["top5"] <= v["top10"] <= 1.0 for v in history["val"])
    best = load_checkpoint(run / "best.pt")
    assert best["iteration"] == history["best"]["iteration"]
    assert best["best_score"] == max(v["top1"] for v in history["val"])


def test_eval_reports_topk_and_map_on_the_test_split(search_runs, tiny_data):
    m = run_search_eval(str(search_runs["gna"]), progress=False)
    assert m["kind"] == "gna" and m["split"] == "test" and m["gallery"] == 6 and m["queries"] == 30
    assert 0.0 <= m["top1"] <= m["top5"] <= m["top10"] == 1.0  # a gallery of 6 always holds the right image in the top 10
    assert 0.0 < m["mAP"] <= 1.0


def test_resume_continues_exactly(tiny_data, tmp_path, search_options):
    straight = train_search(search_options(tiny_data, tmp_path / "a", model="gna", max_iters=8, save_checkpoint_every=4, drop_prob_lm=0.3))
    train_search(search_options(tiny_data, tmp_path / "b", model="gna", max_iters=4, save_checkpoint_every=4, drop_prob_lm=0.3))
    resumed = train_search(search_options(tiny_data, tmp_path / "b", model="gna", max_iters=8, save_checkpoint_every=4, resume=True))
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert b["iteration"] == 8 and b["options"]["drop_prob_lm"] == 0.3  # the run's own options come back
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, msg=key)


def test_run_directory_is_not_overwritten(search_runs, tiny_data, search_options):
    with pytest.raises(ImcapError, match="already holds a run"):
        SearchTrainer(search_options(tiny_data, search_runs["dual"], model="dual"))


@pytest.mark.parametrize("override, problem", [
    ({"data": ""}, "--data is required"),
    ({"model": "clip"}, "--model must be one of gna, dual"),
    ({"batch_size": 1}, "--batch-size"),
    ({"neg_time": 0}, "--neg-time"),
])
def test_bad_options_are_one_line_errors(tiny_data, tmp_path, search_options, override, problem):
    with pytest.raises(ImcapError, match=problem):
        SearchTrainer(dataclasses.replace(search_options(tiny_data, tmp_path / "r"), **override))


def test_no_iteration_limit_is_an_error(tiny_data, tmp_path, search_options):
    with pytest.raises(ImcapError, match="--max-iters"):
        train_search(search_options(tiny_data, tmp_path / "r", max_iters=-1))


def test_dual_beats_chance_on_tiny_data(tiny_data, tmp_path, search_options):
    """A few hundred iterations learn the training scenes: top-1 far above 1/48 on the 48 training images."""
    run = train_search(search_options(tiny_data, tmp_path / "r", model="dual", max_iters=240, save_checkpoint_every=240,
                                      batch_size=16, learning_rate=3e-3, cnn_width=8))
    loaded = load_search_model(run / "last.pt")
    m = evaluate_search(loaded.model, SearchData.load(tiny_data), "train")
    assert m["gallery"] == 48
    assert m["top1"] > 0.2 and m["top10"] > 0.6  # chance: 1/48 = 0.02 and 10/48 = 0.21


def test_cnn_from_copies_an_image_encoder(search_runs, tiny_run, tiny_data, tmp_path, search_options):
    gna = SearchTrainer(search_options(tiny_data, tmp_path / "a", model="gna", cnn_from=str(search_runs["dual"]))).model
    source = load_search_model(search_runs["dual"]).model.encoder.state_dict()
    mine = gna.encoder.state_dict()
    assert mine.keys() == source.keys() and all(torch.equal(mine[k], source[k]) for k in mine)
    from_captioner = SearchTrainer(search_options(tiny_data, tmp_path / "b", model="dual", cnn_from=str(tiny_run))).model
    caption_state = load_checkpoint(tiny_run / "best.pt")["model"]
    conv = from_captioner.encoder.backbone.state_dict()
    assert all(torch.equal(v, caption_state[f"encoder.backbone.{k}"]) for k, v in conv.items())
    with pytest.raises(ImcapError, match="does not fit --cnn small --cnn-width 8"):
        SearchTrainer(search_options(tiny_data, tmp_path / "c", model="gna", cnn_width=8, cnn_from=str(search_runs["dual"])))
