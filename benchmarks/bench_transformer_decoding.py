"""The transformer captioner's key/value cache: incremental decoding against re-running the prefix at every step.

Beam search (beam 3) over 50 images, every caption forced to the full 16 words, with the same weights in one
process: `use_cache=True` runs one token per step through the decoder layers (keys and values of the earlier
words kept in the state, reordered with the beams); `use_cache=False` re-runs the whole prefix at every step.
Both must return the same captions; the script checks that and prints the speed-up (issue 16's bar: >= 3x).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_transformer_decoding.py [--device cuda] [--layers 3]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from imcap.data.vocab import END  # noqa: E402
from imcap.decoding import beam_search  # noqa: E402
from imcap.models import TransformerCaptioner  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `fn()` over `repeats` runs after one warm-up, and its last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=9487, help="words (COCO's Karpathy-split vocabulary size)")
    parser.add_argument("--regions", type=int, default=36, help="K features per image")
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ff-size", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = TransformerCaptioner(args.vocab, args.feature_dim, args.d_model, args.heads, args.ff_size, args.layers, dropout=0.0).to(device).eval()
    with torch.no_grad():
        model.logit.bias[END] -= 100.0  # no caption ends early: both runs decode all max_length + 1 steps
    feats = torch.randn(args.images, args.regions, args.feature_dim, device=device)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; transformer d={args.d_model} heads={args.heads} "
          f"ff={args.ff_size} layers={args.layers}, vocab {args.vocab}; beam {args.beam} over {args.images} images of {args.regions} x {args.feature_dim}, "
          f"max length {args.max_length}")

    def run(cache: bool):
        model.use_cache = cache
        with torch.no_grad():
            return beam_search(model, feats, args.beam, args.max_length)

    t_cache, (seq_cache, score_cache) = timed(lambda: run(True), args.repeats)
    t_prefix, (seq_prefix, score_prefix) = timed(lambda: run(False), args.repeats)
    model.use_cache = True
    same = torch.equal(seq_cache, seq_prefix)
    diff = float((score_cache - score_prefix).abs().max())
    print(f"re-run the prefix  {t_prefix * 1000:9.1f} ms")
    print(f"key/value cache    {t_cache * 1000:9.1f} ms")
    print(f"speed-up           {t_prefix / t_cache:9.2f}x   (same captions: {same}; largest score difference {diff:.2e})")
    if not same:
        raise SystemExit("the cached and the re-run decodings differ")


if __name__ == "__main__":
    main()
