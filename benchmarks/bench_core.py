"""Core speed claims, measured in one process and printed as ratios.

1. Teacher forcing: ShowTell's fused nn.LSTM over the whole sequence vs a per-step nn.LSTMCell loop
   (same weights, same loss), forward + backward, in captions per second.
2. Beam search: imcap's beam search batched over the whole batch vs the same search run image by image.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_core.py [--vocab 9567] [--size 512]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from imcap.decoding import beam_search  # noqa: E402
from imcap.models import ShowTell  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def cell_loop_loss(model: ShowTell, cell: nn.LSTMCell, feats: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same model as a Python loop over time steps with an LSTMCell (the baseline)."""
    h = torch.zeros(feats.size(0), model.rnn_size)
    c = torch.zeros_like(h)
    h, c = cell(feats, (h, c))
    emb = model.embed(tokens)
    losses = []
    for t in range(tokens.size(1)):
        h, c = cell(emb[:, t], (h, c))
        losses.append(nn.functional.cross_entropy(model.logit(model.dropout(h)), targets[:, t], reduction="sum"))
    return torch.stack(losses).sum() / targets.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=9567)
    parser.add_argument("--size", type=int, default=512, help="input encoding and RNN size")
    parser.add_argument("--batch", type=int, default=16, help="images (x5 captions)")
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--beam-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, vocab {args.vocab}, size {args.size}")

    model = ShowTell(args.vocab, args.size, args.size, dropout=0.0)
    cell = nn.LSTMCell(args.size, args.size)
    with torch.no_grad():  # same weights in both
        cell.weight_ih.copy_(model.rnn.weight_ih_l0)
        cell.weight_hh.copy_(model.rnn.weight_hh_l0)
        cell.bias_ih.copy_(model.rnn.bias_ih_l0)
        cell.bias_hh.copy_(model.rnn.bias_hh_l0)
    n = args.batch * 5
    feats = torch.randn(n, args.size)
    tokens = torch.randint(4, args.vocab + 1, (n, args.length))
    targets = torch.randint(4, args.vocab + 1, (n, args.length))

    def fused():
        model.zero_grad()
        nn.functional.cross_entropy(model(feats, tokens).flatten(0, 1), targets.flatten()).backward()

    def looped():
        model.zero_grad()
        cell.zero_grad()
        cell_loop_loss(model, cell, feats, tokens, targets).backward()

    fused_loss = nn.functional.cross_entropy(model(feats, tokens).flatten(0, 1), targets.flatten())
    assert torch.allclose(fused_loss, cell_loop_loss(model, cell, feats, tokens, targets), atol=1e-4), "baselines disagree"
    t_loop, t_fused = timed(looped, args.repeats), timed(fused, args.repeats)
    print(f"teacher forcing ({n} captions x {args.length} words, fwd+bwd): LSTMCell loop {n / t_loop:8.1f} captions/s, "
          f"fused nn.LSTM {n / t_fused:8.1f} captions/s -> {t_loop / t_fused:.2f}x")

    model.eval()
    feats_b = torch.randn(args.beam_batch, args.size)
    with torch.no_grad():
        per_image = lambda: [beam_search(model, feats_b[i : i + 1], args.beam, args.length) for i in range(args.beam_batch)]  # noqa: E731
        batched = lambda: beam_search(model, feats_b, args.beam, args.length)  # noqa: E731
        seq_b, _ = batched()
        for i, (seq_i, _) in enumerate(per_image()):
            assert torch.equal(seq_b[i, :, : seq_i.size(2)], seq_i[0]), "batched and per-image beams disagree"
        t_per, t_bat = timed(per_image, args.repeats), timed(batched, args.repeats)
    print(f"beam search (beam {args.beam}, {args.beam_batch} images): per-image loop {args.beam_batch / t_per:8.1f} img/s, "
          f"batched {args.beam_batch / t_bat:8.1f} img/s -> {t_per / t_bat:.2f}x")


if __name__ == "__main__":
    main()
