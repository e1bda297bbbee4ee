"""Search speed claims, measured in one process and printed as ratios against naive loops.

1. dual: queries per second over a random gallery of 100k unit-length embeddings (one matrix product and a
   top-k per block: `imcap.search.index.top_k`, the dual index's query path before FAISS, still gna's) vs a Python
   loop of one dot product per gallery image. Measured for single queries and for a batch of queries.
   benchmarks/bench_index.py measures the FAISS index kinds against it.
2. gna: pairwise affinity throughput (sentence, image pairs per second) of the batched gallery scoring
   (`GNA.scores`: one LSTM over all pairs, input halves precomputed) vs a Python loop over the pairs.

The models are randomly initialised at GNA-RNN's sizes (512 units, 512-unit LSTM, 256-d dual space); the
speed does not depend on the weights.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_search.py [--gallery 100000] [--words 12]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from imcap.search.index import top_k  # noqa: E402
from imcap.search.models import SearchModelArgs, build_search_model  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def sentences(n: int, words: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Random sentences (n, words) of word ids 4..vocab-1 (no padding)."""
    return torch.randint(4, vocab, (n, words), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def bench_dual(gallery_size: int, words: int, vocab: int, k: int, batch: int) -> None:
    model = build_search_model(SearchModelArgs("dual", vocab, cnn="small", embed_size=256)).eval()
    gallery = torch.nn.functional.normalize(torch.randn(gallery_size, 256, generator=torch.Generator().manual_seed(1)), dim=1)
    blocks = list(gallery.split(65536))  # what an index holds in memory, in its query-time blocks
    one = sentences(1, words, vocab)
    many = sentences(batch, words, vocab, seed=2)

    def fast(tokens: torch.Tensor) -> torch.Tensor:
        return top_k(model, model.text_features(tokens), blocks, k)[1]

    def naive(tokens: torch.Tensor) -> list[int]:
        text = model.text_features(tokens)[0]
        scores = [float(text @ gallery[i]) for i in range(gallery_size)]
        return sorted(range(gallery_size), key=lambda i: -scores[i])[:k]

    assert fast(one)[0].tolist() == naive(one), "the two searches disagree"
    t_naive = timed(lambda: naive(one), 1)
    t_one = timed(lambda: fast(one), 5)
    t_many = timed(lambda: fast(many), 3)
    print(f"dual, gallery {gallery_size:,} x 256, top-{k}, {words}-word queries")
    print(f"  naive loop (one dot product per image): {1 / t_naive:10.2f} queries/s")
    print(f"  matrix product, one query at a time:    {1 / t_one:10.2f} queries/s  ({t_naive / t_one:,.0f}x)")
    print(f"  matrix product, {batch} queries at once:   {batch / t_many:10.2f} queries/s  ({batch * t_naive / t_many:,.0f}x)")


@torch.no_grad()
def bench_gna(queries: int, images: int, words: int, vocab: int, loop_pairs: int) -> None:
    model = build_search_model(SearchModelArgs("gna", vocab, cnn="small", input_encoding_size=512, rnn_size=512, units=512)).eval()
    gallery = torch.randn(images, 512 + 4 * 512, generator=torch.Generator().manual_seed(3))  # [units; image half of the LSTM input]
    text = model.text_features(sentences(queries, words, vocab, seed=4))

    def batched() -> torch.Tensor:
        return model.scores(text, gallery)

    def naive() -> torch.Tensor:
        out = torch.empty(loop_pairs)
        for p in range(loop_pairs):
            q, g = divmod(p, images)
            out[p] = model.scores((text[0][q:q + 1], text[1][q:q + 1]), gallery[g:g + 1])[0, 0]
        return out

    torch.testing.assert_close(naive(), batched().flatten()[:loop_pairs], rtol=1e-4, atol=1e-4)
    t_batched = timed(batched, 3)
    t_naive = timed(naive, 1)
    fast, slow = queries * images / t_batched, loop_pairs / t_naive
    print(f"gna, 512 units, 512-unit LSTM, {words}-word sentences")
    print(f"  naive loop (one pair at a time):       {slow:12,.0f} pairs/s")
    print(f"  batched over the gallery ({queries} x {images}): {fast:12,.0f} pairs/s  ({fast / slow:,.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=100_000, help="dual gallery size")
    parser.add_argument("--words", type=int, default=12, help="words per query sentence")
    parser.add_argument("--vocab", type=int, default=5000, help="vocabulary size")
    parser.add_argument("-k", type=int, default=10, help="hits per query")
    parser.add_argument("--batch", type=int, default=64, help="dual queries per batch")
    parser.add_argument("--gna-queries", type=int, default=16, help="gna sentences scored against the gallery")
    parser.add_argument("--gna-images", type=int, default=256, help="gna gallery images")
    parser.add_argument("--loop-pairs", type=int, default=256, help="pairs the naive gna loop scores")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_dual(args.gallery, args.words, args.vocab, args.k, args.batch)
    bench_gna(args.gna_queries, args.gna_images, args.words, args.vocab, args.loop_pairs)


if __name__ == "__main__":
    main()
