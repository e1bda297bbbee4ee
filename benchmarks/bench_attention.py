"""Training-step speed of the attention decoders: each optimisation against the plain version, in one process.

    python benchmarks/bench_attention.py [--batch 16] [--captions 5] [--grid 8] [--steps 17] [--repeats 20]

At the sizes of benchmarks/bench_decoders.py (16 images x 5 captions, the small CNN's 8x8 grid of 128
channels, 256 units, 17 words, vocabulary 83), forward + backward:

1. additive attention (models/additive.py: hand-written backward, one buffer, tanh from sigmoid) against
   the same formula written with autograd's pieces (Linear(A, 1) on tanh(keys + query), bmm);
2. per-image work once (`forward_with_attention(feats, tokens, repeats=5)`: init_state per image, its
   state repeated) against repeating the features first (init_state per caption), for every decoder;
3. teacher forcing (`teacher_force`: embeddings, the recurrence-free part of the cell's input
   projection, output layer and log-softmax once over all steps) against stepping (`unroll`).

Each line prints the median time of both and their ratio (> 1: the optimised version is faster). The
last lines compare each decoder's step with show_attend_tell's (> 1: cheaper than show_attend_tell).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from imcap.models import ShowAttendTell, TransformerCaptioner, UpDown
from imcap.models.additive import additive_scores, weighted_sum
from imcap.models.decoder import repeat_features
from imcap.models.scheduled import unroll

VOCAB = 83


def median_ms(fn, repeats: int) -> float:
    """Median wall time of fn() in milliseconds, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def compare(label: str, fast, plain, repeats: int) -> None:
    """Time both (interleaved halves, so load drifts hit both) and print the ratio."""
    fast_ms = plain_ms = 0.0
    for _ in range(2):
        plain_ms += median_ms(plain, repeats // 2 or 1) / 2
        fast_ms += median_ms(fast, repeats // 2 or 1) / 2
    print(f"{label:58s} {plain_ms:8.1f} ms -> {fast_ms:8.1f} ms   {plain_ms / fast_ms:5.2f}x", flush=True)


def attention_op(rows: int, k: int, a: int, repeats: int) -> None:
    keys = torch.randn(rows, k, a, requires_grad=True)
    query = torch.randn(rows, a, requires_grad=True)
    values = torch.randn(rows, k, a, requires_grad=True)
    w_lin = torch.nn.Linear(a, 1)
    upstream = torch.randn(rows, a)

    def plain() -> None:
        scores = w_lin(torch.tanh(keys + query.unsqueeze(1))).squeeze(2)  # (N, K)
        torch.bmm(scores.softmax(1).unsqueeze(1), values).squeeze(1).backward(upstream)

    def fast() -> None:
        scores = additive_scores(keys, query, w_lin.weight.view(-1), w_lin.bias)  # (N, K)
        weighted_sum(scores.softmax(1), values).backward(upstream)

    compare(f"additive attention, {rows} x {k} x {a}", fast, plain, repeats)


def decoders(channels: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "show_attend_tell": ShowAttendTell(VOCAB, channels, 256, 256, dropout=0.2),
        "updown": UpDown(VOCAB, channels, 256, 256, dropout=0.2),
        "transformer": TransformerCaptioner(VOCAB, channels, d_model=128, num_heads=4, ff_size=512, num_layers=2, dropout=0.1, position_encoding="grid"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--grid", type=int, default=8, help="side of the feature grid (K = grid^2)")
    parser.add_argument("--channels", type=int, default=128, help="feature channels C")
    parser.add_argument("--steps", type=int, default=17, help="words per caption, <START> included")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    small = [name for name, value in vars(args).items() if value < 1]
    if small:
        parser.error(f"--{small[0]} must be >= 1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.batch} images x {args.captions} captions, K={args.grid ** 2}, C={args.channels}, T={args.steps}")
    rows = args.batch * args.captions
    attention_op(rows, args.grid ** 2, 256, args.repeats)
    feats = torch.randn(args.batch, args.grid ** 2, args.channels, requires_grad=True)
    tokens = torch.randint(1, VOCAB + 1, (rows, args.steps))
    for name, m in decoders(args.channels).items():
        m.train()

        def shared(m=m) -> None:
            m.forward_with_attention(feats, tokens, repeats=args.captions)[0].sum().backward()

        def per_caption(m=m) -> None:
            m.forward_with_attention(repeat_features(feats, args.captions), tokens)[0].sum().backward()

        compare(f"{name}: per-image work once vs per caption", shared, per_caption, args.repeats)
        if name != "transformer":  # the transformer's teacher forcing is one masked pass (bench_transformer_decoding.py times its cache)
            def stepped(m=m) -> None:
                unroll(m, m.start(feats, args.captions), tokens)[0].sum().backward()

            compare(f"{name}: teacher forcing vs stepping", shared, stepped, args.repeats)
    relative_costs(feats, tokens, args.captions, args.repeats)


def relative_costs(feats: torch.Tensor, tokens: torch.Tensor, captions: int, repeats: int) -> None:
    """Forward + backward of each decoder (benchmarks/bench_decoders.py's sizes, and updown at 256 units) against show_attend_tell's."""
    torch.manual_seed(0)
    c = feats.size(2)
    others = {
        "updown, LSTMs of 256": UpDown(VOCAB, c, 256, 256, dropout=0.2),
        "updown, LSTMs of 192": UpDown(VOCAB, c, 256, 192, dropout=0.2),
        "transformer, 2+2 layers of 128": decoders(c)["transformer"],
    }
    sat = decoders(c)["show_attend_tell"].train()

    def step(m) -> None:
        m.forward_with_attention(feats, tokens, repeats=captions)[0].sum().backward()

    for label, m in others.items():
        m.train()
        compare(f"show_attend_tell (256) vs {label}", lambda m=m: step(m), lambda: step(sat), repeats)  # > 1: cheaper than show_attend_tell


if __name__ == "__main__":
    main()
