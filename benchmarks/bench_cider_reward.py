"""CIDEr-D rewards for self-critical training: imcap's CiderDReward now vs the one at a baseline revision.

SCST scores every batch: 50 images x 5 sampled captions, given as rows of model word ids, against the
references of the training images (document frequencies over those images, built once). The baseline
is imcap.metrics as it was at git revision --baseline (loaded from git into a temporary package); both
run in this process, in alternating rounds, on the same batches, and must give the same rewards.

    .venv/bin/python benchmarks/bench_cider_reward.py [--baseline acc2f32] [--rounds 7] [--calls 20]
"""
from __future__ import annotations

import argparse
import importlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = ROOT / ".." / "shared" / "data" / "flickr8k"
BASELINE_PACKAGE = "imcap_metrics_baseline"


def load_flickr8k() -> dict[str, list[str]]:
    """{image: [5 captions]} from Flickr8k.token.txt (one stray id ends in '.1')."""
    refs: dict[str, list[str]] = {}
    for line in (FLICKR8K / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, caption = line.split("\t", 1)
            refs.setdefault(key.split("#")[0].removesuffix(".1"), []).append(caption)
    return refs


def load_baseline(rev: str, into: Path):
    """imcap.metrics at git revision `rev`, importable as its own package (its imports renamed)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout

    package = into / BASELINE_PACKAGE
    package.mkdir()
    for path in git("ls-tree", "--name-only", f"{rev}:src/imcap/metrics/").split():
        if path.endswith(".py"):
            text = git("show", f"{rev}:src/imcap/metrics/{path}")
            (package / path).write_text(text.replace("imcap.metrics", BASELINE_PACKAGE), encoding="utf-8")
    sys.path.insert(0, str(into))
    return importlib.import_module(BASELINE_PACKAGE)


def batches(data: dict[str, list[str]], vocab: list[str], n: int, images: int, samples: int, seed: int):
    """`n` SCST-like batches: (image ids, (images * samples, 16) word-id rows, <END> then <NULL> padding)."""
    from imcap.metrics import PTBTokenizer

    index = {w: i for i, w in enumerate(vocab)}
    rng = random.Random(seed)
    keys = list(data)
    out = []
    for _ in range(n):
        image_ids = [k for k in rng.sample(keys, images) for _ in range(samples)]
        captions = PTBTokenizer().tokenize_captions([data[rng.choice(keys)][rng.randrange(5)] for _ in image_ids])
        rows = np.zeros((len(image_ids), 16), np.int64)
        for r, caption in enumerate(captions):
            words = [index.get(w, 3) for w in caption.split()][:15]
            rows[r, :len(words)] = words
            rows[r, len(words)] = 2
        out.append((image_ids, rows))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="acc2f32", help="git revision of the implementation to compare with")
    parser.add_argument("--images", type=int, default=50, help="images per batch")
    parser.add_argument("--samples", type=int, default=5, help="sampled captions per image")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per implementation")
    parser.add_argument("--calls", type=int, default=20, help="batches scored per round")
    args = parser.parse_args()
    if not (FLICKR8K / "Flickr8k.token.txt").is_file():
        sys.exit(f"Flickr8k captions not found under {FLICKR8K}")

    import imcap.metrics as current
    from imcap.metrics import PTBTokenizer

    data = load_flickr8k()
    counts = Counter(w for c in PTBTokenizer().tokenize_captions([c for cs in data.values() for c in cs])
                     for w in c.split())
    vocab = ["<NULL>", "<START>", "<END>", "<UNK>"] + sorted(w for w, c in counts.items() if c >= 5)
    work = batches(data, vocab, args.calls, args.images, args.samples, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline, Path(tmp))
        impls = {f"baseline ({args.baseline})": baseline, "current": current}
        rewards, built = {}, {}
        for label, module in impls.items():
            start = time.perf_counter()
            rewards[label] = module.CiderDReward(data, vocab=vocab)  # raw captions, PTB-tokenized once
            built[label] = time.perf_counter() - start
        old, new = rewards.values()
        for image_ids, rows in work:
            np.testing.assert_allclose(new.score(image_ids, rows), old.score(image_ids, rows), rtol=0, atol=1e-9)
        per_call: dict[str, list[float]] = {label: [] for label in impls}
        for rnd in range(args.rounds):
            labels = list(impls) if rnd % 2 == 0 else list(impls)[::-1]
            for label in labels:
                reward = rewards[label]
                for image_ids, rows in work:
                    start = time.perf_counter()
                    reward.score(image_ids, rows)
                    per_call[label].append(time.perf_counter() - start)
    n_refs = sum(len(c) for c in data.values())
    print(f"CiderDReward over {len(data)} Flickr8k images ({n_refs} references); batches of {args.images} images x "
          f"{args.samples} samples as word-id rows; {args.rounds} alternating rounds x {args.calls} batches; "
          f"same rewards from both (<= 1e-9)")
    print(f"\n{'':<22} {'build (s)':>9} {'per batch, median':>18} {'min':>9}")
    for label in impls:
        times = per_call[label]
        print(f"{label:<22} {built[label]:>9.2f} {1000 * statistics.median(times):>15.2f} ms "
              f"{1000 * min(times):>6.2f} ms")
    (b_label, b_times), (c_label, c_times) = per_call.items()
    print(f"\nspeed-up per batch: median {statistics.median(b_times) / statistics.median(c_times):.1f}x, "
          f"min {min(b_times) / min(c_times):.1f}x")


if __name__ == "__main__":
    main()
