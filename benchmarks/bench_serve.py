"""Loopback load test of `imcap serve`: micro-batching on vs `--max-batch 1`, as ratios.

Starts two `imcap serve` processes on 127.0.0.1 (same model, same limits, one with micro-batching and one
with --max-batch 1), sends each a fixed number of caption requests (one synthetic PNG each, multipart) from
`--concurrency` concurrent clients, and prints p50/p99 latency, throughput and their ratios. It stops by
itself; it exits with status 1 if any request failed.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_serve.py [--requests 500] [--concurrency 32] [--model RUN]

Without --model it serves an untrained model of the demo's size (small CNN, LSTM 256, vocabulary
--vocab): the captions are noise but every request decodes the full --max-length words.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import torch  # noqa: E402

from imcap.checkpoint import save_checkpoint  # noqa: E402
from imcap.data.synth import generate_scenes  # noqa: E402
from imcap.data.vocab import SPECIAL_TOKENS, Vocab  # noqa: E402
from imcap.models.caption_model import ModelArgs, build_model  # noqa: E402

HOST = "127.0.0.1"


def untrained_checkpoint(path: Path, vocab_words: int, size: int) -> Path:
    """Save a randomly initialised demo-size model with a vocabulary of `vocab_words` made-up words."""
    torch.manual_seed(0)
    vocab = Vocab(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(vocab_words)])
    args = ModelArgs(cnn="small", cnn_width=32, input_encoding_size=size, rnn_size=size, vocab_size=vocab.vocab_size)
    save_checkpoint(path, {"model": build_model(args).state_dict(), "model_args": asdict(args), "vocab": vocab.to_dict()})
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, max_wait_ms: float, log: Path) -> tuple[subprocess.Popen, str]:
    """`imcap serve` in a subprocess on a free loopback port; returns it and its base URL once /healthz answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "imcap", "serve", "--model", model, "--host", HOST, "--port", str(port), "--device", "cpu",
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-queue", "1024", "--timeout", "120"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("IMCAP_API_KEY", None)
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start in 120 s; see {log}")


async def load(url: str, images: list[bytes], requests: int, concurrency: int, params: dict) -> dict:
    """Send `requests` caption requests from `concurrency` workers; latencies (s), batch sizes, errors, wall time."""
    run = {"latencies": [], "batch_sizes": [], "errors": [], "wall": 0.0}
    next_index = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=180) as client:

        async def worker() -> None:
            for i in next_index:
                files = {"image": (f"{i}.png", images[i % len(images)], "image/png")}
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/caption", params=params, files=files)
                except httpx.HTTPError as exc:
                    run["errors"].append(f"{exc.__class__.__name__}: {exc}")
                    continue
                run["latencies"].append(time.perf_counter() - t0)
                if r.status_code != 200:
                    run["errors"].append(f"{r.status_code}: {r.text[:200]}")
                else:
                    run["batch_sizes"].append(r.json()["results"][0]["batch_size"])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run["wall"] = time.perf_counter() - start
    return run


def summarize(runs: list[dict]) -> dict:
    """p50/p99 latency (ms), throughput (successful requests/s) and mean batch size over several runs."""
    latencies = sorted(x for r in runs for x in r["latencies"])
    sizes = [b for r in runs for b in r["batch_sizes"]]

    def quantile_ms(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "p50": quantile_ms(0.5),
        "p99": quantile_ms(0.99),
        "throughput": len(sizes) / sum(r["wall"] for r in runs),
        "mean_batch": sum(sizes) / max(1, len(sizes)),
        "errors": [e for r in runs for e in r["errors"]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="run directory or checkpoint (default: an untrained demo-size model)")
    parser.add_argument("--requests", type=int, default=500, help="caption requests per configuration")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--max-batch", type=int, default=16, help="micro-batch size of the batched server")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="micro-batch wait of the batched server")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=1000, help="words of the untrained model")
    parser.add_argument("--size", type=int, default=256, help="encoding and LSTM size of the untrained model")
    parser.add_argument("--rounds", type=int, default=2, help="turns each server takes (the requests are split among them)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp_dir:
        tmp = Path(tmp_dir)
        model = args.model or str(untrained_checkpoint(tmp / "model.pt", args.vocab, args.size))
        generate_scenes(tmp / "synth", num_images=32, seed=1, progress=False)
        images = [p.read_bytes() for p in sorted((tmp / "synth" / "images").glob("*.png"))]
        params = {"beam_size": args.beam_size, "max_length": args.max_length}
        configs = {f"max-batch {args.max_batch}": args.max_batch, "max-batch 1": 1}
        servers = {}
        try:
            for name, max_batch in configs.items():
                servers[name] = start_server(model, max_batch, args.max_wait_ms, tmp / f"server-{max_batch}.log")
            for _, url in servers.values():  # warm-up, not counted
                asyncio.run(load(url, images, 2 * args.concurrency, args.concurrency, params))
            runs: dict[str, list[dict]] = {name: [] for name in servers}
            share = [args.requests // args.rounds + (r < args.requests % args.rounds) for r in range(args.rounds)]
            for count in share:  # the two servers take turns, so that a noisy neighbour hits both alike
                for name, (_, url) in servers.items():
                    runs[name].append(asyncio.run(load(url, images, count, args.concurrency, params)))
            results = {name: summarize(r) for name, r in runs.items()}
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)

    print(f"{args.requests} requests per server in {args.rounds} alternating rounds, concurrency {args.concurrency}, beam {args.beam_size}, "
          f"max length {args.max_length}, model {args.model or f'untrained (vocab {args.vocab}, size {args.size})'}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"{'server':>14}  {'p50 ms':>8}  {'p99 ms':>8}  {'req/s':>7}  {'mean batch':>10}  errors")
    for name, r in results.items():
        print(f"{name:>14}  {r['p50']:8.1f}  {r['p99']:8.1f}  {r['throughput']:7.1f}  {r['mean_batch']:10.2f}  {len(r['errors'])}")
    batched, single = results[f"max-batch {args.max_batch}"], results["max-batch 1"]
    print(f"ratio (batched / max-batch 1): throughput x{batched['throughput'] / single['throughput']:.2f}, "
          f"p50 x{batched['p50'] / single['p50']:.2f}, p99 x{batched['p99'] / single['p99']:.2f}")
    failed = [e for r in results.values() for e in r["errors"]]
    for e in failed[:5]:
        print("error:", e)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
