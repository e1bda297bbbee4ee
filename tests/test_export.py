"""imcap export: the portable folder loads without pickle and captions exactly like its run; ONNX greedy equals PyTorch greedy."""
from __future__ import annotations

import json
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from imcap_testing import tiny_train_options

from imcap.captioner import Captioner
from imcap.cli import main
from imcap.data.loader import PreproData
from imcap.decoding import DecodeOptions
from imcap.export import folder
from imcap.export.command import export_model
from imcap.export.options import ExportOptions


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("imcap: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def test_images(tiny_data: Path) -> list[Path]:
    """The images of the synthetic test split."""
    data = PreproData.load(tiny_data)
    return [data.image_path(i) for i in data.split_indices("test")]


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory) -> Path:
    """`imcap export` of the tiny show_tell run (no ONNX)."""
    out = tmp_path_factory.mktemp("export") / "tiny-model"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(tiny_run), "--out", str(out)])
    assert exc.value.code == 0
    return out


def batch_of(captioner: Captioner, paths: list[Path]) -> torch.Tensor:
    return torch.stack([captioner.to_tensor(p) for p in paths])  # (B, 3, S, S)


# ---------------------------------------------------------------- the portable folder


def test_export_captions_exactly_like_its_run(exported, tiny_run, test_images):
    run_model, export_model_ = Captioner.load(tiny_run, "cpu"), Captioner.load(exported, "cpu")
    want, got = run_model.model.state_dict(), export_model_.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    images = batch_of(run_model, test_images)
    for opts in (DecodeOptions(), DecodeOptions(beam_size=3, n=2)):
        assert export_model_.caption_tensors(images, opts) == run_model.caption_tensors(images, opts)  # captions and scores
    for key in ("iteration", "epoch", "best_iteration", "metrics", "options"):
        assert export_model_.info[key] == run_model.info[key], key


def test_export_folder_holds_config_vocab_and_model_card(exported, tiny_run, tiny_data):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors", "vocab.json"]
    config = json.loads((exported / "config.json").read_text())
    run_model = Captioner.load(tiny_run, "cpu")
    assert config["format"] == "imcap-export" and config["version"] == 1
    assert config["model_args"]["rnn_size"] == run_model.model.args.rnn_size and config["image_size"] == run_model.image_size
    assert config["data"]["path"] == str(tiny_data) and len(config["data"]["fingerprint"]) == 32
    assert config["data"]["splits"] == {"train": 48, "val": 6, "test": 6}
    assert set(config["files"]) == {"model.safetensors", "vocab.json"}
    assert json.loads((exported / "vocab.json").read_text())["idx_to_word"] == run_model.vocab.idx_to_word
    card = (exported / "README.md").read_text()
    loss = run_model.info["metrics"]["loss"]
    assert str(tiny_data) in card and config["data"]["fingerprint"] in card and "test 6, train 48, val 6" in card
    assert f"| loss | {loss:.4f} |" in card and 'Captioner.load("tiny-model")' in card and config["created"][:10] in card


def test_loading_an_export_runs_no_pickle(exported, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an export must load without pickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert Captioner.load(exported, "cpu").caption(torch.rand(3, 64, 64))


def test_caption_cli_reads_an_export(capsys, exported, tiny_run, test_images):
    code, out, _ = run(capsys, "caption", "--model", exported, *test_images, "--json", "--beam-size", "2")
    assert code == 0
    got = [r["caption"] for r in json.loads(out)["results"]]
    assert got == Captioner.load(tiny_run, "cpu").caption(test_images, beam_size=2)


def test_serve_loads_an_export(exported, tiny_run, test_images):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
    with warnings.catch_warnings():  # newer Starlette asks for httpx2; httpx (the dev extra) still works
        warnings.filterwarnings("ignore", message=".*httpx2")
        from fastapi.testclient import TestClient

    from imcap.serve.app import create_app

    with TestClient(create_app(Captioner.load(exported, "cpu"))) as client:
        card = client.get("/v1/model").json()
        files = [("image", (p.name, p.read_bytes(), "image/png")) for p in test_images[:3]]
        body = client.post("/v1/caption", files=files).json()
    assert card["iteration"] == 6 and card["model_args"]["model"] == "show_tell"
    assert [r["captions"][0]["caption"] for r in body["results"]] == Captioner.load(tiny_run, "cpu").caption(test_images[:3])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _same_size_garbage(path: Path) -> None:
    path.write_bytes(b"\x00" * path.stat().st_size)


def _bigger_model(config: Path) -> None:
    raw = json.loads(config.read_text())
    raw["model_args"]["rnn_size"] += 1
    config.write_text(json.dumps(raw))


@pytest.mark.parametrize("damage, needle", [
    (lambda d: _truncate(d / "model.safetensors"), "model.safetensors: "),
    (lambda d: _same_size_garbage(d / "model.safetensors"), "SHA-256 mismatch"),
    (lambda d: (d / "vocab.json").unlink(), "vocab.json: missing from the export"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: missing from the export"),
    (lambda d: (d / "config.json").unlink(), "no config.json"),
    (lambda d: _truncate(d / "config.json"), "config.json: unreadable or truncated JSON"),
    (lambda d: (d / "config.json").write_text('{"format": "something-else"}'), "not an imcap export config"),
    (lambda d: _bigger_model(d / "config.json"), "weights do not match the model"),
], ids=["truncated-weights", "replaced-weights", "no-vocab", "no-weights", "no-config", "truncated-config", "foreign-config", "wrong-args"])
def test_damaged_export_gives_one_line_error(capsys, exported, tmp_path, test_images, damage, needle):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    damage(broken)
    code, _, err = run(capsys, "caption", "--model", broken, test_images[0])
    assert code == 2
    assert needle in one_line_error(err)


def test_export_is_atomic_and_never_overwrites_by_accident(capsys, tiny_run, exported, tmp_path, monkeypatch):
    out = tmp_path / "model"
    assert run(capsys, "export", "--model", tiny_run, "--out", out)[0] == 0
    code, _, err = run(capsys, "export", "--model", tiny_run, "--out", out)
    assert code == 2 and "--overwrite" in one_line_error(err)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    code, _, err = run(capsys, "export", "--model", tiny_run, "--out", tmp_path / "notes", "--overwrite")
    assert code == 2 and "not an imcap export folder" in one_line_error(err)
    assert run(capsys, "export", "--model", exported, "--out", out, "--overwrite")[0] == 0  # re-export of an export
    (out / "eval-test").mkdir()  # what `imcap eval --model EXPORT` writes beside the export
    (out / "eval-test" / "metrics.json").write_text("{}")
    code, _, err = run(capsys, "export", "--model", tiny_run, "--out", out, "--overwrite")
    assert code == 2 and "eval-test/" in one_line_error(err) and (out / "eval-test" / "metrics.json").exists()
    shutil.rmtree(out / "eval-test")
    assert run(capsys, "export", "--model", tiny_run, "--out", out, "--overwrite")[0] == 0
    before = (out / "config.json").read_bytes()

    def fail(*args):
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(folder, "write_weights", fail)
    for target, overwrite in ((tmp_path / "new", False), (out, True)):
        with pytest.raises(OSError, match="simulated"):
            export_model(ExportOptions(model=str(tiny_run), out=str(target), overwrite=overwrite))
    assert not (tmp_path / "new").exists() and (out / "config.json").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_onnx_without_the_scale_extra_is_a_one_line_error(capsys, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    code, _, err = run(capsys, "export", "--model", tiny_run, "--out", tmp_path / "m", "--onnx")
    assert code == 2 and "scale extra" in one_line_error(err) and "onnxruntime" in err
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def sat_run(tiny_data: Path, tmp_path_factory) -> Path:
    """A show_attend_tell run trained for 6 iterations on the tiny data."""
    from imcap.train import train

    return train(tiny_train_options(tiny_data, tmp_path_factory.mktemp("runs") / "sat", model="show_attend_tell"))


@pytest.mark.parametrize("which", ["show_tell", "show_attend_tell"])
def test_onnxruntime_greedy_equals_pytorch_greedy(which, request, tmp_path, test_images):
    pytest.importorskip("onnxruntime", reason="the scale extra is not installed")
    from imcap.export.onnx_captioner import OnnxCaptioner

    run_dir = request.getfixturevalue("tiny_run" if which == "show_tell" else "sat_run")
    out = export_model(ExportOptions(model=str(run_dir), out=str(tmp_path / "m"), onnx=True))
    assert {"encoder.onnx", "decoder_step.onnx"} <= {p.name for p in out.iterdir()}
    torch_model, onnx_model = Captioner.load(run_dir, "cpu"), OnnxCaptioner.load(out)
    images = batch_of(torch_model, test_images)
    want = [caps[0] for caps in torch_model.caption_tensors(images, DecodeOptions(max_length=16))]
    got = onnx_model.caption_arrays(images.numpy(), max_length=16)
    assert [c for c, _ in got] == [c for c, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)  # summed log-probabilities: images differ by more
    assert onnx_model.caption(test_images[0]) == want[0][0]  # a batch of one: the batch axis is dynamic


def test_onnx_refuses_decoders_it_cannot_export(tiny_data, tmp_path):
    pytest.importorskip("onnxruntime", reason="the scale extra is not installed")
    from imcap.errors import ImcapError
    from imcap.export.onnx_graphs import ONNX_DECODERS, export_onnx
    from imcap.models.caption_model import DECODERS, ModelArgs, build_model

    unsupported = [name for name in DECODERS if name not in ONNX_DECODERS]
    if not unsupported:
        pytest.skip("every decoder exports to ONNX")
    vocab = PreproData.load(tiny_data).vocab
    model = build_model(ModelArgs(model=unsupported[0], cnn_width=4, input_encoding_size=16, rnn_size=16, vocab_size=vocab.vocab_size))
    with pytest.raises(ImcapError, match="cannot be exported to ONNX"):
        export_onnx(model, tmp_path)


@pytest.mark.parametrize("args", [
    {"model": "updown"},
    {"model": "coatt", "condition_field": "answer", "condition_vocab": ["blue", "red", "two"]},
    {"model": "show_tell", "image_input": "every", "rnn_type": "gru", "num_layers": 2},
], ids=["updown", "coatt", "show_tell-every-gru2"])
def test_onnx_greedy_equals_pytorch_for_other_state_layouts(args, tiny_data, tmp_path, test_images):
    pytest.importorskip("onnxruntime", reason="the scale extra is not installed")
    from imcap.export.onnx_captioner import OnnxCaptioner
    from imcap.export.onnx_graphs import export_onnx
    from imcap.models.caption_model import ModelArgs, build_model

    torch.manual_seed(0)
    vocab = PreproData.load(tiny_data).vocab
    model = build_model(ModelArgs(cnn_width=4, input_encoding_size=16, rnn_size=16, vocab_size=vocab.vocab_size, **args))  # random weights
    out = folder.write_export(tmp_path / "m", model, vocab, {}, "random init", extra=export_onnx)
    torch_model, onnx_model = Captioner(model, vocab, "cpu"), OnnxCaptioner.load(out)
    condition = "red two" if model.conditioned else None
    images = batch_of(torch_model, test_images)
    want = [caps[0] for caps in torch_model.caption_tensors(images, DecodeOptions(max_length=16), condition=condition)]
    got = onnx_model.caption_arrays(images.numpy(), max_length=16, condition=condition)
    assert [c for c, _ in got] == [c for c, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)
