"""The decoders' results table from one command: XE and SCST test CIDEr at an equal wall-clock budget.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_decoders.py --out runs/bench-decoders --budget-s 180

For the normal and the hard synthetic scenes (`imcap synth [--difficulty hard]`, 3000 images, seed 123, 64 px)
and each decoder (show_tell, show_attend_tell, updown, transformer; all with the small CNN trained with them):

1. speed: short cross-entropy runs of every decoder, interleaved in rounds (median per decoder), estimate
   how many iterations fill the budget; that count sets the learning-rate schedule (halving from mid-run,
   the transformer's warm-up) and spaces the validations;
2. XE: train from scratch for exactly --budget-s seconds of training (`imcap train --max-train-seconds`:
   every decoder gets the same time, not the same iterations; validation is not counted), validating about
   4 times at even spacing and at the stop (greedy CIDEr on the 300 validation images; best.pt keeps the
   best, as neuraltalk2 selects its checkpoint);
3. score that checkpoint on the test split (300 images): CIDEr with greedy decoding and with beam 3;
4. SCST: continue from it (`--start-from XE --self-critical-after 0`, --sc-learning-rate, --sc-baseline) for
   --sc-budget-s seconds of training (schedule from speeds measured the same way), validate twice and at
   the stop, and score the best SCST checkpoint, greedy and beam 3.

Training images/s is the XE run's iterations divided by its training seconds, times the batch size (16
images, 5 captions each). The table also shows each run's iterations and training seconds and each
data set's reference points (the blind caption; an oracle caption written from the true scene). It ends
with the bars of issue 16. OUT/results.json keeps everything; a rerun reuses finished runs and measured
speeds (delete OUT/<difficulty>/<decoder>/ to redo one).

`--jobs 2` runs the two data sets side by side, one process each with `--threads` torch threads (default:
the cores divided by the jobs), then prints the table of both; decoders are only compared within a data
set, and each process measures its decoders' speeds under the same load it trains them in.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from imcap.config import EvalOptions, TrainOptions  # noqa: E402
from imcap.data.prepro import PreproOptions, prepro  # noqa: E402
from imcap.data.synth import generate_scenes  # noqa: E402
from imcap.errors import ImcapError  # noqa: E402
from imcap.evaluate import run_eval  # noqa: E402
from imcap.files import atomic_write_json, atomic_write_text  # noqa: E402
from imcap.metrics.cider import Cider  # noqa: E402
from imcap.train import train  # noqa: E402

DECODERS = ("show_tell", "show_attend_tell", "updown", "transformer")
DIFFICULTIES = ("normal", "hard")
BATCH = 16
ITERS_CAP = 2  # a timed run stops at this many times its expected iterations, whatever time is left
VALIDATIONS = 4  # per XE run (SCST: 2); test scores are those of the checkpoint with the best validation CIDEr
# Per-decoder hyperparameters. The RNN decoders as imcap's demo: embeddings and features of 256, LSTMs of
# 256 units, dropout 0.2, Adam 1e-3 halved from mid-run; updown's two LSTMs have 192 units, so that its
# training step costs about one show_attend_tell step (at 256 its decoder costs 1.38x; docs/models.md has
# the runs that chose it). The transformer: 2 encoder + 2 decoder layers of width 128 (4 heads, feed-forward 512), the noam
# schedule (warm-up over --warmup-share of its iterations to a 1e-3 peak, then 1/sqrt decay), Adam betas
# (0.9, 0.98) and gradient-norm clipping at 1.
RECIPES: dict[str, dict] = {
    "show_tell": dict(model="show_tell", image_input="every", input_encoding_size=256, rnn_size=256, drop_prob_lm=0.2, learning_rate=1e-3),
    "show_attend_tell": dict(model="show_attend_tell", input_encoding_size=256, rnn_size=256, drop_prob_lm=0.2, learning_rate=1e-3),
    "updown": dict(model="updown", input_encoding_size=256, rnn_size=192, drop_prob_lm=0.2, learning_rate=1e-3),
    "transformer": dict(model="transformer", num_layers=2, d_model=128, num_heads=4, ff_size=512, transformer_dropout=0.1,
                        learning_rate=1e-3, lr_schedule="noam", optim_alpha=0.9, optim_beta=0.98, grad_clip=1.0, grad_clip_mode="norm"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare_data(out: Path, difficulty: str, images: int, seed: int) -> Path:
    """Synthesise and prepro one data set (once); return the prepro directory."""
    data = out / difficulty / "data"
    if not (data / "images.json").exists():
        generate_scenes(out / difficulty / "synth", num_images=images, seed=seed, difficulty=difficulty, progress=False)
        prepro(PreproOptions(input=str(out / difficulty / "synth"), output_dir=str(data)))
    return data


def train_options(data: Path, run: Path, recipe: dict, iters: int, seed: int, validations: int = VALIDATIONS, seconds: float = -1.0, **extra) -> TrainOptions:
    """TrainOptions of one run: the decoder's recipe, the small CNN at 64 px, `validations` evenly spaced validations
    (greedy CIDEr on the whole validation split; best.pt keeps the best).

    The run trains `iters` iterations, or, with `seconds`, exactly that many seconds of training
    (`--max-train-seconds`: validation not counted); `iters` is then the expected count, which spaces the
    validations (one more comes at the stop), capped at ITERS_CAP times that.
    """
    opts = dict(
        data=str(data), checkpoint_path=str(run), cnn="small", batch_size=BATCH, seq_per_img=5, max_iters=iters if seconds < 0 else ITERS_CAP * iters,
        max_train_seconds=seconds, save_checkpoint_every=max(1, -(-iters // validations)), val_images_use=-1, language_eval=True,
        losses_log_every=1, seed=seed, progress=False,
    )
    opts.update(recipe)
    opts.update(extra)
    return TrainOptions(**opts)


def trained(run: Path) -> tuple[int, float]:
    """(iterations, seconds of training, validation excluded) of a finished run, from its history's last logged step."""
    last = json.loads((run / "history.json").read_text())["train_loss"][-1]
    return last["iteration"], last["train_time"]


def finished(run: Path, iters: int, seconds: float) -> bool:
    """Whether `run` already trained its budget of `seconds` (or its cap of ITERS_CAP x `iters` iterations): a rerun after a crash in scoring skips it."""
    if not ((run / "last.pt").exists() and (run / "history.json").exists()):
        return False
    done_iters, done_seconds = trained(run)
    return done_seconds >= seconds or done_iters >= ITERS_CAP * iters


def speed(run: Path, skip: int) -> float:
    """Iterations per second of a run after its first `skip` iterations (caches, first batches)."""
    steps = [e for e in json.loads((run / "history.json").read_text())["train_loss"] if e["iteration"] >= skip]
    (i0, t0), (i1, t1) = (steps[0]["iteration"], steps[0]["train_time"]), (steps[-1]["iteration"], steps[-1]["train_time"])
    return (i1 - i0) / max(t1 - t0, 1e-6)


def measure_speeds(jobs: dict[str, tuple[Path, dict]], scratch: Path, iters: int, rounds: int, seed: int, cache: dict[str, Path]) -> tuple[dict[str, float], dict[str, str]]:
    """Iterations/s of each job {key: (data, train options)}: short runs interleaved in `rounds` rounds, median per job.

    Interleaving makes the speeds comparable on a shared machine: a busy minute slows every decoder's
    runs alike. Returns (speeds, errors of the jobs that failed); each job's speed is cached in the JSON
    file `cache[key]`.
    """
    known = {k: json.loads(cache[k].read_text())["iterations_per_s"] for k in jobs if cache[k].exists()}
    samples: dict[str, list[float]] = {k: [] for k in jobs if k not in known}
    errors: dict[str, str] = {}
    for r in range(rounds):
        for key in [k for k in samples if k not in errors]:
            data, extra = jobs[key]
            run = scratch / key.replace("/", "-")
            shutil.rmtree(run, ignore_errors=True)
            try:
                train(train_options(data, run, extra, iters, seed, validations=1, val_images_use=16, language_eval=False))
            except (ImcapError, RuntimeError, ValueError) as exc:  # a decoder that fails must not stop the others
                errors[key] = str(exc).strip().splitlines()[0][:120]
                log(f"speed {key} failed: {errors[key]}")
                continue
            samples[key].append(speed(run, skip=max(2, iters // 4)))
            shutil.rmtree(run)
            log(f"speed {key} round {r + 1}: {samples[key][-1]:.2f} it/s")
    for key, values in samples.items():
        if key not in errors:
            known[key] = statistics.median(values)
            atomic_write_json(cache[key], {"iterations_per_s": known[key], "samples": values})
    return {k: known[k] for k in jobs if k in known}, errors


def cider(checkpoint: Path, beam: int, out: Path) -> tuple[float, float]:
    """(test CIDEr, blind-caption CIDEr) of a checkpoint with beam size `beam` (1: greedy)."""
    metrics = run_eval(EvalOptions(model=str(checkpoint), split="test", beam_size=beam, out=str(out), html_images=0, progress=False))
    return metrics["CIDEr"], metrics["CIDEr_blind"]


def xe_recipe(name: str, iters: int, warmup_share: float) -> dict:
    """The decoder's recipe with its learning-rate schedule fitted to `iters` iterations."""
    recipe = dict(RECIPES[name])
    if recipe.get("lr_schedule") == "noam":
        recipe["warmup_steps"] = max(1, round(iters * warmup_share))
    else:
        recipe.update(learning_rate_decay_start=iters // 2, learning_rate_decay_every=max(iters // 4, 1))
    return recipe


def run_xe(root: Path, data: Path, name: str, rate: float, args: argparse.Namespace) -> dict:
    """Train one decoder for --budget-s seconds' worth of iterations and score it; return its row (cached)."""
    result_file = root / "xe.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    iters = max(10, round(rate * args.budget_s))  # expected: sets the learning-rate schedule and the validation spacing
    recipe = xe_recipe(name, iters, args.warmup_share)
    log(f"{root.parent.name}/{name}: {rate:.2f} it/s -> about {iters} XE iterations in {args.budget_s:g} s")
    run = root / "xe"
    if not finished(run, iters, args.budget_s):
        shutil.rmtree(run, ignore_errors=True)
        train(train_options(data, run, recipe, iters, args.seed, seconds=args.budget_s))
    xe_iters, xe_seconds = trained(run)
    row = {"decoder": name, "difficulty": root.parent.name, "xe_iters": xe_iters, "xe_seconds": xe_seconds,
           "images_per_s": xe_iters / xe_seconds * BATCH, "recipe": recipe}
    row["xe_greedy"], row["blind"] = cider(run / "best.pt", 1, root / "eval-xe-greedy")
    row["xe_beam3"], _ = cider(run / "best.pt", 3, root / "eval-xe-beam3")
    log(f"{root.parent.name}/{name}: XE CIDEr greedy {row['xe_greedy']:.3f}, beam 3 {row['xe_beam3']:.3f} ({xe_seconds:.0f} s)")
    atomic_write_json(result_file, row)
    return row


def sc_options(root: Path, args: argparse.Namespace) -> dict:
    """The options that turn a run into SCST from the decoder's XE model."""
    return dict(start_from=str(root / "xe" / "best.pt"), self_critical_after=0, sc_learning_rate=args.sc_learning_rate, sc_sample_n=5, sc_baseline=args.sc_baseline)


def run_scst(root: Path, data: Path, row: dict, rate: float, args: argparse.Namespace) -> dict:
    """SCST from the XE model for --sc-budget-s seconds' worth of iterations; add its scores to `row` (cached)."""
    result_file = root / "scst.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    iters = max(5, round(rate * args.sc_budget_s))
    log(f"{root.parent.name}/{row['decoder']}: {rate:.2f} SCST it/s -> about {iters} SCST iterations in {args.sc_budget_s:g} s")
    run = root / "scst"
    if not finished(run, iters, args.sc_budget_s):
        shutil.rmtree(run, ignore_errors=True)
        train(train_options(data, run, dict(row["recipe"], **sc_options(root, args)), iters, args.seed, validations=2, seconds=args.sc_budget_s))
    row = dict(row)
    row["sc_iters"], row["sc_seconds"] = trained(run)
    row["sc_images_per_s"] = row["sc_iters"] / row["sc_seconds"] * BATCH
    row["sc_greedy"], _ = cider(run / "best.pt", 1, root / "eval-sc-greedy")
    row["sc_beam3"], _ = cider(run / "best.pt", 3, root / "eval-sc-beam3")
    log(f"{root.parent.name}/{row['decoder']}: SCST CIDEr greedy {row['sc_greedy']:.3f}, beam 3 {row['sc_beam3']:.3f}")
    atomic_write_json(result_file, row)
    return row


def oracle_references(data_dir: Path) -> dict[str, float]:
    """CIDEr of captions written from the true scenes of the test split: what a perfect model could reach."""
    from imcap.data.synth_hard import HardObject, inventory_captions
    from imcap.data.vocab import tokenize

    records = [im for im in json.loads((data_dir.parent / "synth" / "captions.json").read_text())["images"] if im["split"] == "test"]
    refs = {im["imgid"]: [" ".join(s["tokens"]) for s in im["sentences"]] for im in records}
    loo = [Cider().compute_score({k: v[:i] + v[i + 1:] for k, v in refs.items()}, {k: [v[i]] for k, v in refs.items()})[0] for i in range(5)]
    out = {"one reference against the other four": sum(loo) / len(loo)}
    if "texture" in records[0]["objects"][0]:  # hard scenes
        guesses = {im["imgid"]: [" ".join(tokenize(inventory_captions(tuple(map(HardObject.from_dict, im["objects"])))[0]))] for im in records}
        out["oracle inventory caption"] = Cider().compute_score(refs, guesses)[0]
    return out


def fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def table(rows: list[dict]) -> str:
    """The Markdown results table."""
    lines = [
        "| scenes | decoder | XE CIDEr greedy | XE beam 3 | SCST greedy | SCST beam 3 | train img/s | XE iters (s) | SCST iters (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['difficulty']} | {r['decoder']} | failed: {r['error']} | | | | | | |")
            continue
        sc = f"{r['sc_iters']} ({r['sc_seconds']:.0f})" if "sc_iters" in r else "-"
        lines.append(f"| {r['difficulty']} | {r['decoder']} | {fmt(r['xe_greedy'])} | {fmt(r['xe_beam3'])} | {fmt(r.get('sc_greedy'))} | "
                     f"{fmt(r.get('sc_beam3'))} | {r['images_per_s']:.0f} | {r['xe_iters']} ({r['xe_seconds']:.0f}) | {sc} |")
    return "\n".join(lines)


def bars(rows: list[dict]) -> list[tuple[str, bool | None]]:
    """Issue 16's bars: (statement, met?) with None where a run is missing."""
    by = {(r["difficulty"], r["decoder"]): r for r in rows if "error" not in r}
    hard = {name: by.get(("hard", name)) for name in DECODERS}
    sat, updown, trans = hard["show_attend_tell"], hard["updown"], hard["transformer"]

    def check(ok) -> bool | None:
        try:
            return bool(ok())
        except (TypeError, KeyError):
            return None

    out = [
        ("hard: updown XE CIDEr (greedy) > show_attend_tell's", check(lambda: updown["xe_greedy"] > sat["xe_greedy"])),
        ("hard: transformer XE CIDEr (greedy) >= 98% of show_attend_tell's", check(lambda: trans["xe_greedy"] >= 0.98 * sat["xe_greedy"])),
        ("hard: transformer SCST CIDEr (greedy) > show_attend_tell's SCST CIDEr", check(lambda: trans["sc_greedy"] > sat["sc_greedy"])),
    ]
    for (difficulty, name), r in sorted(by.items()):
        if "sc_greedy" in r:
            out.append((f"{difficulty}: SCST raises {name}'s CIDEr (greedy {r['xe_greedy']:.3f} -> {r['sc_greedy']:.3f})", r["sc_greedy"] > r["xe_greedy"]))
    return out


def run_side_by_side(out: Path, difficulties: list[str], jobs: int, threads: int) -> None:
    """Run this script once per data set in `jobs` parallel processes of `threads` torch threads each (logs: OUT/<difficulty>.log)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending, running = list(difficulties), {}
    out.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < jobs:
            d = pending.pop(0)
            cmd = [sys.executable, __file__, *sys.argv[1:], "--difficulties", d, "--jobs", "1", "--threads", str(threads)]
            log(f"{d}: started in its own process ({threads} torch threads), log {out / f'{d}.log'}")
            with open(out / f"{d}.log", "a") as handle:
                running[d] = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        time.sleep(2)
        for d, proc in list(running.items()):
            if proc.poll() is not None:
                del running[d]
                if proc.returncode:
                    raise SystemExit(f"bench_decoders: the {d} process failed (exit {proc.returncode}); see {out / f'{d}.log'}")
                log(f"{d}: done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-decoders")
    parser.add_argument("--budget-s", type=float, default=180.0, help="XE wall-clock seconds per decoder and data set")
    parser.add_argument("--sc-budget-s", type=float, default=-1.0, help="SCST seconds (default: half of --budget-s; 0: no SCST)")
    parser.add_argument("--sc-learning-rate", type=float, default=5e-5, help="SCST learning rate")
    parser.add_argument("--sc-baseline", default="mean", choices=("greedy", "mean"),
                        help="SCST baseline (mean: the other samples' mean reward; steadier than greedy for briefly trained models)")
    parser.add_argument("--warmup-share", type=float, default=0.15, help="transformer: warm-up iterations as a share of its XE iterations")
    parser.add_argument("--calibrate-iters", type=int, default=20, help="XE iterations of each speed measurement")
    parser.add_argument("--sc-calibrate-iters", type=int, default=8, help="SCST iterations of each speed measurement")
    parser.add_argument("--calibrate-rounds", type=int, default=2, help="interleaved rounds of speed measurements (median)")
    parser.add_argument("--decoders", default=",".join(DECODERS), help="comma-separated subset of " + ", ".join(DECODERS))
    parser.add_argument("--difficulties", default=",".join(DIFFICULTIES), help="comma-separated: normal, hard")
    parser.add_argument("--jobs", type=int, default=1, help="data sets trained side by side, one process each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (default: cores / jobs)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    if not (math.isfinite(args.budget_s) and args.budget_s > 0) or not (math.isfinite(args.sc_budget_s) and (args.sc_budget_s >= 0 or args.sc_budget_s == -1)):
        parser.error(f"--budget-s must be a number of seconds > 0 and --sc-budget-s >= 0 (0: no SCST; -1: half of --budget-s) "
                     f"(got {args.budget_s:g} and {args.sc_budget_s:g})")
    if args.sc_budget_s < 0:
        args.sc_budget_s = args.budget_s / 2
    decoders = [d for d in args.decoders.split(",") if d]
    difficulties = [d for d in args.difficulties.split(",") if d]
    unknown = set(decoders) - set(DECODERS) | set(difficulties) - set(DIFFICULTIES)
    if unknown:
        parser.error(f"unknown decoder or difficulty: {', '.join(sorted(unknown))}")
    if args.jobs < 1 or args.threads < 0:
        parser.error("--jobs must be >= 1 and --threads >= 0 (0: the cores divided by --jobs)")

    out = Path(args.out)
    started = time.time()
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    torch.set_num_threads(threads)
    if args.jobs > 1 and len(difficulties) > 1:
        run_side_by_side(out, difficulties, args.jobs, threads)  # every run is then cached: the pass below only reads and reports
    data = {d: prepare_data(out, d, args.images, args.seed) for d in difficulties}
    references = {d: oracle_references(data[d]) for d in difficulties}
    jobs = [(d, name) for d in difficulties for name in decoders]
    done: dict[tuple[str, str], dict] = {}  # (difficulty, decoder) -> its row
    failures = (ImcapError, RuntimeError, ValueError)  # a decoder that fails must not stop the others

    def first_line(message: str) -> str:
        return message.strip().splitlines()[0][:120]

    xe_speed, errors = measure_speeds({f"{d}/{n}": (data[d], xe_recipe(n, args.calibrate_iters, 1.0)) for d, n in jobs},
                                      out / "scratch", args.calibrate_iters, args.calibrate_rounds, args.seed, {f"{d}/{n}": out / d / n / "speed-xe.json" for d, n in jobs})
    for d, n in jobs:
        try:
            if f"{d}/{n}" in errors:
                raise RuntimeError(errors[f"{d}/{n}"])
            done[(d, n)] = run_xe(out / d / n, data[d], n, xe_speed[f"{d}/{n}"], args)
        except failures as exc:
            log(f"{d}/{n} failed: {first_line(str(exc))}")
            done[(d, n)] = {"difficulty": d, "decoder": n, "error": first_line(str(exc))}
    if args.sc_budget_s > 0:
        ready = [job for job in jobs if "error" not in done[job]]
        sc_speed, errors = measure_speeds({f"{d}/{n}": (data[d], dict(done[(d, n)]["recipe"], **sc_options(out / d / n, args))) for d, n in ready},
                                          out / "scratch", args.sc_calibrate_iters, args.calibrate_rounds, args.seed, {f"{d}/{n}": out / d / n / "speed-scst.json" for d, n in ready})
        for d, n in ready:
            try:
                if f"{d}/{n}" in errors:
                    raise RuntimeError(errors[f"{d}/{n}"])
                done[(d, n)] = run_scst(out / d / n, data[d], done[(d, n)], sc_speed[f"{d}/{n}"], args)
            except failures as exc:
                log(f"{d}/{n} SCST failed: {first_line(str(exc))}")
                done[(d, n)] = dict(done[(d, n)], sc_error=first_line(str(exc)))
    rows = [done[job] for job in jobs]
    blind = {r["difficulty"]: r["blind"] for r in rows if "blind" in r}
    command = "python benchmarks/bench_decoders.py " + " ".join(sys.argv[1:])
    header = (f"{command}\n{datetime.date.today()}, {platform.machine()} CPU, {torch.get_num_threads()} torch threads per process, {max(1, min(args.jobs, len(difficulties)))} data set(s) at a time, "
              f"XE budget {args.budget_s:.0f} s, SCST budget {args.sc_budget_s:.0f} s (SCST lr {args.sc_learning_rate:g}, {args.sc_baseline} baseline) per decoder and data set; "
              f"total {time.time() - started:.0f} s")
    lines = [header, "", table(rows), "", "Reference points (test CIDEr):"]
    for difficulty, refs in references.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in refs.items())
        lines.append(f"- {difficulty}: blind caption {fmt(blind.get(difficulty))}, {shown}")
    lines += ["", "Bars:"] + [f"- [{'met' if ok else 'NOT met' if ok is False else 'no data'}] {text}" for text, ok in bars(rows)]
    report = "\n".join(lines)
    print(report)
    atomic_write_text(out / "results.md", report + "\n")
    atomic_write_json(out / "results.json", {"command": command, "args": vars(args), "rows": rows, "references": references})


if __name__ == "__main__":
    main()
