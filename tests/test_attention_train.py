"""Attention and conditional decoders end to end on tiny data: train, checkpoint, resume, decode, evaluate, pictures."""
import json

import pytest
import torch
from PIL import Image

from imcap.captioner import Captioner
from imcap.checkpoint import load_checkpoint
from imcap.cli import main
from imcap.decoding import DecodeOptions
from imcap.errors import ImcapError
from imcap.train import train

from imcap_testing import tiny_train_options

SS = dict(scheduled_sampling_start=0, ss_increase_every=1, ss_increase_prob=0.3, ss_max_prob=0.6)


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture()
def cider_only(monkeypatch):
    """Score with CIDEr alone: METEOR's Java start-up is not what these tests are about."""
    import imcap.evaluate

    score = imcap.evaluate.language_scores
    monkeypatch.setattr(imcap.evaluate, "language_scores", lambda refs, preds, metrics=("CIDEr",): score(refs, preds, ("CIDEr",)))


def weights(run):
    return load_checkpoint(run / "last.pt")["model"]


@pytest.fixture(scope="module")
def vqa_data(tmp_path_factory):
    """A prepro directory of question/answer pairs about 40 synthetic scenes."""
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes

    root = tmp_path_factory.mktemp("vqa")
    generate_scenes(root / "synth", num_images=40, seed=3, task="vqa", progress=False)
    prepro(PreproOptions(input=str(root / "synth"), output_dir=str(root / "data"), word_count_threshold=0))
    return root / "data"


@pytest.fixture(scope="module")
def sat_run(tiny_data, tmp_path_factory):
    """show_attend_tell (2-layer GRU, scheduled sampling, attention regulariser) trained 6 iterations."""
    run = tmp_path_factory.mktemp("sat") / "run"
    return train(tiny_train_options(tiny_data, run, model="show_attend_tell", rnn_type="gru", num_layers=2, alpha_c=0.5, **SS))


def test_show_attend_tell_resumes_exactly_with_scheduled_sampling(tiny_data, sat_run, tmp_path):
    opts = dict(model="show_attend_tell", rnn_type="gru", num_layers=2, alpha_c=0.5, **SS)
    train(tiny_train_options(tiny_data, tmp_path / "split", max_iters=3, **opts))
    train(tiny_train_options(tiny_data, tmp_path / "split", resume=True))
    full, split = weights(sat_run), weights(tmp_path / "split")
    assert full.keys() == split.keys()
    for k in full:
        assert torch.equal(full[k], split[k]), k
    ckpt = load_checkpoint(sat_run / "last.pt")
    assert ckpt["model_args"]["model"] == "show_attend_tell" and ckpt["model_args"]["num_layers"] == 2
    assert ckpt["iteration"] == 6


def test_captioner_returns_attention_for_greedy_and_beam(sat_run, tiny_data):
    captioner = Captioner.load(sat_run, "cpu")
    assert captioner.has_attention
    images = torch.rand(3, 3, captioner.image_size, captioner.image_size)
    for opts in (DecodeOptions(max_length=5), DecodeOptions(beam_size=3, max_length=5, n=2)):
        out = captioner.caption_tensors(images, opts, return_attention=True)
        assert [len(caps) for caps in out] == [opts.n] * 3
        h, w = captioner.model.grid_size
        for caption, score, att in (c for caps in out for c in caps):
            assert att.shape[1:] == (h, w) and len(caption.split()) <= att.size(0) <= len(caption.split()) + 1
            torch.testing.assert_close(att.flatten(1).sum(1), torch.ones(att.size(0)))
        plain = captioner.caption_tensors(images, opts)
        assert [[c[:2] for c in caps] for caps in out] == plain


def test_eval_report_shows_attention(sat_run, tmp_path, cider_only):
    from imcap.config import EvalOptions
    from imcap.evaluate import run_eval

    metrics = run_eval(EvalOptions(model=str(sat_run), split="val", beam_size=2, out=str(tmp_path), progress=False, html_images=2))
    assert "CIDEr" in metrics and metrics["images"] == 6
    assert (tmp_path / "report.html").read_text().count("alt='attention of each word'") == 2


def test_caption_attention_and_explain_cli(capsys, sat_run, tiny_data, tmp_path):
    meta = json.loads((tiny_data / "images.json").read_text())
    files = [f"{meta['image_root']}/{im['file_path']}" for im in meta["images"][:2]]
    code, out, err = run_cli(capsys, "caption", "--model", sat_run, *files, "--attention", tmp_path / "att", "--beam-size", "2", "--json")
    assert code == 0 and "wrote 2 attention map(s)" in err
    results = json.loads(out)["results"]
    assert len(results) == 2 and all("attention" not in r for r in results)
    for f, r in zip(files, results):
        picture = Image.open(tmp_path / "att" / (f.rsplit("/", 1)[1]))
        tokens = len(r["caption"].split()) + 1
        assert picture.size[1] > 128 * (1 + tokens) // 6  # a row of tiles per 6 tokens
    code, out, _ = run_cli(capsys, "explain", "--model", sat_run, files[0], "--out", tmp_path / "ex")
    assert code == 0 and (tmp_path / "ex" / files[0].rsplit("/", 1)[1]).is_file()


def test_show_tell_has_no_attention_but_explains(capsys, tiny_run, tiny_data, tmp_path):
    meta = json.loads((tiny_data / "images.json").read_text())
    file = f"{meta['image_root']}/{meta['images'][0]['file_path']}"
    code, _, err = run_cli(capsys, "caption", "--model", tiny_run, file, "--attention", tmp_path / "att")
    assert code == 2 and "has no attention" in err
    code, out, _ = run_cli(capsys, "explain", "--model", tiny_run, file, "--out", tmp_path / "ex")
    assert code == 0 and out.count("\t") == 1


def test_saliency_is_the_gradient_of_each_word(tiny_run):
    from imcap.saliency import explain

    captioner = Captioner.load(tiny_run, "cpu")
    image = torch.rand(3, captioner.image_size, captioner.image_size)
    caption, words, maps = explain(captioner, image)
    assert words[-1] == "<END>" and words[:-1] == caption.split()
    assert maps.shape == (len(words), captioner.image_size, captioner.image_size) and (maps >= 0).all()
    # Finite differences: brightening the most salient pixel changes the first word's log-probability more than a dull one.
    from imcap.data.vocab import START

    first = captioner.vocab.word_to_idx[words[0]] if words[0] != "<END>" else 2

    def logp(x):
        with torch.no_grad():
            feats = captioner.model.encode(x[None])
            return float(torch.log_softmax(captioner.model.decoder(feats, torch.tensor([[START]]))[0, 0], -1)[first])

    flat = maps[0].flatten()
    top, low = int(flat.argmax()), int(flat.argmin())
    base = logp(image)
    deltas = []
    for pos in (top, low):
        x = image.clone()
        x.view(3, -1)[:, pos] += 0.05
        deltas.append(abs(logp(x) - base))
    assert deltas[0] > deltas[1]


def test_show_tell_with_scheduled_sampling_trains(tiny_data, tmp_path):
    run = train(tiny_train_options(tiny_data, tmp_path / "st", max_iters=3, save_checkpoint_every=3, **SS))
    losses = load_checkpoint(run / "last.pt")["history"]["val"]
    assert losses and all(v["loss"] == v["loss"] for v in losses)


def test_coatt_on_vqa_trains_decodes_and_needs_its_condition(capsys, vqa_data, tmp_path, cider_only):
    run = train(tiny_train_options(vqa_data, tmp_path / "coatt", model="coatt", rnn_type="lstm", num_layers=2, max_iters=4, save_checkpoint_every=2, language_eval=True, alpha_c=0.1, **SS))
    args = load_checkpoint(run / "last.pt")["model_args"]
    assert args["condition_field"] == "answer"
    assert {"red", "circle", "small", "two"} <= set(args["condition_vocab"])
    captioner = Captioner.load(run, "cpu")
    images = torch.rand(2, 3, captioner.image_size, captioner.image_size)
    with pytest.raises(ImcapError, match="give a condition"):
        captioner.caption_tensors(images)
    for opts in (DecodeOptions(max_length=6), DecodeOptions(beam_size=2, max_length=6), DecodeOptions(sample=True, max_length=6)):
        out = captioner.caption_tensors(images, opts, return_attention=True, condition=["red", "two"])
        assert len(out) == 2 and out[0][0][2].shape[1:] == captioner.model.grid_size
    assert isinstance(captioner.caption(images[0], condition="blue"), str)
    from imcap.config import EvalOptions
    from imcap.evaluate import run_eval

    metrics = run_eval(EvalOptions(model=str(run), split="test", beam_size=2, out=str(tmp_path / "ev"), progress=False, html_images=3))
    assert "CIDEr" in metrics
    assert (tmp_path / "ev" / "report.html").read_text().count("alt='attention of each word'") == 3
    meta = json.loads((vqa_data / "images.json").read_text())
    file = f"{meta['image_root']}/{meta['images'][0]['file_path']}"
    code, _, err = run_cli(capsys, "caption", "--model", run, file)
    assert code == 2 and "--condition" in err
    code, out, _ = run_cli(capsys, "caption", "--model", run, file, "--condition", "red")
    assert code == 0
    code, out, _ = run_cli(capsys, "explain", "--model", run, file, "--condition", "red", "--out", tmp_path / "ex")
    assert code == 0


@pytest.mark.parametrize("model", ["show_attend_tell", "coatt"])
def test_region_features_instead_of_a_cnn(model, tiny_data, vqa_data, tmp_path, cider_only):
    import numpy as np

    from imcap.data.loader import PreproData

    data_dir = vqa_data if model == "coatt" else tiny_data
    data = PreproData.load(data_dir)
    rng = np.random.default_rng(0)
    for im in data.images:  # 36 bottom-up-style regions of 12 numbers per image
        np.save(tmp_path / f"{im['id']}.npy", rng.standard_normal((36, 12)).astype(np.float32))
    run = train(tiny_train_options(data_dir, tmp_path / "run", model=model, features_dir=str(tmp_path), max_iters=3, **SS))
    args = load_checkpoint(run / "last.pt")["model_args"]
    assert args["cnn"] == "none" and args["feature_dim"] == 12
    from imcap.config import EvalOptions
    from imcap.evaluate import run_eval

    metrics = run_eval(EvalOptions(model=str(run), split="val", beam_size=2, out=str(tmp_path / "ev"), progress=False))
    assert "CIDEr" in metrics and metrics["images"] == len(data.split_indices("val"))


def test_explain_skips_bad_images(capsys, tiny_run, tiny_data, tmp_path):
    meta = json.loads((tiny_data / "images.json").read_text())
    good = tmp_path / "good.png"
    Image.open(f"{meta['image_root']}/{meta['images'][0]['file_path']}").save(good)
    (tmp_path / "bad.png").write_text("not an image")
    code, out, err = run_cli(capsys, "explain", "--model", tiny_run, good, tmp_path / "bad.png", "--out", tmp_path / "ex")
    assert code == 0 and out.count("\t") == 1 and "skipped 1 bad image(s) of 2" in err
    code, _, err = run_cli(capsys, "explain", "--model", tiny_run, tmp_path / "bad.png", "--out", tmp_path / "ex")
    assert code == 2 and "no image could be explained" in err and "Traceback" not in err
