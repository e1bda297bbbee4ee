"""`imcap demo`: synth -> prepro -> train the small CNN + LSTM -> eval -> caption -> report."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from imcap.checkpoint import LAST
from imcap.files import atomic_write_json

log = logging.getLogger(__name__)

DEMO_THREADS = 2  # fixed, so the demo computes the same numbers on any machine with this torch build


def run_demo(out: str | Path = "runs/demo", images: int = 3000, max_iters: int = 1500, seed: int = 123, progress: bool = True) -> dict:
    """Run the whole pipeline on the synthetic scenes; return the test metrics (also in OUT/metrics.json).

    Runs with DEMO_THREADS torch threads and deterministic algorithms, so the numbers do not depend on the machine's core count.
    """

    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(DEMO_THREADS)  # the reduction order of CPU kernels depends on the thread count
    torch.use_deterministic_algorithms(True)
    try:
        return _run_demo(Path(out), images, max_iters, seed, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _run_demo(out: Path, images: int, max_iters: int, seed: int, progress: bool) -> dict:
    from imcap.captioner import Captioner, caption_paths
    from imcap.config import EvalOptions, TrainOptions
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes
    from imcap.decoding import DecodeOptions
    from imcap.evaluate import run_eval
    from imcap.train import train

    t0 = time.time()
    synth_dir, data_dir, run_dir = out / "synth", out / "data", out / "run"
    log.info("[1/5] synthetic scenes -> %s", synth_dir)
    generate_scenes(synth_dir, num_images=images, seed=seed)
    log.info("[2/5] prepro -> %s", data_dir)
    prepro(PreproOptions(input=str(synth_dir), output_dir=str(data_dir)))
    log.info("[3/5] train small CNN + LSTM -> %s", run_dir)
    opts = TrainOptions(
        data=str(data_dir), checkpoint_path=str(run_dir), resume=(run_dir / LAST).exists(), cnn="small", image_input="every",
        input_encoding_size=256, rnn_size=256, drop_prob_lm=0.2, learning_rate=1e-3, max_iters=max_iters,
        save_checkpoint_every=500, val_images_use=300, language_eval=True, seed=seed, progress=progress,
        learning_rate_decay_start=max_iters // 2, learning_rate_decay_every=max_iters // 4,
    )
    train(opts)
    log.info("[4/5] evaluate on the test split")
    metrics = run_eval(EvalOptions(model=str(run_dir), split="test", out=str(out), progress=progress))
    log.info("[5/5] caption a few test images")
    captioner = Captioner.load(run_dir)
    test_images = sorted((synth_dir / "images").glob("*.png"))[-4:]
    results, _ = caption_paths(captioner, [str(p) for p in test_images], DecodeOptions(beam_size=3), progress=False)
    for r in results:
        log.info("  %s: %s", Path(r["file"]).name, r["caption"])
    metrics["demo_seconds"] = round(time.time() - t0, 1)
    metrics["examples"] = results
    atomic_write_json(out / "metrics.json", metrics)
    log.info(
        "done in %.0f s: CIDEr %.3f (blind baseline %.3f)\n  metrics: %s\n  report:  %s\n  model:   %s",
        metrics["demo_seconds"], metrics.get("CIDEr", float("nan")), metrics["CIDEr_blind"], out / "metrics.json", out / "report.html", run_dir,
    )
    return json.loads((out / "metrics.json").read_text())
