"""Search index kinds (FAISS flat, ivf, hnsw) against today's index, in one process: recall@10 against exact search,
queries/s one at a time and in batches of 64, build and load time.

Two galleries:
1. clustered: --size (1,000,000) 256-d unit vectors drawn from a mixture of --clusters (10,000) Gaussian clusters
   around random unit centres, x = normalise(c + spread * g / sqrt(256)) with g ~ N(0, I); the 1,000 queries are
   drawn the same way. At --spread 1.0 a point's cosine with its centre is about 0.7, with another point of its
   cluster about 0.5 and with any other point 0 +- 0.06: a query's nearest neighbours are its cluster's (the script
   prints the share), and the scores inside a cluster still differ, so the order of the top 10 is not given away.
2. real: the image embeddings of a synthetic gallery (`imcap synth`, --real-gallery images) made by a small dual
   encoder trained on other synth scenes (the docs/search.md recipe, shortened), queried by the text embeddings of
   1,000 of the gallery's captions. The model and gallery are cached under --work.

Each kind is built by `build_index_from_vectors` (what `imcap search index --embeddings F.npy --paths F.txt` runs)
and queried by `SearchIndex.search_vectors` (what a text query runs after the sentence encoder, which costs the same
for every kind and is left out). Queries/s are 1 / the median time of a query (or 64 / that of a batch of 64), so
that bursts of other work on shared cores do not decide them. "today" is the index before FAISS: the float16 shards held as float32 tensors, one
matrix product and a running top-k per shard; its query code is kept below as `today_top_k`. Exact search is float32
brute force over the original vectors (faiss.knn); the indexes store float16, as imcap's shards always have.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_index.py [--size 1000000] [--real-gallery 20000] [--no-real]
    python benchmarks/bench_index.py --size 100000 --clusters 1000 --no-real      # a quick run
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from imcap.search import faiss_index  # noqa: E402
from imcap.search.index import build_index, build_index_from_vectors, load_index  # noqa: E402

K, BATCH = 10, 64


# ---------------------------------------------------------------- today's index (before FAISS), kept as the baseline


def today_top_k(text: torch.Tensor, blocks: list[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best cosines (Q, k) and rows (Q, k) of unit queries `text` (Q, D) over gallery blocks, as imcap did before FAISS."""
    best: torch.Tensor | None = None
    best_rows = torch.zeros(0, dtype=torch.long)
    offset = 0
    for gallery in blocks:
        scores = (text @ gallery.T).float()  # (Q, c): DualEncoder.scores
        values, rows = scores.topk(min(k, scores.size(1)), dim=1)
        rows += offset
        if best is not None:
            values, rows = torch.cat([best, values], 1), torch.cat([best_rows, rows], 1)
            values, pick = values.topk(min(k, values.size(1)), dim=1)
            rows = rows.gather(1, pick)
        best, best_rows = values, rows
        offset += len(gallery)
    assert best is not None
    return best, best_rows


# ---------------------------------------------------------------- data


def clustered(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors (n, D) float32 around random picks of `centres` (C, D), and the cluster of each (n,)."""
    labels = rng.integers(0, len(centres), n)
    x = centres[labels] + rng.standard_normal((n, centres.shape[1]), dtype=np.float32) * np.float32(spread / np.sqrt(centres.shape[1]))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def write_clustered(folder: Path, size: int, clusters: int, dim: int, spread: float, queries: int,
                    seed: int) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    """Write the gallery (vectors.npy, paths.txt) in chunks; return the files, the queries (Q, D) and the clusters of
    the gallery (N,) and of the queries (Q,)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(size, dim))
    labels = np.empty(size, dtype=np.int64)
    for s in range(0, size, 100_000):
        vectors[s:s + 100_000], labels[s:s + 100_000] = clustered(min(100_000, size - s), centres, spread, rng)
    vectors.flush()
    del vectors
    (folder / "paths.txt").write_text("".join(f"images/{i:07d}.jpg\n" for i in range(size)))
    q, q_labels = clustered(queries, centres, spread, rng)
    return folder / "vectors.npy", folder / "paths.txt", q, labels, q_labels


# ---------------------------------------------------------------- measuring


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k (Q, k) found in `found` (Q, k)."""
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / exact.shape[1] for a, b in zip(found, exact)]))


def one_at_a_time(search: Callable[[int], object], queries: int, seconds: float) -> float:
    """Queries/s = 1 / the median time of one query, searching queries 0, 1, ... one per call, for all `queries` or
    `seconds`, whichever ends first (the median shrugs off the bursts of other work on shared cores)."""
    search(0)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < queries and (len(times) < 10 or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        search(len(times))
        times.append(time.perf_counter() - t0)
    return 1 / float(np.median(times))


def batched(search: Callable[[slice], np.ndarray], queries: int) -> tuple[float, np.ndarray]:
    """(queries/s = BATCH / the median time of a full batch, rows (Q, k)) searching all queries in batches of BATCH."""
    search(slice(0, BATCH))
    times, rows = [], []
    for s in range(0, queries, BATCH):
        t0 = time.perf_counter()
        rows.append(search(slice(s, s + BATCH)))
        if s + BATCH <= queries:
            times.append(time.perf_counter() - t0)
    return BATCH / float(np.median(times)), np.concatenate(rows)


def row(name: str, rec: float, one: float, many: float, build: float | None, load: float | None, disk: float | None, base: tuple[float, float] | None) -> str:
    ratio = f"{one / base[0]:7.1f}x {many / base[1]:6.1f}x" if base else f"{'1.0x':>8} {'1.0x':>7}"
    opt = [f"{v:7.1f}" if v is not None else f"{'-':>7}" for v in (build, load, disk)]
    return f"  {name:<22} {rec:8.4f} {one:10.1f} {many:10.1f}  {ratio}  {opt[0]} {opt[1]} {opt[2]}"


def header() -> str:
    return (f"  {'index':<22} {'recall@10':>8} {'1 q/s':>10} {f'{BATCH} q/s':>10}  {'vs today (1, ' + str(BATCH) + ')':>15}"
            f"  {'build s':>7} {'load s':>7} {'disk MB':>7}")


def measure(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, exact: np.ndarray, seconds: float) -> tuple[float, float, float]:
    """(recall@K, queries/s one at a time, queries/s in batches) of `search`: queries (Q, D) -> rows (Q, K)."""
    one = one_at_a_time(lambda i: search(queries[i:i + 1]), len(queries), seconds)
    many, rows = batched(lambda s: search(queries[s]), len(queries))
    return recall(rows, exact), one, many


def rows_of(index) -> Callable[[np.ndarray], np.ndarray]:
    """queries (Q, D) -> the rows (Q, K) `index` finds for them."""
    return lambda q: index.search_vectors(q, K)[1]


def compare(title: str, vectors: Path, paths: Path, queries: np.ndarray, exact: np.ndarray, work: Path, seconds: float,
            sweep: bool) -> None:
    """Build each kind from `vectors`/`paths`, measure it and today's index against `exact` (Q, k); print a table."""
    print(f"\n{title}\n{header()}")
    base: tuple[float, float] = (1.0, 1.0)
    for kind in faiss_index.KINDS:
        out = work / f"index-{kind}"
        shutil.rmtree(out, ignore_errors=True)
        gc.collect()
        t0 = time.perf_counter()
        build_index_from_vectors(vectors, paths, out, kind=kind, progress=False)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = load_index(out, vectors_only=True)
        load_s = time.perf_counter() - t0
        if kind == "flat":  # today's index: the same float16 shards, as float32 tensors
            blocks = [torch.from_numpy(np.array(a, dtype=np.float32)) for a in index.features]
            rec, one, many = measure(lambda q: today_top_k(torch.from_numpy(q), blocks, K)[1].numpy(), queries, exact, seconds)
            base = (one, many)
            print(row("today (torch, shards)", rec, one, many, None, None, None, None), flush=True)
            del blocks
            gc.collect()
        search = rows_of(index)
        rec, one, many = measure(search, queries, exact, seconds)
        record = index.manifest["structure"]
        disk = (out / record["file"]).stat().st_size / 1e6 if record["file"] else None
        name = f"{kind} " + " ".join(f"{k}={v}" for k, v in record["params"].items() if k != "trained_on")
        print(row(name, rec, one, many, build_s, load_s, disk, base), flush=True)
        if sweep and kind != "flat":
            key = "nprobe" if kind == "ivf" else "ef_search"
            chosen = record["params"][key]
            for value in sorted({max(1, chosen // 4), max(1, chosen // 2), chosen * 2, chosen * 4} - {chosen}):
                index.set_search_params(**{key: value})
                rec, one, many = measure(search, queries, exact, seconds / 2)
                print(row(f"  {key}={value}", rec, one, many, None, None, None, base), flush=True)
        del index, search
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------- the two galleries


def bench_clustered(args: argparse.Namespace, work: Path) -> None:
    folder = work / "clustered"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vectors, paths, queries, labels, q_labels = write_clustered(folder, args.size, args.clusters, 256, args.spread, args.queries, args.seed)
    made = time.perf_counter() - t0
    gallery = np.load(vectors, mmap_mode="r")
    t0 = time.perf_counter()
    scores, exact = faiss.knn(queries, np.ascontiguousarray(gallery), K, metric=faiss.METRIC_INNER_PRODUCT)
    exact_s = time.perf_counter() - t0
    own = float(np.mean(labels[exact] == q_labels[:, None]))
    print(f"\nclustered: {args.size:,} x 256 unit vectors, {args.clusters:,} clusters, spread {args.spread} (made in {made:.0f} s); "
          f"{args.queries:,} queries; exact top-{K}: {100 * own:.1f}% in the query's own cluster, mean cosine {scores[:, 0].mean():.3f} "
          f"(1st) to {scores[:, -1].mean():.3f} ({K}th); exact search {args.queries / exact_s:.0f} q/s in one batch")
    del gallery
    compare(f"clustered, {args.size:,} vectors", vectors, paths, queries, exact, folder, args.seconds, args.sweep)
    shutil.rmtree(folder, ignore_errors=True)


def imcap(*argv: str) -> None:
    """Run one `imcap` command in a child process; its output is shown only when it fails."""
    done = subprocess.run([sys.executable, "-m", "imcap", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"imcap {' '.join(argv)} failed:\n{done.stdout}{done.stderr}")


@torch.no_grad()
def bench_real(args: argparse.Namespace, work: Path) -> None:
    from imcap.search.data import encode_query, pad_ids

    root = work / "real"
    run, gallery = root / "dual", root / "gallery"
    if not (run / "best.pt").is_file():
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        imcap("synth", "--out", str(root / "synth"), "--images", "3000")
        imcap("prepro", "--input", str(root / "synth"), "--output-dir", str(root / "data"))
        imcap("search", "train", "--model", "dual", "--data", str(root / "data"), "--checkpoint-path", str(run), "--cnn-width", "16",
              "--input-encoding-size", "128", "--rnn-size", "128", "--embed-size", "128", "--drop-prob-lm", "0.1", "--learning-rate", "1e-3",
              "--batch-size", "64", "--max-iters", str(args.real_iters), "--save-checkpoint-every", str(args.real_iters), "--no-progress")
        print(f"\n(trained the dual encoder on 3,000 synth scenes, {args.real_iters} iterations, in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if not (gallery / "captions.json").is_file() or len(list((gallery / "images").iterdir())) != args.real_gallery:
        shutil.rmtree(gallery, ignore_errors=True)
        imcap("synth", "--out", str(gallery), "--images", str(args.real_gallery), "--seed", "2026")
    shutil.rmtree(root / "index", ignore_errors=True)
    t0 = time.perf_counter()
    built = build_index(run, [str(gallery / "images")], root / "index", kind="flat", progress=False)
    embed_s = time.perf_counter() - t0
    index = load_index(root / "index")
    vectors = np.concatenate([np.asarray(a, dtype=np.float32) for a in index.features])  # (N, D) the gallery's embeddings
    np.save(root / "vectors.npy", vectors)
    (root / "paths.txt").write_text("".join(p + "\n" for p in index.paths))
    records = json.loads((gallery / "captions.json").read_text())["images"]
    rng = random.Random(args.seed)
    texts = [rng.choice(r["sentences"])["raw"] for r in rng.sample(records, min(args.queries, len(records)))]
    loaded = index.loaded
    tokens = pad_ids([encode_query(t, loaded.vocab, loaded.max_length) for t in texts])
    queries = torch.cat([loaded.model.text_features(tokens[s:s + 256]) for s in range(0, len(texts), 256)]).numpy()  # (Q, D)
    scores, exact = faiss.knn(queries, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)
    print(f"\nreal: {built.total:,} synth scenes embedded by a {vectors.shape[1]}-d dual encoder ({built.total / embed_s:.0f} images/s "
          f"with `imcap search index --model`); {len(texts):,} caption queries; mean exact cosine {scores[:, 0].mean():.3f} (1st) "
          f"to {scores[:, -1].mean():.3f} ({K}th)")
    del index
    compare(f"real, {built.total:,} synth scenes", root / "vectors.npy", root / "paths.txt", queries, exact, root, args.seconds, args.sweep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="clustered gallery size")
    parser.add_argument("--clusters", type=int, default=10_000, help="Gaussian clusters of the clustered gallery")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the unit centre")
    parser.add_argument("--queries", type=int, default=1000, help="queries per gallery")
    parser.add_argument("--seconds", type=float, default=20.0, help="at most this long timing one-at-a-time queries per index")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True, help="also time other nprobe / ef_search values")
    parser.add_argument("--real", action=argparse.BooleanOptionalAction, default=True, help="also run the real (synth) gallery")
    parser.add_argument("--real-gallery", type=int, default=20_000, help="synth scenes in the real gallery")
    parser.add_argument("--real-iters", type=int, default=400, help="training iterations of the real gallery's dual encoder")
    parser.add_argument("--work", default="runs/bench_index", help="scratch folder (the real gallery's model is cached here)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"faiss {faiss.__version__}, torch {torch.__version__}, {faiss.omp_get_max_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}; date {time.strftime('%Y-%m-%d')}")
    bench_clustered(args, work)
    if args.real:
        bench_real(args, work)


if __name__ == "__main__":
    main()
