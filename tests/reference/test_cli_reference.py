"""`imcap reference gradcheck` and `imcap reference train` end to end, and their one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from imcap.cli import main
from imcap.data.vocab import Vocab, tokenize

FLICKR8K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "flickr8k"
SMALL = ["--wordvec-dim", "8", "--hidden-dim", "8", "--batch-size", "5", "--show", "2"]


@pytest.fixture(autouse=True)
def _restore_blas_env(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # the CLI sets it when unset; keep other tests' env as it was


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_gradcheck_prints_every_layer_and_the_model(capsys):
    code, out, _ = run(capsys, "reference", "gradcheck", "--cell", "rnn")
    assert code == 0
    for name in ("affine", "temporal_affine", "word_embedding", "temporal_softmax_loss", "rnn_step",
                 "CaptioningRNN[rnn]", "CaptioningRNN[lstm] loss"):
        assert f"  {name} " in out
    assert "lstm_step" not in out and "FAIL" not in out and "0 failed" in out


def test_train_on_npy_files_with_a_vocab(tmp_path, capsys):
    vocab = Vocab(["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "ball"])
    vocab.save(tmp_path / "vocab.json")
    captions = np.array([[1, 4, 5, 6, 2], [1, 4, 6, 2, 0], [1, 5, 6, 2, 0]])
    np.save(tmp_path / "c.npy", captions)
    np.save(tmp_path / "f.npy", np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32))
    np.save(tmp_path / "i.npy", np.array([0, 1, 1]))
    code, out, _ = run(capsys, "reference", "train", "--cell", "gru", "--features", tmp_path / "f.npy",
                       "--captions", tmp_path / "c.npy", "--image-idxs", tmp_path / "i.npy",
                       "--vocab", tmp_path / "vocab.json", "--num-epochs", "30", *SMALL)
    assert code == 0, out
    assert "data: 3 captions, 7-word vocabulary" in out
    assert "loss curve" in out and "iteration    30" in out
    assert "[0] truth:  a red ball\n      sample: " in out and "[1] truth:  a ball" in out


def test_train_builtin_set_falls_back_to_synthetic_words(tmp_path, capsys):
    code, out, _ = run(capsys, "reference", "train", "--cell", "rnn", "--flickr8k", tmp_path / "absent",
                       "--num-train", "10", "--feature-dim", "8", "--num-epochs", "3", *SMALL)
    assert code == 0
    assert "10 captions" in out and "synthetic words" in out and "iteration     6" in out


@pytest.mark.skipif(not (FLICKR8K / "Flickr8k.token.txt").is_file(), reason="../shared/data/flickr8k is absent")
def test_train_builtin_set_uses_real_flickr8k_captions(capsys):
    code, out, _ = run(capsys, "reference", "train", "--flickr8k", FLICKR8K, "--num-train", "5",
                       "--feature-dim", "8", "--num-epochs", "1", *SMALL)
    assert code == 0
    assert "captions from Flickr8k" in out and "truth:  a child in a pink dress" in out


@pytest.mark.parametrize("args, message", [
    (["--features", "{tmp}/missing.npy", "--captions", "{tmp}/c.npy"], "missing.npy: features file not found"),
    (["--features", "{tmp}/c.npy"], "--features: give it together with --captions or --prepro"),
    (["--features", "{tmp}/f.npy", "--captions", "{tmp}/f.npy"], "f.npy: captions must be integers"),
    (["--features", "{tmp}/junk.npy", "--captions", "{tmp}/c.npy"], "junk.npy: not a .npy array"),
    (["--features", "{tmp}/f.npy", "--captions", "{tmp}/c.npy", "--vocab", "{tmp}/v.json"],
     "c.npy: word ids outside the 5-word vocabulary"),
    (["--features", "{tmp}/f.npy", "--captions", "{tmp}/c.npy", "--vocab", "{tmp}/nope.json"],
     "nope.json: vocabulary file not found"),
    (["--num-train", "0"], "--num-train must be >= 1 (got 0)"),
    (["--cell", "transformer"], "--cell must be one of rnn, lstm, gru"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, args, message):
    np.save(tmp_path / "f.npy", np.zeros((2, 3)))
    np.save(tmp_path / "c.npy", np.array([[1, 5, 2], [1, 6, 2]]))
    (tmp_path / "junk.npy").write_text("not numpy")
    Vocab(["<NULL>", "<START>", "<END>", "<UNK>", "x"]).save(tmp_path / "v.json")
    code, _, err = run(capsys, "reference", "train", *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("imcap: error:") and message in lines[-1], err


def test_train_on_an_imcap_prepro_folder(tiny_data, tmp_path, capsys):
    images = json.loads((tiny_data / "images.json").read_text())["images"]
    (tmp_path / "feats").mkdir()  # laid out like `imcap features` output: fp16 pooled.npy, images.json order
    np.save(tmp_path / "feats" / "pooled.npy", np.random.default_rng(0).standard_normal((len(images), 6)).astype(np.float16))
    code, out, _ = run(capsys, "reference", "train", "--prepro", tiny_data, "--features", tmp_path / "feats",
                       "--num-train", "12", "--num-epochs", "2", *SMALL)
    assert code == 0, out
    first = next(im for im in images if im["split"] == "train")
    vocab = Vocab.load(tiny_data / "vocab.json")
    truth = vocab.decode(vocab.encode(tokenize(first["captions"][0]), 16))
    assert "data: 12 captions" in out and "pooled.npy" in out and f"[0] truth:  {truth}\n" in out
    np.save(tmp_path / "few.npy", np.zeros((3, 6)))
    code, _, err = run(capsys, "reference", "train", "--prepro", tiny_data, "--features", tmp_path / "few.npy")
    assert code == 2 and "few.npy: 3 feature rows" in err
