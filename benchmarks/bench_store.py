"""Training throughput from the prepared image store (`imcap prepro --image-store`) against raw JPEG files.

Writes N synthetic COCO-like images (640x480 JPEG, quality 90, textured so that they are about COCO's file
size), prepro's them twice (without and with `--image-store`), then trains the same model with the same
batches in the same process, alternating rounds:
  raw files:    today's default, `--num-workers 0` (the training process decodes every full-size JPEG);
  image store:  the store with automatic DataLoader settings (`--num-workers -1`);
  model only:   the same training step on one batch held in memory: the ceiling any loader can reach.
Also: the store's build speed and size, and the load time per image (one process, no model) of both.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_store.py [--images 5000] [--rounds 5] [--steps 30]

The model is tiny on purpose (the tests' 4-channel CNN at 64 px and a 16-unit LSTM): on this CPU its step
costs about what a GPU step of a real model costs per image, so that loading, not arithmetic, limits the
rate, as it does when training on a GPU. A model whose CPU step dominates gains only what loading cost
(try `--cnn-width 32 --rnn-size 512`, train's defaults: the model-only ceiling is then below raw loading).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from PIL import Image


def coco_like(job: tuple[Path, Path, int]) -> int:
    """Scale a synthetic scene to 640x480 and add photo-like grain; write it as JPEG; return its size."""
    src, dst, seed = job
    rng = np.random.default_rng(seed)
    img = Image.open(src).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC)
    pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 12, (480, 640, 3)).astype(np.int16)  # (480, 640, 3)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(dst, "JPEG", quality=90)
    return dst.stat().st_size


def make_images(tmp: Path, n: int) -> Path:
    """N COCO-like JPEGs and their captions in the synth layout; return the caption file's folder."""
    from imcap.data.synth import generate_scenes

    generate_scenes(tmp / "synth", num_images=n, seed=1, progress=False)
    meta = json.loads((tmp / "synth" / "captions.json").read_text())
    (tmp / "coco" / "images").mkdir(parents=True)
    jobs = []
    for im in meta["images"]:
        name = Path(im["filename"]).with_suffix(".jpg").name
        jobs.append((tmp / "synth" / im["filepath"] / im["filename"], tmp / "coco" / "images" / name, im["imgid"]))
        im["filename"] = name
    with Pool(os.cpu_count()) as pool:
        sizes = pool.map(coco_like, jobs, chunksize=32)
    (tmp / "coco" / "captions.json").write_text(json.dumps(meta))
    shutil.rmtree(tmp / "synth")
    print(f"{n} images 640x480, mean {np.mean(sizes) / 1e3:.0f} kB (COCO: about 160 kB)")
    return tmp / "coco"


def load_ms(data, indices: list[int], size: int) -> float:
    """Milliseconds per image to read one image as the model's input tensor, in this process."""
    t0 = time.perf_counter()
    for i in indices:
        data.image_tensor(i, size)
    return 1e3 * (time.perf_counter() - t0) / len(indices)


def main() -> None:
    from imcap.config import TrainOptions
    from imcap.data.loader import (
        AUTO_WORKERS,
        CaptionDataset,
        ResumableSampler,
        loader_settings,
        make_loader,
    )
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.train import Trainer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="COCO-like images to generate (default: 5000)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per round and kind (default: 30)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported (default: 5)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch (default: 16, train's default)")
    parser.add_argument("--store-size", type=int, default=256, help="--image-store SIZE (default: 256)")
    parser.add_argument("--cnn-width", type=int, default=4, help="channels of the small CNN's first layer (default: 4)")
    parser.add_argument("--rnn-size", type=int, default=16, help="RNN and encoding size (default: 16)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        source = make_images(tmp, args.images)
        prepro(PreproOptions(input=str(source), output_dir=str(tmp / "raw"), word_count_threshold=0))
        t0 = time.perf_counter()
        prepro(PreproOptions(input=str(source), output_dir=str(tmp / "store"), word_count_threshold=0, image_store=args.store_size))
        built = time.perf_counter() - t0
        store_mb = sum(f.stat().st_size for f in (tmp / "store" / "image_store").iterdir()) / 1e6
        raw_mb = sum(f.stat().st_size for f in (source / "images").iterdir()) / 1e6
        print(f"store: built in {built:.1f} s ({args.images / built:.0f} images/s with {os.cpu_count()} processes, prepro included); "
              f"{store_mb:.0f} MB on disk against {raw_mb:.0f} MB of raw JPEGs")

        common = {"cnn": "small", "cnn_width": args.cnn_width, "input_encoding_size": args.rnn_size, "rnn_size": args.rnn_size,
                  "batch_size": args.batch, "progress": False, "device": "cpu", "seed": 0}
        trainers = {name: Trainer(TrainOptions(data=str(tmp / name), checkpoint_path=str(tmp / f"run-{name}"), **common)) for name in ("raw", "store")}
        workers = {"raw": 0, "store": AUTO_WORKERS}
        size = trainers["raw"].model.encoder.input_size
        sample = trainers["raw"].train_indices[:300]
        raw_ms = load_ms(trainers["raw"].data, sample, size)
        store_ms = load_ms(trainers["store"].data, sample, size)
        print(f"load time per image ({size}px input, one process): raw {raw_ms:.2f} ms, store {store_ms:.2f} ms "
              f"({raw_ms / store_ms:.1f}x)")
        auto = loader_settings(AUTO_WORKERS, len(trainers["store"].train_indices))
        print(f"model: small CNN width {args.cnn_width} at {size}px + LSTM {args.rnn_size}, batch {args.batch}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
              f"automatic loader: {auto.num_workers} workers, prefetch {auto.prefetch_factor}, pinned {auto.pin_memory}")

        def rate(name: str, epoch: int) -> float:
            t = trainers[name if name != "model only" else "raw"]
            ds = CaptionDataset(t.data, t.train_indices, size, t.opts.seq_per_img, 0)
            loader = iter(make_loader(ds, args.batch, ResumableSampler(len(ds), 0, epoch), workers.get(name, 0)))
            batch = next(loader)
            t.train_step(*batch)  # the first batch pays for starting workers; not timed
            start = time.perf_counter()
            for _ in range(args.steps):
                t.train_step(*(batch if name == "model only" else next(loader)))
            return args.steps * args.batch / (time.perf_counter() - start)

        args.steps = min(args.steps, len(trainers["raw"].train_indices) // args.batch - 1)
        rates: dict[str, list[float]] = {"raw": [], "store": [], "model only": []}
        for r in range(args.rounds):
            for name, seen in rates.items():
                seen.append(rate(name, r))
            print(f"round {r + 1}: raw {rates['raw'][-1]:.0f} images/s, store {rates['store'][-1]:.0f} images/s "
                  f"({rates['store'][-1] / rates['raw'][-1]:.2f}x), model only {rates['model only'][-1]:.0f} images/s")
        raw, store, ceiling = (statistics.median(rates[k]) for k in ("raw", "store", "model only"))
        ratios = sorted(s / r for s, r in zip(rates["store"], rates["raw"]))
        print(f"training images/s (medians of {args.rounds} rounds): raw files (num_workers 0) {raw:.0f}, image store (auto workers) {store:.0f}: "
              f"{store / raw:.2f}x (per-round ratios {ratios[0]:.2f}x-{ratios[-1]:.2f}x); model alone {ceiling:.0f} "
              f"(the store reaches {100 * store / ceiling:.0f}% of it, raw files {100 * raw / ceiling:.0f}%)")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
