"""DistributedDataParallel on CPUs: `imcap train --nproc 2` (2 gloo processes) vs 1 process.

Each process gets one thread (OMP_NUM_THREADS=1) and --batch-size images per step, so 2 processes
train on twice the images per step. Throughput is read from the run's history (rank 0's clock, after
--warmup iterations; process start-up and validation are not counted). Runs alternate 1, 2, 1, 2...
so both see similar machine load; the summary is the median over rounds.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_ddp.py [--iters 40] [--rounds 2] [--scst]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def images_per_second(run: Path, batch: int, world: int, warmup: int) -> float:
    """Training images per second between iteration `warmup` and the last one, from history.json."""
    log = [e for e in json.loads((run / "history.json").read_text())["train_loss"] if e["iteration"] >= warmup]
    first, last = log[0], log[-1]
    return (last["iteration"] - first["iteration"]) * batch * world / (last["time"] - first["time"])


def main() -> None:
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="images per step per process")
    parser.add_argument("--size", type=int, default=256, help="encoding and RNN size (the demo's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scst", action="store_true", help="self-critical steps instead of cross-entropy")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ddp_"))
    generate_scenes(tmp / "synth", num_images=args.images, seed=1, progress=False)
    prepro(PreproOptions(input=str(tmp / "synth"), output_dir=str(tmp / "data")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    base = [sys.executable, "-m", "imcap", "train", "--data", str(tmp / "data"), "--device", "cpu", "--image-input", "every",
            "--input-encoding-size", str(args.size), "--rnn-size", str(args.size), "--batch-size", str(args.batch), "--max-iters", str(args.iters),
            "--save-checkpoint-every", str(args.iters), "--val-images-use", "16", "--losses-log-every", "1", "--no-progress"]
    if args.scst:
        base += ["--self-critical-after", "0"]
    print(f"{os.cpu_count()} CPUs; ShowTell {args.size}, small CNN, {args.batch} images per process per step, "
          f"{'SCST' if args.scst else 'cross-entropy'}, {args.iters} iterations per run")
    results: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.rounds):
        for nproc in (1, 2):
            run = tmp / f"run-{nproc}-{r}"
            subprocess.run([*base, "--checkpoint-path", str(run), "--nproc", str(nproc)], env=env, check=True, capture_output=True)
            results[nproc].append(images_per_second(run, args.batch, nproc, args.warmup))
            print(f"  round {r + 1}: {nproc} process{'es' if nproc > 1 else ''}: {results[nproc][-1]:.1f} images/s")
    ratios = sorted(b / a for a, b in zip(results[1], results[2]))  # each round's pair ran back to back
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    ratio = med(ratios)
    print(f"median: 1 process {med(results[1]):.1f} images/s, 2 processes {med(results[2]):.1f} images/s; "
          f"2 vs 1 per round: median {ratio:.2f}x ({ratio / 2:.0%} scaling efficiency), range {ratios[0]:.2f}x-{ratios[-1]:.2f}x")


if __name__ == "__main__":
    main()
