"""imcap.metrics vs pycocoevalcap 1.2, timed in the same process, on Flickr8k leave-one-out.

5,000 images x (4 references + caption #0 as the prediction): tokenize + BLEU + ROUGE-L + CIDEr,
stage by stage and end to end; METEOR on --meteor-images images (both including their Java start-up);
and CIDEr-D rewards for a self-critical batch (50 images x 5 samples) against Flickr8k train references.

    .venv/bin/python benchmarks/bench_metrics.py [--images 5000] [--meteor-images 1000] [--meteor-rounds 2]
        [--meteor-warm 5] [--repeat 3] [--rounds 3]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = ROOT / ".." / "shared" / "data" / "flickr8k"


def load_flickr8k() -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for line in (FLICKR8K / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, caption = line.split("\t", 1)
            refs.setdefault(key.split("#")[0].removesuffix(".1"), []).append(caption)
    return refs


class _Detached:
    """Replaces pycocoevalcap's process handle after use, so its __del__ leaves our process alone."""

    stdin = io.StringIO()

    def kill(self) -> None:
        pass

    def wait(self) -> None:
        pass


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Best wall time of `repeat` runs, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--meteor-images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating end-to-end runs per library")
    parser.add_argument("--meteor-rounds", type=int, default=2, help="cold METEOR starts per wrapper")
    parser.add_argument("--meteor-warm", type=int, default=5, help="warm METEOR calls per wrapper")
    parser.add_argument("--repeat", type=int, default=3, help="imcap timings: best of this many runs")
    args = parser.parse_args()
    if not (FLICKR8K / "Flickr8k.token.txt").is_file():
        sys.exit(f"Flickr8k captions not found under {FLICKR8K}")

    from pycocoevalcap.bleu.bleu import Bleu as PBleu
    from pycocoevalcap.cider.cider import Cider as PCider
    from pycocoevalcap.meteor.meteor import Meteor as PMeteor
    from pycocoevalcap.rouge.rouge import Rouge as PRouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer as PTok

    from imcap.metrics import Bleu, Cider, CiderDReward, Meteor, PTBTokenizer, Rouge, evaluate

    data = load_flickr8k()
    ids = list(data)[: args.images]
    refs = {i: data[i][1:] for i in ids}
    preds = {i: data[i][0] for i in ids}
    gts_raw = {i: [{"caption": c} for c in refs[i]] for i in ids}
    res_raw = {i: [{"caption": preds[i]}] for i in ids}
    print(f"{len(ids)} Flickr8k images x (4 refs + 1 pred); per stage: pycocoevalcap once, imcap best of "
          f"{args.repeat} (a fresh tokenizer each time)")

    rows = []
    quiet = contextlib.redirect_stdout(io.StringIO())  # pycocoevalcap prints progress lines
    with quiet:
        t_ptok, (gts, res) = timed(lambda: (PTok().tokenize(gts_raw), PTok().tokenize(res_raw)))
    t_itok, (igts, ires) = timed(lambda: (PTBTokenizer().tokenize(gts_raw), PTBTokenizer().tokenize(res_raw)),
                                 args.repeat)
    assert igts == gts and ires == res, "tokenizations differ"
    rows.append(("PTB tokenize", t_ptok, t_itok))
    with quiet:
        t_pb, pb = timed(lambda: PBleu(4).compute_score(gts, res, verbose=0))
    t_ib, ib = timed(lambda: Bleu(4).compute_score(gts, res), args.repeat)
    rows.append(("BLEU-1..4", t_pb, t_ib))
    t_pr, pr = timed(lambda: PRouge().compute_score(gts, res))
    t_ir, ir = timed(lambda: Rouge().compute_score(gts, res), args.repeat)
    rows.append(("ROUGE-L", t_pr, t_ir))
    t_pc, pc = timed(lambda: PCider().compute_score(gts, res))
    t_ic, ic = timed(lambda: Cider().compute_score(gts, res), args.repeat)
    rows.append(("CIDEr", t_pc, t_ic))
    def pycoco_pipeline() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            tok = PTok()
            g, r = tok.tokenize(gts_raw), tok.tokenize(res_raw)
            PBleu(4).compute_score(g, r, verbose=0)
            PRouge().compute_score(g, r)
            PCider().compute_score(g, r)

    def imcap_pipeline():
        return evaluate(refs, preds, ["Bleu", "ROUGE_L", "CIDEr"], tokenizer=PTBTokenizer())

    # End to end, the two pipelines alternate (the machine's load drifts); best of `rounds` each.
    t_pipe_p, t_pipe_i = float("inf"), float("inf")
    for _ in range(args.rounds):
        t_pipe_p = min(t_pipe_p, timed(pycoco_pipeline)[0])
        t, result = timed(imcap_pipeline)
        t_pipe_i = min(t_pipe_i, t)
    rows.append((f"all four, end to end (best of {args.rounds})", t_pipe_p, t_pipe_i))
    for name, ours, theirs in (("Bleu_4", result.corpus["Bleu_4"], pb[0][3]),
                               ("ROUGE_L", result.corpus["ROUGE_L"], pr[0]), ("CIDEr", result.corpus["CIDEr"], pc[0])):
        assert abs(ours - theirs) <= 1e-9, (name, ours, theirs)
    assert np.max(np.abs(np.array(ib[1]) - np.array(pb[1]))) <= 1e-9
    assert np.max(np.abs(ir[1] - pr[1])) <= 1e-9 and np.max(np.abs(ic[1] - pc[1])) <= 1e-9

    print(f"\n{'stage':<36} {'pycocoevalcap':>14} {'imcap':>9} {'speed-up':>9}")
    for name, p, i in rows:
        print(f"{name:<36} {p:>13.3f}s {i:>8.3f}s {p / i:>8.1f}x")

    m_ids = ids[: args.meteor_images]
    m_gts = {i: gts[i] for i in m_ids}
    m_res = {i: res[i] for i in m_ids}
    print(f"\nMETEOR on {len(m_ids)} images")
    # Cold: each wrapper starts its Java process (the same command) and scores once.
    cold: dict[str, float] = {"pycocoevalcap": float("inf"), "imcap": float("inf")}
    values = {}
    for rnd in range(args.meteor_rounds):
        order = [("pycocoevalcap", PMeteor), ("imcap", Meteor)]
        for label, make in order if rnd % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            scorer = make()
            values[label] = scorer.compute_score(m_gts, m_res)
            cold[label] = min(cold[label], time.perf_counter() - start)
            if label == "imcap":
                scorer.close()
            del scorer
    assert values["imcap"] == (values["pycocoevalcap"][0], list(values["pycocoevalcap"][1]))
    print(f"  cold (start Java + score), best of {args.meteor_rounds}: pycocoevalcap {cold['pycocoevalcap']:.2f}s, "
          f"imcap {cold['imcap']:.2f}s (ratio {cold['imcap'] / cold['pycocoevalcap']:.2f})")
    # Warm: both wrappers take turns on one running Java process, so only the wrappers differ.
    ours = Meteor()
    theirs = object.__new__(PMeteor)
    theirs.meteor_p, theirs.lock = ours._proc, threading.Lock()
    ours.compute_score(m_gts, m_res)
    warm: dict[str, list[float]] = {"pycocoevalcap": [], "imcap": []}
    for _ in range(args.meteor_warm):
        for label, scorer in (("pycocoevalcap", theirs), ("imcap", ours)):
            warm[label].append(timed(lambda: scorer.compute_score(m_gts, m_res))[0])
    theirs.meteor_p = _Detached()
    ours.close()
    med = {k: statistics.median(v) for k, v in warm.items()}
    print(f"  warm (same Java process), median of {args.meteor_warm}: pycocoevalcap {med['pycocoevalcap']:.3f}s, "
          f"imcap {med['imcap']:.3f}s (ratio {med['imcap'] / med['pycocoevalcap']:.2f}); METEOR "
          f"{values['imcap'][0]:.6f} from both")

    train_ids = [i for i in data if i not in set(ids[:50])]
    start = time.perf_counter()
    reward = CiderDReward({i: data[i] for i in train_ids})
    built = time.perf_counter() - start
    rng = random.Random(0)
    batch = rng.sample(train_ids, 50)
    image_ids = [i for i in batch for _ in range(5)]
    samples = [data[rng.choice(train_ids)][0].lower().rstrip(" .").split() for _ in image_ids]
    reward.score(image_ids, samples)
    per_call = []
    for _ in range(50):
        start = time.perf_counter()
        reward.score(image_ids, samples)
        per_call.append(time.perf_counter() - start)
    print(f"\nCiderDReward over {len(train_ids)} images ({sum(len(data[i]) for i in train_ids)} references): "
          f"built in {built:.2f}s; 50 images x 5 samples: median {1000 * statistics.median(per_call):.2f} ms, "
          f"min {1000 * min(per_call):.2f} ms per batch")


if __name__ == "__main__":
    main()
