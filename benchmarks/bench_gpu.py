"""GPU throughput of imcap's training steps: images/s of cross-entropy (XE) and self-critical (SCST)
steps, with and without --amp and --compile, and the peak GPU memory of each; ratios are against
fp32 eager of the same step, all measured in this one run. Batches are preloaded on the GPU, so the
numbers are the model's (data loading excluded). Prints "no GPU" and exits 0 when CUDA is missing
(--device cpu runs the same measurements on the CPU, without memory figures).

    python benchmarks/bench_gpu.py [--cnn resnet50] [--batch 32] [--steps 20] [--finetune]
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

    batches = None
    rows = []
    for mode in args.modes.split(","):
        base_rate = None
        for variant in args.variants.split(","):
            amp, compile_ = "amp" in variant, "compile" in variant
            run = tmp / f"run-{mode}-{variant}"
            opts = TrainOptions(data=str(tmp / "data"), checkpoint_path=str(run), cnn=args.cnn, cnn_weights=str(weights), input_encoding_size=args.size,
                                rnn_size=args.size, batch_size=args.batch, device=str(device), amp=amp, compile=compile_, progress=False,
                                finetune_cnn_after=0 if args.finetune else -1, self_critical_after=0 if mode == "scst" else -1, sc_sample_n=args.k)
            trainer = Trainer(opts)
            if batches is None:
                ds = CaptionDataset(trainer.data, trainer.train_indices, trainer.model.encoder.input_size, opts.seq_per_img, 0)
                batches = [(im.to(device), lab.to(device), idx) for im, lab, idx in make_loader(ds, args.batch, ResumableSampler(len(ds), 0), drop_last=True)]
            if mode == "scst":
                trainer.scst.reward  # noqa: B018 - the cached CIDEr-D tables, built once per run
            for i in range(args.warmup):
                trainer.train_step(*batches[i % len(batches)])
            compiled = "forward" in vars(trainer.model)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for i in range(args.steps):
                trainer.train_step(*batches[i % len(batches)])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rate = args.steps * args.batch / (time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            base_rate = base_rate or rate
            shown = variant if not compile_ or compiled else f"{variant} (compile fell back)"
            rows.append(f"{mode:5s} {shown:28s} {rate:9.1f} images/s  {rate / base_rate:5.2f}x  peak {peak:6.2f} GiB")
            print(rows[-1], flush=True)
            del trainer
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
