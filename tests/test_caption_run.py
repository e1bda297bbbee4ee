"""Dataset-scale captioning (`imcap caption --out`): same captions as one image at a time, exactly once after
a SIGKILL and a rerun, the same results from two processes, and Parquet output."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imcap.caption_run import caption_to_file
from imcap.captioner import Captioner
from imcap.decoding import DecodeOptions


@pytest.fixture(scope="module")
def images(tiny_data, tmp_path_factory) -> Path:
    """A folder of 120 small scenes (the tiny data set's 60, twice) and one unreadable file."""
    folder = tmp_path_factory.mktemp("caption_run") / "images"
    source = tiny_data.parent / "synth" / "images"
    for copy in ("a", "b"):
        shutil.copytree(source, folder / copy)
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


@pytest.fixture(scope="module")
def reference(tiny_run, images, tmp_path_factory) -> list[dict]:
    """The records of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "captions.jsonl"
    result = caption_to_file(str(tiny_run), [str(images)], out, DecodeOptions(n=2, beam_size=2), batch_size=8, num_workers=0, device="cpu", progress=False)
    assert (result.captioned, result.already, result.skipped) == (120, 0, 1)
    return read_jsonl(out)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same(records: list[dict], reference: list[dict]) -> None:
    """Same images in the same order with the same captions; scores equal up to float32 rounding (batches
    of other sizes sum in another order)."""
    assert [(r["path"], r["captions"]) for r in records] == [(r["path"], r["captions"]) for r in reference]
    for r, ref in zip(records, reference):
        assert r["scores"] == pytest.approx(ref["scores"], rel=1e-5)


def test_captions_equal_the_one_image_at_a_time_path(tiny_run, reference):
    captioner = Captioner.load(tiny_run, "cpu")
    assert [r["path"] for r in reference] == sorted(r["path"] for r in reference)
    for r in reference[::7]:
        assert captioner.caption(r["path"], beam_size=2) == r["captions"][0]
        assert len(r["captions"]) == len(r["scores"]) == 2


def test_a_rerun_of_a_finished_output_does_nothing(tiny_run, images, reference, tmp_path):
    out = tmp_path / "captions.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in reference))
    result = caption_to_file(str(tiny_run), [str(images)], out, DecodeOptions(n=2, beam_size=2), num_workers=0, device="cpu", progress=False)
    assert (result.captioned, result.already) == (0, 120)
    assert read_jsonl(out) == reference


@pytest.mark.slow
def test_sigkill_midway_then_rerun_captions_every_image_once(tiny_run, images, reference, tmp_path):
    out = tmp_path / "captions.jsonl"
    cmd = [sys.executable, "-m", "imcap", "caption", "--model", str(tiny_run), str(images), "--out", str(out), "--beam-size", "2",
           "-n", "2", "--batch-size", "1", "--num-workers", "0", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (not out.exists() or out.read_bytes().count(b"\n") < 3) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    lines = out.read_bytes().count(b"\n")
    assert 3 <= lines < 120, "the run must be killed midway"
    with open(out, "a") as fp:
        fp.write('{"path": "' + str(images / "a" / "torn"))  # a write torn by the kill
    result = caption_to_file(str(tiny_run), [str(images)], out, DecodeOptions(n=2, beam_size=2), batch_size=8, num_workers=0, device="cpu", progress=False)
    assert result.already == lines and result.captioned == 120 - lines
    records = read_jsonl(out)
    assert len({r["path"] for r in records}) == len(records) == 120
    assert_same(records, reference)


@pytest.mark.slow
def test_two_processes_give_the_same_results(tiny_run, images, reference, tmp_path):
    out = tmp_path / "captions.jsonl"
    result = caption_to_file(str(tiny_run), [str(images)], out, DecodeOptions(n=2, beam_size=2), batch_size=8, num_workers=0, nproc=2, device="cpu", progress=False)
    assert (result.captioned, result.skipped) == (120, 1)
    assert_same(read_jsonl(out), reference)
    assert not list(tmp_path.glob("captions.jsonl.part-*"))


@pytest.mark.slow
def test_torchrun_ranks_write_parts_and_rank_0_merges(tiny_run, images, reference, tmp_path):
    out = tmp_path / "captions.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "imcap", "caption",
           "--model", str(tiny_run), str(images), "--out", str(out), "--beam-size", "2", "-n", "2", "--batch-size", "8",
           "--num-workers", "0", "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("captioned 120 image(s)") == 1  # rank 0 reports for both
    assert_same(read_jsonl(out), reference)
    assert not list(tmp_path.glob("captions.jsonl.part-*"))


def test_parquet_output_and_leftover_parts_are_merged(tiny_run, images, reference, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "captions.parquet"
    # parts of an interrupted 3-process run: rank 1 finished 5 images, the last line torn
    (tmp_path / "captions.parquet.part-1-of-3").write_text("".join(json.dumps(r) + "\n" for r in reference[1:16:3]) + '{"pa')
    result = caption_to_file(str(tiny_run), [str(images)], out, DecodeOptions(n=2, beam_size=2), batch_size=8, num_workers=0, device="cpu", progress=False)
    assert (result.captioned, result.already) == (115, 5)
    assert_same(pq.read_table(out).to_pylist(), reference)
    assert not list(tmp_path.glob("*.part-*"))


def test_cli_refuses_flags_that_do_not_fit_out(tiny_run, images, tmp_path, capsys):
    from imcap.cli import main

    for extra, message in ((["--nproc", "2"], "--nproc needs --out"), (["--out", str(tmp_path / "c.jsonl"), "--json"], "--json cannot")):
        with pytest.raises(SystemExit) as exc:
            main(["caption", "--model", str(tiny_run), str(images), *extra])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_prepro_folder_with_an_image_store_is_captioned_from_the_store(tiny_run, tmp_path):
    from imcap.data.images import image_to_tensor
    from imcap.data.loader import PreproData
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes

    generate_scenes(tmp_path / "synth", num_images=10, seed=4, progress=False)
    prepro(PreproOptions(input=str(tmp_path / "synth"), output_dir=str(tmp_path / "data"), word_count_threshold=0, image_store=40))
    out = tmp_path / "captions.jsonl"
    result = caption_to_file(str(tiny_run), [str(tmp_path / "data")], out, DecodeOptions(), num_workers=0, device="cpu", progress=False)
    assert result.captioned == 10
    data = PreproData.load(tmp_path / "data")
    captioner = Captioner.load(tiny_run, "cpu")
    by_path = {r["path"]: r["captions"][0] for r in read_jsonl(out)}
    for im in data.images:
        image = image_to_tensor(data.store.load(im["file_path"], min_side=captioner.image_size), captioner.image_size)
        assert by_path[str(data.image_root / im["file_path"])] == captioner.caption(image)
