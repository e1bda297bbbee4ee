"""The SCST bar in one command: cross-entropy, then self-critical training, in ONE run; test CIDEr of both.

Builds the demo's synthetic data (or reuses --data), trains the demo model (ShowTell, small CNN,
image_input=every) with cross-entropy for --xe-iters iterations, then self-critical training (CIDEr-D
reward) up to --xe-iters + --sc-iters, and evaluates on the test split (greedy decoding):
    RUN/xe.pt    the cross-entropy model at the switch (kept by the trainer)
    RUN/last.pt  the model after self-critical training

    OMP_WAIT_POLICY=PASSIVE python benchmarks/scst_quality.py --out runs/scst-bar
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    from imcap.config import EvalOptions, TrainOptions
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes
    from imcap.evaluate import run_eval
    from imcap.train import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/scst-bar")
    parser.add_argument("--data", default="", help="an existing prepro directory (default: synthesise 3000 demo scenes in OUT)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--xe-iters", type=int, default=1500)
    parser.add_argument("--sc-iters", type=int, default=500)
    parser.add_argument("--baseline", default="greedy", choices=("greedy", "mean"))
    parser.add_argument("--sample-n", type=int, default=5)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    out = Path(args.out)
    t0 = time.time()
    data = Path(args.data) if args.data else out / "data"
    if not (data / "images.json").exists():
        generate_scenes(out / "synth", num_images=args.images, seed=args.seed)
        prepro(PreproOptions(input=str(out / "synth"), output_dir=str(data)))
    run = out / "run"
    total = args.xe_iters + args.sc_iters
    # The demo's recipe (imcap.demo) for the cross-entropy part. The learning rate decays from mid-XE on
    # (halving every xe_iters/4) and, during SCST, neuraltalk2's schedule keeps halving it.
    opts = TrainOptions(
        data=str(data), checkpoint_path=str(run), resume=(run / "last.pt").exists(), cnn="small", image_input="every",
        input_encoding_size=256, rnn_size=256, drop_prob_lm=0.2, learning_rate=1e-3, max_iters=total,
        save_checkpoint_every=500, val_images_use=300, language_eval=True, seed=args.seed, progress=args.progress,
        learning_rate_decay_start=args.xe_iters // 2, learning_rate_decay_every=args.xe_iters // 4,
        self_critical_after=args.xe_iters, sc_baseline=args.baseline, sc_sample_n=args.sample_n,
    )
    train(opts)
    train_seconds = time.time() - t0
    results = {}
    for name in ("xe.pt", "last.pt"):
        m = run_eval(EvalOptions(model=str(run / name), split="test", out=str(out / f"eval-{name[:-3]}"), progress=False))
        results[name] = {k: m.get(k) for k in ("CIDEr", "Bleu_4", "ROUGE_L", "METEOR", "CIDEr_blind")}
    history = json.loads((run / "history.json").read_text())
    sc_log = [e for e in history["train_loss"] if "reward" in e]
    print(f"data {data}, {args.xe_iters} cross-entropy + {args.sc_iters} self-critical iterations ({args.baseline} baseline, K={args.sample_n}), {train_seconds:.0f} s")
    if sc_log:
        print(f"SCST train reward (CIDEr-D of samples): first {sc_log[0]['reward']:.3f} -> last {sc_log[-1]['reward']:.3f}")
    for name, m in results.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
        print(f"test {name:8s} {shown}")
    gain = results["last.pt"]["CIDEr"] - results["xe.pt"]["CIDEr"]
    print(f"test CIDEr: cross-entropy {results['xe.pt']['CIDEr']:.3f} -> self-critical {results['last.pt']['CIDEr']:.3f} ({gain:+.3f})")


if __name__ == "__main__":
    main()
