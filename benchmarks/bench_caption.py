"""Dataset-scale captioning (`imcap caption --out`) against calling `Captioner.caption` once per image.

Writes N synthetic COCO-like images (640x480 JPEG, as benchmarks/bench_store.py), trains a small model
for a few iterations on synthetic scenes, then captions the N images, in the same process:
  per image:   `captioner.caption(path)` in a loop (decode the file, run the model on a batch of one);
  dataset run: `caption_to_file(..., out=captions.jsonl)`: batches of --batch images decoded by
               DataLoader workers (automatic), results appended per batch (resumable);
  and, with --nproc N > 1, the dataset run split over N local processes (spawned; their start counts).
Greedy decoding; every caption of the dataset run is checked against the per-image one.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_caption.py [--images 5000] [--batch 32] [--nproc 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import make_images  # noqa: E402 - the same COCO-like images


def main() -> None:
    from imcap.caption_run import caption_to_file
    from imcap.captioner import Captioner
    from imcap.config import TrainOptions
    from imcap.data.images import find_images
    from imcap.data.loader import AUTO_WORKERS
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes
    from imcap.decoding import DecodeOptions
    from imcap.train import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="COCO-like images to caption (default: 5000)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch of the dataset run (default: 32, caption's default)")
    parser.add_argument("--nproc", type=int, default=2, help="also time the dataset run with this many processes (1: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_caption_"))
    try:
        source = make_images(tmp, args.images)
        generate_scenes(tmp / "scenes", num_images=300, seed=2, progress=False)
        prepro(PreproOptions(input=str(tmp / "scenes"), output_dir=str(tmp / "data"), word_count_threshold=0))
        run = train(TrainOptions(data=str(tmp / "data"), checkpoint_path=str(tmp / "run"), cnn="small", cnn_width=16, input_encoding_size=128,
                                 rnn_size=128, batch_size=16, max_iters=30, save_checkpoint_every=30, val_images_use=16, progress=False, device="cpu"))
        captioner = Captioner.load(run, "cpu")
        files = [str(p) for p in find_images([str(source / "images")])]
        decode = DecodeOptions()
        print(f"{len(files)} images; model: small CNN width 16 at {captioner.image_size}px + LSTM 128, greedy; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")

        t0 = time.perf_counter()
        one_by_one = {f: captioner.caption(f) for f in files}
        loop = len(files) / (time.perf_counter() - t0)
        print(f"per image (Captioner.caption in a loop): {loop:.0f} images/s")

        runs = [(1, tmp / "captions.jsonl")] + ([(args.nproc, tmp / "captions-nproc.jsonl")] if args.nproc > 1 else [])
        for nproc, out in runs:
            t0 = time.perf_counter()
            model = captioner if nproc == 1 else str(run)
            caption_to_file(model, [str(source / "images")], out, decode, batch_size=args.batch, num_workers=AUTO_WORKERS, nproc=nproc, device="cpu", progress=False)
            rate = len(files) / (time.perf_counter() - t0)
            records = [json.loads(line) for line in out.read_text().splitlines()]
            differ = sum(r["captions"][0] != one_by_one[r["path"]] for r in records)
            print(f"dataset run, --nproc {nproc}, batch {args.batch}, automatic workers: {rate:.0f} images/s = {rate / loop:.1f}x the loop; "
                  f"{len(records)} records, {differ} caption(s) differ from the loop's")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
