"""Training throughput with cached CNN features (`imcap features` + --features-dir) vs running the
frozen CNN on every step, measured interleaved in one process (data loading included).

The CNN is "pretrained" (weights from a file, so it stays frozen as with ImageNet weights); both
trainers have the same decoder. Also reports the one-off extraction time and when it pays off.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_features.py [--cnn resnet50] [--images 200] [--steps 5]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def forever(loader):
    """Batches of `loader`, epoch after epoch."""
    while True:
        yield from loader


def main() -> None:
    from imcap.config import TrainOptions
    from imcap.data.loader import CaptionDataset, ResumableSampler, make_loader
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes
    from imcap.config import FeatureOptions
    from imcap.features import extract_features
    from imcap.models.encoders import build_encoder
    from imcap.train import Trainer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cnn", default="resnet50", choices=("small", "vgg16", "resnet50", "resnet101"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="encoding and RNN size")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind (after one warm-up)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_features_"))
    generate_scenes(tmp / "synth", num_images=args.images, seed=1, progress=False)
    prepro(PreproOptions(input=str(tmp / "synth"), output_dir=str(tmp / "data")))
    weights = tmp / f"{args.cnn}.pt"  # random weights from a file count as pretrained: the CNN stays frozen
    backbone = build_encoder(args.cnn, 8, None).backbone
    state = backbone.state_dict() if args.cnn == "small" else getattr(__import__("torchvision").models, args.cnn)().state_dict()
    torch.save(state, weights)

    t0 = time.perf_counter()
    feats = extract_features(FeatureOptions(data=str(tmp / "data"), out=str(tmp / "feats"), cnn=args.cnn, cnn_weights=str(weights), kinds="pooled",
                                            batch_size=args.batch, device=args.device, progress=False))
    extract_s = time.perf_counter() - t0
    common = dict(data=str(tmp / "data"), cnn=args.cnn, cnn_weights=str(weights), input_encoding_size=args.size, rnn_size=args.size,
                  batch_size=args.batch, progress=False, device=args.device)
    trainers = {
        "CNN every step": Trainer(TrainOptions(checkpoint_path=str(tmp / "run-images"), **common)),
        "cached features": Trainer(TrainOptions(checkpoint_path=str(tmp / "run-feats"), features_dir=str(feats), **common)),
    }
    batches = {}
    for name, t in trainers.items():
        assert not t.cnn_trains()
        ds = CaptionDataset(t.data, t.train_indices, t.model.encoder.input_size, t.opts.seq_per_img, 0, t.features, t.model.feature_kind)
        batches[name] = forever(make_loader(ds, args.batch, ResumableSampler(len(ds), 0), t.opts.num_workers))
    device = next(iter(trainers.values())).device
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; {args.cnn} (frozen) at "
          f"{trainers['CNN every step'].model.encoder.input_size}px, ShowTell {args.size}, batch {args.batch}")

    def one_step(name: str) -> float:
        t0 = time.perf_counter()
        images, labels, idx = next(batches[name])  # loading counts: decoding images vs reading the memory map
        trainers[name].train_step(images, labels, idx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name in trainers}
    for r in range(args.steps + 1):
        for name in trainers:  # interleaved: both see the same machine load
            dt = one_step(name)
            if r > 0:
                times[name].append(dt)
    med = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
    for name, s in med.items():
        print(f"{name:16s} {s * 1e3:8.1f} ms/step  {args.batch / s:8.1f} images/s")
    slow, fast = med["CNN every step"], med["cached features"]
    n_train = len(trainers["CNN every step"].train_indices)
    epoch_saving = (slow - fast) * n_train / args.batch
    print(f"cached features: {slow / fast:.1f}x the training throughput")
    print(f"extraction of {args.images} images: {extract_s:.1f} s once; an epoch of {n_train} training images saves {epoch_saving:.1f} s "
          f"-> pays off after {extract_s / max(epoch_saving, 1e-9):.2f} epochs")


if __name__ == "__main__":
    main()
