"""imcap.metrics vs pycocoevalcap 1.2, timed in one process on Flickr8k leave-one-out.

The job: 5,000 images x (4 references + caption #0 as the prediction): PTB tokenize + BLEU-1..4 +
ROUGE-L + CIDEr. Each round runs both libraries back to back, the one going first alternating, so that
the load of a shared machine falls on both alike; the script prints the best and the median over the
rounds for each side and their ratios, with the split by stage: pycocoevalcap's pipeline stage by
stage, and imcap's drop-in classes stage by stage (each encodes the captions again) besides its one
call, `evaluate()`. Every round checks that both give the same numbers, corpus and per image (1e-9).
METEOR (--meteor-images, 0 skips it) is timed as before: cold Java starts, then both wrappers taking
turns on one running process. The CIDEr-D rewards of SCST have their own script, bench_cider_reward.py.

    .venv/bin/python benchmarks/bench_metrics.py [--images 5000] [--rounds 7] [--meteor-images 1000]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = ROOT / ".." / "shared" / "data" / "flickr8k"
TOL = 1e-9
STAGES = ("PTB tokenize", "BLEU-1..4", "ROUGE-L", "CIDEr")


def load_flickr8k() -> dict[str, list[str]]:
    """{image: [5 captions]} from Flickr8k.token.txt (one stray id ends in '.1')."""
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


@contextlib.contextmanager
def java_stderr_silenced():
    """Send the Java tokenizer's "tokenized N tokens" lines (on the inherited stderr) to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall time of one call, and its result."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def assert_close(ours: object, theirs: object, what: str) -> None:
    diff = float(np.max(np.abs(np.asarray(ours, float) - np.asarray(theirs, float))))
    assert diff <= TOL, f"{what}: imcap and pycocoevalcap differ by {diff}"


def pycoco_stages(gts_raw: dict, res_raw: dict) -> tuple[list[float], dict]:
    """pycocoevalcap's pipeline (as COCOEvalCap runs it), stage by stage: times and results."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with contextlib.redirect_stdout(io.StringIO()), java_stderr_silenced():  # it prints progress lines
        tokenizer = PTBTokenizer()
        t_tok, (gts, res) = timed(lambda: (tokenizer.tokenize(gts_raw), tokenizer.tokenize(res_raw)))
        t_bleu, bleu = timed(lambda: Bleu(4).compute_score(gts, res, verbose=0))
        t_rouge, rouge = timed(lambda: Rouge().compute_score(gts, res))
        t_cider, cider = timed(lambda: Cider().compute_score(gts, res))
    return [t_tok, t_bleu, t_rouge, t_cider], {"gts": gts, "res": res, "Bleu": bleu, "ROUGE_L": rouge, "CIDEr": cider}


def imcap_stages(gts_raw: dict, res_raw: dict) -> tuple[list[float], dict]:
    """imcap's drop-in classes, stage by stage (each metric encodes the tokenized captions itself)."""
    from imcap.metrics import Bleu, Cider, PTBTokenizer, Rouge

    tokenizer = PTBTokenizer()
    t_tok, (gts, res) = timed(lambda: (tokenizer.tokenize(gts_raw), tokenizer.tokenize(res_raw)))
    t_bleu, bleu = timed(lambda: Bleu(4).compute_score(gts, res))
    t_rouge, rouge = timed(lambda: Rouge().compute_score(gts, res))
    t_cider, cider = timed(lambda: Cider().compute_score(gts, res))
    return [t_tok, t_bleu, t_rouge, t_cider], {"gts": gts, "res": res, "Bleu": bleu, "ROUGE_L": rouge, "CIDEr": cider}


def check_same(ids: list[str], theirs: dict, stages: dict, result) -> None:
    """imcap's tokens and scores (drop-in classes and evaluate()) equal pycocoevalcap's."""
    assert stages["gts"] == theirs["gts"] and stages["res"] == theirs["res"], "tokenizations differ"
    for name in ("Bleu", "ROUGE_L", "CIDEr"):
        assert_close(stages[name][0], theirs[name][0], f"corpus {name}")
        assert_close(stages[name][1], theirs[name][1], f"per-image {name}")
    for k in range(4):
        assert_close(result.corpus[f"Bleu_{k + 1}"], theirs["Bleu"][0][k], f"evaluate() Bleu_{k + 1}")
        assert_close([result.per_image[i][f"Bleu_{k + 1}"] for i in ids], theirs["Bleu"][1][k], "evaluate() BLEU")
    for name in ("ROUGE_L", "CIDEr"):
        assert_close(result.corpus[name], theirs[name][0], f"evaluate() {name}")
        assert_close([result.per_image[i][name] for i in ids], theirs[name][1], f"evaluate() per-image {name}")


def best_median(values: list[float]) -> str:
    return f"{min(values):7.3f} / {statistics.median(values):7.3f}"


def bench_core(data: dict[str, list[str]], n_images: int, rounds: int) -> None:
    from imcap.metrics import PTBTokenizer, evaluate

    ids = list(data)[:n_images]
    refs = {i: data[i][1:] for i in ids}
    preds = {i: data[i][0] for i in ids}
    gts_raw = {i: [{"caption": c} for c in refs[i]] for i in ids}
    res_raw = {i: [{"caption": preds[i]}] for i in ids}

    def imcap_end_to_end():
        return evaluate(refs, preds, ["Bleu", "ROUGE_L", "CIDEr"], tokenizer=PTBTokenizer())

    print(f"{len(ids)} Flickr8k images x (4 refs + caption #0 as the prediction): tokenize + BLEU + ROUGE-L + "
          f"CIDEr; {rounds} interleaved rounds (a fresh tokenizer each time)")
    pycoco: list[list[float]] = []
    ours: list[list[float]] = []
    end_to_end: list[float] = []
    for rnd in range(rounds):
        jobs = ["pycoco", "evaluate", "stages"]
        for job in jobs if rnd % 2 == 0 else jobs[::-1]:
            if job == "pycoco":
                times, theirs = pycoco_stages(gts_raw, res_raw)
                pycoco.append(times)
            elif job == "evaluate":
                t, result = timed(imcap_end_to_end)
                end_to_end.append(t)
            else:
                times, stages = imcap_stages(gts_raw, res_raw)
                ours.append(times)
        check_same(ids, theirs, stages, result)
        print(f"  round {rnd + 1}: pycocoevalcap {sum(pycoco[-1]):.3f} s, imcap evaluate() {end_to_end[-1]:.3f} s "
              f"({sum(pycoco[-1]) / end_to_end[-1]:.1f}x); same numbers (<= {TOL:g})")

    print(f"\nseconds, best / median of {rounds}      {'pycocoevalcap':>17} {'imcap':>17}   speed-up (medians)")
    for s, name in enumerate(STAGES):
        p, i = [r[s] for r in pycoco], [r[s] for r in ours]
        print(f"  {name:<34} {best_median(p)} {best_median(i)}   {statistics.median(p) / statistics.median(i):6.1f}x")
    p_total = [sum(r) for r in pycoco]
    i_total = [sum(r) for r in ours]
    print(f"  {'sum of the stages':<34} {best_median(p_total)} {best_median(i_total)}   "
          f"{statistics.median(p_total) / statistics.median(i_total):6.1f}x")
    print(f"  {'imcap evaluate(), one call':<34} {'':>17} {best_median(end_to_end)}")
    per_round = [p / i for p, i in zip(p_total, end_to_end)]
    print(f"\nend to end (pycocoevalcap's pipeline vs imcap's evaluate()): median {statistics.median(p_total):.3f} s vs "
          f"{statistics.median(end_to_end):.3f} s = {statistics.median(p_total) / statistics.median(end_to_end):.1f}x; "
          f"best {min(p_total):.3f} s vs {min(end_to_end):.3f} s = {min(p_total) / min(end_to_end):.1f}x; "
          f"per round {min(per_round):.1f}x-{max(per_round):.1f}x")


def bench_meteor(data: dict[str, list[str]], n_images: int, rounds: int, warm_calls: int) -> None:
    from pycocoevalcap.meteor.meteor import Meteor as PMeteor

    from imcap.metrics import Meteor, PTBTokenizer

    ids = list(data)[:n_images]
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: data[i][1:] for i in ids})
    res = tokenizer.tokenize({i: [data[i][0]] for i in ids})
    print(f"\nMETEOR on {len(ids)} images")
    # Cold: each wrapper starts its Java process (the same command) and scores once.
    cold: dict[str, float] = {"pycocoevalcap": float("inf"), "imcap": float("inf")}
    values = {}
    for rnd in range(rounds):
        order = [("pycocoevalcap", PMeteor), ("imcap", Meteor)]
        for label, make in order if rnd % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            scorer = make()
            values[label] = scorer.compute_score(gts, res)
            cold[label] = min(cold[label], time.perf_counter() - start)
            if label == "imcap":
                scorer.close()
            del scorer
    assert values["imcap"] == (values["pycocoevalcap"][0], list(values["pycocoevalcap"][1]))
    print(f"  cold (start Java + score), best of {rounds}: pycocoevalcap {cold['pycocoevalcap']:.2f}s, "
          f"imcap {cold['imcap']:.2f}s (ratio {cold['imcap'] / cold['pycocoevalcap']:.2f})")
    # Warm: both wrappers take turns on one running Java process, so only the wrappers differ.
    ours = Meteor()
    theirs = object.__new__(PMeteor)
    theirs.meteor_p, theirs.lock = ours._proc, threading.Lock()
    ours.compute_score(gts, res)
    warm: dict[str, list[float]] = {"pycocoevalcap": [], "imcap": []}
    for _ in range(warm_calls):
        for label, scorer in (("pycocoevalcap", theirs), ("imcap", ours)):
            warm[label].append(timed(lambda: scorer.compute_score(gts, res))[0])
    theirs.meteor_p = _Detached()
    ours.close()
    med = {k: statistics.median(v) for k, v in warm.items()}
    print(f"  warm (same Java process), median of {warm_calls}: pycocoevalcap {med['pycocoevalcap']:.3f}s, "
          f"imcap {med['imcap']:.3f}s (ratio {med['imcap'] / med['pycocoevalcap']:.2f}); METEOR "
          f"{values['imcap'][0]:.6f} from both")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per library (at least 5)")
    parser.add_argument("--meteor-images", type=int, default=1000, help="0 skips METEOR")
    parser.add_argument("--meteor-rounds", type=int, default=2, help="cold METEOR starts per wrapper")
    parser.add_argument("--meteor-warm", type=int, default=5, help="warm METEOR calls per wrapper")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be >= 5")
    if not (FLICKR8K / "Flickr8k.token.txt").is_file():
        sys.exit(f"Flickr8k captions not found under {FLICKR8K}")
    data = load_flickr8k()
    bench_core(data, args.images, args.rounds)
    if args.meteor_images > 0:
        bench_meteor(data, args.meteor_images, args.meteor_rounds, args.meteor_warm)


if __name__ == "__main__":
    main()
