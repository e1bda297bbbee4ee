"""The command line end to end on tiny data: outputs, and one-line errors for bad input."""
import json
import shutil

import pytest
from PIL import Image

from imcap.cli import main


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("imcap: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def images(tmp_path, tiny_data):
    folder = tmp_path / "imgs"
    folder.mkdir()
    meta = json.loads((tiny_data / "images.json").read_text())
    for im in meta["images"][:3]:
        shutil.copy(f"{meta['image_root']}/{im['file_path']}", folder / f"{im['id']}.png")
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    Image.new("RGB", (40, 30), "red").save(folder / "broken.jpg")
    (folder / "broken.jpg").write_bytes((folder / "broken.jpg").read_bytes()[:200])
    return folder


def test_caption_folder_skips_bad_images(capsys, tiny_run, images):
    code, out, err = run(capsys, "caption", "--model", tiny_run, images, "--json")
    assert code == 0
    result = json.loads(out)
    assert len(result["results"]) == 3 and len(result["skipped"]) == 3
    assert all(r["caption"].strip() or r["caption"] == "" for r in result["results"])
    assert "skipped 3 bad image(s) of 6" in err


def test_caption_beam_and_glob(capsys, tiny_run, images):
    code, out, _ = run(capsys, "caption", "--model", tiny_run / "best.pt", f"{images}/*.png", "--beam-size", "3", "-n", "2")
    assert code == 0
    assert len(out.strip().splitlines()) == 3


@pytest.mark.parametrize("argv,needle", [
    (["caption", "--model", "{run}", "{tmp}/missing.png"], "missing.png"),
    (["caption", "--model", "{tmp}/nope", "{tmp}"], "nope"),
    (["caption", "--model", "{tmp}/foreign.pt", "{tmp}"], "foreign.pt"),
    (["train", "--data", "{tmp}", "--checkpoint-path", "{tmp}/r", "--max-iters", "1"], "images.json"),
    (["train", "--bogus-option"], "unrecognized arguments"),
    (["eval", "--model", "{tmp}/empty"], "empty"),
])
def test_bad_input_gives_one_line_error(capsys, tmp_path, tiny_run, argv, needle):
    (tmp_path / "foreign.pt").write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "empty").mkdir()
    argv = [a.format(run=tiny_run, tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in one_line_error(err)


def test_python_api_accepts_paths_pil_tensors_lists(tiny_run, images):
    import torch

    from imcap import Captioner

    cap = Captioner.load(tiny_run, device="cpu")
    png = sorted(images.glob("*.png"))[0]
    pil = Image.open(png)
    tensor = torch.rand(3, 80, 50)
    one = cap.caption(png)
    assert isinstance(one, str)
    assert cap.caption(pil) == one
    many = cap.caption([png, pil, tensor], beam_size=2)
    assert isinstance(many, list) and len(many) == 3
    assert cap.model_card()["vocab_size"] == len(cap.vocab)
