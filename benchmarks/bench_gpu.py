"""GPU throughput of imcap's training steps: images/s of cross-entropy (XE) and self-critical (SCST)
steps, with and without --amp and --compile, and the peak GPU memory of each; ratios are against
fp32 eager of the same step, all measured in this one run. Batches are preloaded on the GPU, so the
numbers are the model's (data loading excluded). Prints "no GPU" and exits 0 when CUDA is missing
(--device cpu runs the same measurements on the CPU, without memory figures; add --interleave on a
shared machine, so that every variant sees the same load).

    python benchmarks/bench_gpu.py [--cnn resnet50] [--batch 32] [--steps 20] [--finetune]
    python benchmarks/bench_gpu.py --device cpu --cnn small --size 256 --batch 16 --interleave
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda, else print 'no GPU'), cuda, cuda:N or cpu")
    parser.add_argument("--cnn", default="resnet50", choices=("small", "vgg16", "resnet50", "resnet101"))
    parser.add_argument("--finetune", action="store_true", help="train the CNN too (default: frozen, as neuraltalk2 before --finetune-cnn-after)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=512, help="encoding and RNN size")
    parser.add_argument("--k", type=int, default=5, help="SCST samples per image")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--modes", default="xe,scst")
    parser.add_argument("--variants", default="fp32,amp,compile,amp+compile")
    parser.add_argument("--interleave", action="store_true", help="alternate the variants step by step (shared machines); no memory figures")
    args = parser.parse_args()
    if args.device == "auto" and not torch.cuda.is_available():
        print("no GPU")
        return 0
    device = torch.device("cuda" if args.device == "auto" else args.device)

    from imcap.config import TrainOptions
    from imcap.data.loader import CaptionDataset, ResumableSampler, make_loader
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes
    from imcap.models.encoders import build_encoder
    from imcap.train import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    generate_scenes(tmp / "synth", num_images=args.images, seed=1, progress=False)
    prepro(PreproOptions(input=str(tmp / "synth"), output_dir=str(tmp / "data")))
    weights = tmp / f"{args.cnn}.pt"  # weights from a file count as pretrained, so the CNN is frozen unless --finetune
    state = build_encoder(args.cnn, 8, None).backbone.state_dict() if args.cnn == "small" else getattr(__import__("torchvision").models, args.cnn)().state_dict()
    torch.save(state, weights)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__}; {args.cnn} ({'fine-tuned' if args.finetune else 'frozen'}), "
          f"ShowTell {args.size}, batch {args.batch} images (x5 captions for XE, x{args.k} samples for SCST)")

    batches: list = []

    def make_trainer(mode: str, variant: str) -> Trainer:
        opts = TrainOptions(data=str(tmp / "data"), checkpoint_path=str(tmp / f"run-{mode}-{variant}"), cnn=args.cnn, cnn_weights=str(weights),
                            input_encoding_size=args.size, rnn_size=args.size, batch_size=args.batch, device=str(device), amp="amp" in variant,
                            compile="compile" in variant, progress=False, finetune_cnn_after=0 if args.finetune else -1,
                            self_critical_after=0 if mode == "scst" else -1, sc_sample_n=args.k)
        trainer = Trainer(opts)
        if not batches:
            ds = CaptionDataset(trainer.data, trainer.train_indices, trainer.model.encoder.input_size, opts.seq_per_img, 0)
            batches.extend((im.to(device), lab.to(device), idx) for im, lab, idx in make_loader(ds, args.batch, ResumableSampler(len(ds), 0), drop_last=True))
        for i in range(args.warmup):  # --compile compiles here; SCST builds its CIDEr-D tables here
            trainer.train_step(*batches[i % len(batches)])
        return trainer

    def steps(trainer: Trainer, n: int, start: int = 0) -> float:
        """Seconds for `n` steps (the GPU synchronised before and after)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for i in range(start, start + n):
            trainer.train_step(*batches[i % len(batches)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    def label(variant: str, trainer: Trainer) -> str:
        return variant if "compile" not in variant or "forward" in vars(trainer.model) else f"{variant} (compile fell back)"

    variants = args.variants.split(",")
    for mode in args.modes.split(","):
        if args.interleave:  # all variants alive, one step each in turn: the same machine load for all
            trainers = {v: make_trainer(mode, v) for v in variants}
            times: dict[str, list[float]] = {v: [] for v in variants}
            for i in range(args.steps):
                for v, t in trainers.items():
                    times[v].append(steps(t, 1, i))
            rates = {v: args.batch / sorted(ts)[len(ts) // 2] for v, ts in times.items()}
            for v in variants:
                print(f"{mode:5s} {label(v, trainers[v]):28s} {rates[v]:9.1f} images/s  {rates[v] / rates[variants[0]]:5.2f}x", flush=True)
            del trainers
            torch._dynamo.reset()
            continue
        base_rate = None
        for variant in variants:
            trainer = make_trainer(mode, variant)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rate = args.steps * args.batch / steps(trainer, args.steps)
            peak = f"peak {torch.cuda.max_memory_allocated(device) / 2**30:6.2f} GiB" if device.type == "cuda" else ""
            base_rate = base_rate or rate
            print(f"{mode:5s} {label(variant, trainer):28s} {rate:9.1f} images/s  {rate / base_rate:5.2f}x  {peak}", flush=True)
            del trainer
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
