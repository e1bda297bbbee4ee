"""SCST step time: imcap's batched step vs a naive one, measured interleaved in one process.

imcap:  one batched sampling pass for all K samples per image (B*K rows), vectorised CIDEr-D rewards
        (NumPy, document frequencies of the training references computed once), greedy baseline.
naive:  K sampling passes, each sample turned into words and scored alone by a pycocoevalcap-style
        CIDEr-D in Python dictionaries (same corpus document frequencies), greedy baseline likewise.
Both then take the same loss, backward and optimiser step. The script also checks that the two reward
implementations agree, and times the reward computation on its own.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_scst.py [--images 1000] [--batch 16] [--k 5]
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIGMA = 6.0


def ngram_counts(words: list[str], n: int = 4) -> Counter:
    """Counts of every 1..n-gram of a sentence (tuples of words)."""
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class NaiveCiderD:
    """pycocoevalcap's CIDEr-D, one candidate at a time, with document frequencies of a training corpus."""

    def __init__(self, refs: dict[object, list[list[str]]]) -> None:
        self.refs = refs
        self.df: Counter = Counter()
        for caps in refs.values():
            self.df.update(set(g for c in caps for g in ngram_counts(c)))
        self.log_docs = math.log(float(len(refs)))

    def _vec(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(4)]
        norm = [0.0] * 4
        length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            vec[n][gram] = tf * (self.log_docs - math.log(max(1.0, self.df.get(gram, 0.0))))
            norm[n] += vec[n][gram] ** 2
            if n == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def score(self, image_id: object, words: list[str]) -> float:
        """CIDEr-D of one candidate against the references of `image_id`."""
        vh, nh, lh = self._vec(ngram_counts(words))
        total = np.zeros(4)
        for ref in self.refs[image_id]:
            vr, nr, lr = self._vec(ngram_counts(ref))
            for n in range(4):
                val = sum(min(v, vr[n][g]) * vr[n][g] for g, v in vh[n].items() if g in vr[n])
                if nh[n] != 0 and nr[n] != 0:
                    val /= nh[n] * nr[n]
                total[n] += val * math.e ** (-((lh - lr) ** 2) / (2 * SIGMA**2))
        return float(np.mean(total) / len(self.refs[image_id]) * 10.0)


def main() -> None:
    from imcap.config import TrainOptions
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes
    from imcap.data.vocab import END, NULL
    from imcap.decoding import sample
    from imcap.metrics.tokenizer import PTBTokenizer
    from imcap.scst import greedy_captions, policy_loss
    from imcap.train import Trainer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="a prepro directory (default: synthesise --images scenes)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=5, help="samples per image")
    parser.add_argument("--size", type=int, default=256, help="encoding and RNN size (the demo's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scst_"))
    data_dir = Path(args.data) if args.data else tmp / "data"
    if not args.data:
        generate_scenes(tmp / "synth", num_images=args.images, seed=1, progress=False)
        prepro(PreproOptions(input=str(tmp / "synth"), output_dir=str(data_dir)))
    opts = TrainOptions(data=str(data_dir), checkpoint_path=str(tmp / "run"), cnn="small", image_input="every", input_encoding_size=args.size,
                        rnn_size=args.size, drop_prob_lm=0.2, batch_size=args.batch, self_critical_after=0, sc_sample_n=args.k, progress=False)
    trainer = Trainer(opts)
    data, model, k = trainer.data, trainer.model, args.k
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(trainer.train_indices)} training images, vocabulary {data.vocab.vocab_size}, "
          f"batch {args.batch} images x {k} samples, ShowTell {args.size}")

    t0 = time.perf_counter()
    trainer.scst.reward  # noqa: B018 - build the cached CIDEr-D tables now
    build_fast = time.perf_counter() - t0
    tok = PTBTokenizer()
    t0 = time.perf_counter()
    refs = {data.images[i]["id"]: [c.split() for c in tok.tokenize_captions(data.images[i]["captions"])] for i in trainer.train_indices}
    naive = NaiveCiderD(refs)
    build_naive = time.perf_counter() - t0
    words = data.vocab.idx_to_word

    def to_words(row: list[int]) -> list[str]:
        out = []
        for t in row:
            if t in (NULL, END):
                break
            out.append(words[t])
        return out

    def naive_rewards(ids: list, seqs: torch.Tensor) -> np.ndarray:
        return np.array([naive.score(i, to_words(row)) for i, row in zip(ids, seqs.tolist())])

    def naive_step(images: torch.Tensor, idx: torch.Tensor) -> None:
        model.train()
        feats = model.encode(images)
        ids = [data.images[i]["id"] for i in idx.tolist()]
        seqs, logps, rewards = [], [], []
        for _ in range(k):  # one sampling pass per sample
            s, lp = sample(model.decoder, feats, data.max_length)
            seqs.append(s)
            logps.append(lp)
            rewards.append(naive_rewards(ids, s))
        best = greedy_captions(model.decoder, feats.detach(), data.max_length)
        baseline = naive_rewards(ids, best)
        length = max(s.size(1) for s in seqs)
        pad = lambda t: torch.nn.functional.pad(t, (0, length - t.size(1)))  # noqa: E731
        adv = torch.as_tensor(np.concatenate([r - baseline for r in rewards]), dtype=torch.float32)
        loss = policy_loss(torch.cat([pad(lp) for lp in logps]), torch.cat([pad(s) for s in seqs]), adv)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.cnn_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        trainer.cnn_optimizer.step()

    from imcap.data.loader import CaptionDataset, ResumableSampler, make_loader

    dataset = CaptionDataset(data, trainer.train_indices, model.encoder.input_size, opts.seq_per_img, 0)
    batches = list(make_loader(dataset, args.batch, ResumableSampler(len(dataset), 0, shuffle=True)))[: args.repeats + 1]
    fast_times, naive_times, reward_fast, reward_naive, diffs = [], [], [], [], []
    for r, (images, labels, idx) in enumerate(batches):
        t0 = time.perf_counter()
        trainer.train_step(images, labels, idx)
        t1 = time.perf_counter()
        naive_step(images, idx)
        t2 = time.perf_counter()
        with torch.no_grad():  # the reward computation alone, on the same samples
            seqs, _ = sample(model.decoder, model.encode(images).repeat_interleave(k, dim=0), data.max_length)
        ids = [data.images[i]["id"] for i in idx.tolist() for _ in range(k)]
        t3 = time.perf_counter()
        fast = trainer.scst.reward(ids, seqs.numpy())
        t4 = time.perf_counter()
        slow = naive_rewards(ids, seqs)
        t5 = time.perf_counter()
        if r == 0:
            continue  # warm-up
        fast_times.append(t1 - t0)
        naive_times.append(t2 - t1)
        reward_fast.append(t4 - t3)
        reward_naive.append(t5 - t4)
        diffs.append(float(np.abs(fast - slow).max()))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"reward tables (built once): imcap {build_fast:.2f} s, naive {build_naive:.2f} s")
    print(f"rewards agree: max |imcap - naive| = {max(diffs):.2e} over {len(diffs)} x {args.batch * k} samples")
    print(f"reward only ({args.batch * k} samples): imcap {med(reward_fast) * 1e3:.1f} ms, naive {med(reward_naive) * 1e3:.1f} ms "
          f"-> {med(reward_naive) / med(reward_fast):.1f}x")
    print(f"SCST step (sample, reward, greedy baseline, backward, update): imcap {med(fast_times) * 1e3:.0f} ms, naive {med(naive_times) * 1e3:.0f} ms "
          f"-> {med(naive_times) / med(fast_times):.2f}x  ({args.batch / med(fast_times):.1f} vs {args.batch / med(naive_times):.1f} images/s)")


if __name__ == "__main__":
    main()
