"""CIDEr and training speed of every decoder on the synthetic scenes, from one command.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_models.py --out runs/bench-models [--images 3000] [--iters 1000]

Tasks: captions (`imcap synth`) and questions (`imcap synth --task vqa`, same images, answer -> question).
Every run trains half its iterations, stops, resumes from its checkpoint to the end, and is scored on the
test split with greedy and batched beam-3 decoding. Rows:

    captions   show_tell (image at every step), show_attend_tell (64 px and 128 px input)
    questions  coatt conditioned on the answer, and show_tell / show_attend_tell trained on the same
               questions without it (the answer has to matter)

Right object (questions): the share of colour/shape/size pairs whose generated question names the object
the answer is about ("red" -> "what colour is the circle?" only when the red object is the circle).
Grounding (attention models): the share of generated words naming one object (its colour or shape) whose
attention peak lies inside that object's box: the peak of the map smoothed by a Gaussian of one grid cell
(as the pictures show it), and the raw highest cell. Speed: forward + backward of one training batch per model,
interleaved in rounds in this process (median, and the ratio to show_tell on the same task: questions are
shorter than captions), then the wall-clock seconds of the real runs (noisy on a shared machine). Prints a
Markdown table and writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from imcap.attention_maps import grounding  # noqa: E402
from imcap.captioner import Captioner  # noqa: E402
from imcap.config import TrainOptions  # noqa: E402
from imcap.data.loader import CaptionDataset, PreproData, ResumableSampler, make_loader  # noqa: E402
from imcap.data.prepro import PreproOptions, prepro  # noqa: E402
from imcap.data.synth import generate_scenes  # noqa: E402
from imcap.decoding import DecodeOptions  # noqa: E402
from imcap.evaluate import blind_cider, caption_loss, evaluate_split, teacher_forcing_batch  # noqa: E402
from imcap.models.caption_model import ModelArgs, build_model  # noqa: E402
from imcap.models.coatt import condition_vocab_of  # noqa: E402
from imcap.train import train  # noqa: E402

RUNS = [  # (name, task, model, input side in pixels: 0 is the CNN's own, 64)
    ("show_tell", "captions", "show_tell", 0),
    ("show_attend_tell", "captions", "show_attend_tell", 0),
    ("coatt (answer)", "vqa", "coatt", 0),
    ("show_tell (no answer)", "vqa", "show_tell", 0),
    ("show_attend_tell (no answer)", "vqa", "show_attend_tell", 0),
]


def make_data(out: Path, images: int, seed: int) -> dict[str, Path]:
    """Synthesise and prepro both tasks (kept when already there)."""
    dirs = {}
    for task in ("captions", "vqa"):
        data = out / f"data-{task}"
        if not (data / "images.json").exists():
            generate_scenes(out / f"synth-{task}", num_images=images, seed=seed, task=task, progress=False)
            prepro(PreproOptions(input=str(out / f"synth-{task}"), output_dir=str(data)))
        dirs[task] = data
    return dirs


def options(args, data: Path, run: Path, model: str, image_size: int, max_iters: int, resume: bool) -> TrainOptions:
    """The same training recipe for every decoder (the demo's, with the image at every step for show_tell)."""
    return TrainOptions(
        data=str(data), checkpoint_path=str(run), resume=resume, model=model, cnn="small", image_input="every", image_size=image_size,
        input_encoding_size=args.size, rnn_size=args.size, drop_prob_lm=0.2, learning_rate=1e-3, max_iters=max_iters,
        batch_size=args.batch_size, save_checkpoint_every=max(max_iters, 1), val_images_use=200, seed=args.seed, progress=False,
        learning_rate_decay_start=args.iters // 2, learning_rate_decay_every=max(args.iters // 4, 1), alpha_c=args.alpha_c,
    )


def batch_seconds(args, runs: list[tuple], dirs: dict[str, Path], rounds: int) -> dict[str, float]:
    """Median seconds of forward + backward on one training batch per run, interleaved round by round."""
    torch.manual_seed(0)
    jobs = {}
    for name, task, model, image_size in runs:
        data = PreproData.load(dirs[task])
        margs = ModelArgs(model=model, image_size=image_size, input_encoding_size=args.size, rnn_size=args.size, drop_prob_lm=0.2, image_input="every", vocab_size=data.vocab.vocab_size)
        if model == "coatt":
            margs.condition_field, margs.condition_vocab = "answer", condition_vocab_of(data, "answer")
        net = build_model(margs).train()
        dataset = CaptionDataset(data, data.split_indices("train"), net.encoder.input_size, 5, args.seed)
        images, labels, idx = next(iter(make_loader(dataset, args.batch_size, ResumableSampler(len(dataset), 0))))
        condition = net.condition_for(data, idx.tolist()) if net.conditioned else None
        jobs[name] = (net, images, labels, condition)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for r in range(rounds + 1):  # round 0 warms up
        for name, (net, images, labels, condition) in jobs.items():
            inputs, targets = teacher_forcing_batch(labels)
            t0 = time.perf_counter()
            net.zero_grad()
            caption_loss(net(images, inputs, condition=condition), targets).backward()
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def asks_about_the_right_object(captioner: Captioner, data: PreproData, split: str = "test") -> float:
    """VQA: the share of colour/shape/size pairs whose generated question names the object the answer is about
    (its shape for "what colour is the ...", its colour for "what shape is the ... object", both for size)."""
    from imcap.data.images import image_to_tensor, load_image

    pairs = [i for i in data.split_indices(split) if data.images[i]["extra"]["question_kind"] != "count"]
    right = 0
    for start in range(0, len(pairs), 64):
        chunk = pairs[start : start + 64]
        images = torch.stack([image_to_tensor(load_image(data.image_path(i)), captioner.image_size) for i in chunk])
        cond = data.condition_texts(chunk, "answer") if captioner.model.conditioned else None
        for i, caps in zip(chunk, captioner.caption_tensors(images, DecodeOptions(max_length=data.max_length), condition=cond)):
            extra = data.images[i]["extra"]
            obj, words = extra["objects"][extra["target"]], caps[0][0].split()
            needed = {"colour": [obj["shape"]], "shape": [obj["color"]], "size": [obj["color"], obj["shape"]]}[extra["question_kind"]]
            right += all(w in words for w in needed)
    return right / max(len(pairs), 1)


def score(run: Path, data: PreproData, with_grounding: bool) -> dict:
    """Test-split CIDEr with greedy and beam-3 decoding (and grounding) of a run's last checkpoint."""
    captioner = Captioner.load(run / "last.pt", "cpu")
    out = {}
    for key, opts in (("greedy", DecodeOptions(max_length=data.max_length)), ("beam3", DecodeOptions(beam_size=3, max_length=data.max_length))):
        out[key] = evaluate_split(captioner.model, data, "test", opts, progress=False)["metrics"]["CIDEr"]
    if data.images[0]["extra"].get("question_kind"):
        out["right_object"] = asks_about_the_right_object(captioner, data)
    if with_grounding and captioner.has_attention:
        found = grounding(captioner, data, data.split_indices("test"), DecodeOptions(max_length=data.max_length))
        raw = grounding(captioner, data, data.split_indices("test"), DecodeOptions(max_length=data.max_length), sigma=0.0)
        out["grounding"], out["grounding_raw"], out["grounding_chance"], out["grounded_words"] = found.rate, raw.rate, found.chance_rate, found.words
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-models")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--iters", type=int, default=1000, help="training iterations per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="word/image encoding and RNN size")
    parser.add_argument("--alpha-c", type=float, default=0.0, help="attention regulariser of the attention models")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--with-128px", action="store_true", help="also show_attend_tell on 128 px input (4x the CNN and attention cost)")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME", help="run only the rows whose name starts with one of these (show_tell, coatt, ...)")
    args = parser.parse_args()
    runs = RUNS[:2] + [("show_attend_tell, 128 px input", "captions", "show_attend_tell", 128)] + RUNS[2:] if args.with_128px else RUNS
    if args.only:
        runs = [r for r in runs if any(r[0].startswith(name) for name in args.only)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} images, {args.iters} iterations of {args.batch_size} images per run")
    dirs = make_data(out, args.images, args.seed)
    speed = batch_seconds(args, runs, dirs, args.rounds)
    baseline = {task: speed[name] for name, task, model, _ in reversed(runs) if model == "show_tell"}  # show_tell on the same task
    baseline = {task: baseline.get(task, math.nan) for _, task, _, _ in runs}
    rows = []
    for name, task, model, image_size in runs:
        run = out / "".join(c if c.isalnum() else "_" for c in name)
        data = PreproData.load(dirs[task])
        timing = run / "bench_wall_s.json"
        if not timing.exists():  # a finished run is scored again, not trained again
            t0 = time.time()
            if not (run / "last.pt").exists():
                train(options(args, dirs[task], run, model, image_size, args.iters // 2, resume=False))
            train(options(args, dirs[task], run, model, image_size, args.iters, resume=True))  # checkpoint -> resume -> the end
            timing.write_text(json.dumps(time.time() - t0))
        wall = json.loads(timing.read_text())
        row = {"name": name, "task": task, "seconds_per_batch": speed[name], "ratio_to_show_tell": speed[name] / baseline[task], "wall_s": wall, **score(run, data, True)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    blind = {task: blind_cider(PreproData.load(d), "test")[1] for task, d in dirs.items() if any(r["task"] == task for r in rows)}
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "blind": blind}, indent=2))
    print("\n| task | model | CIDEr greedy | CIDEr beam 3 | right object | grounding (smoothed / raw peak) | s / batch (fwd+bwd) | vs show_tell | training wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = f"{100 * r['grounding']:.0f}% / {100 * r['grounding_raw']:.0f}% (chance {100 * r['grounding_chance']:.0f}%)" if "grounding" in r else "-"
        obj = f"{100 * r['right_object']:.0f}%" if "right_object" in r else "-"
        print(f"| {r['task']} | {r['name']} | {r['greedy']:.3f} | {r['beam3']:.3f} | {obj} | {g} | {r['seconds_per_batch']:.3f} | {r['ratio_to_show_tell']:.2f}x | {r['wall_s']:.0f} |")
    for task, value in blind.items():
        print(f"| {task} | blind baseline (most frequent training caption) | {value:.3f} | | | | | | |")


if __name__ == "__main__":
    main()
