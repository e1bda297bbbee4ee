"""`imcap search train`: the GNA-RNN training loop (BCE on matching / mismatched pairs) and dual-encoder InfoNCE.

Options and defaults follow the GNA-RNN train.lua seed (adam 4e-4, elementwise grad clip 5, --neg-time 3,
validation every 100 iterations on 100 images, checkpoint on the best validation top-1). Batches are a pure
function of (seed, epoch, position, iteration), so `--resume` continues exactly where a run stopped.
"""
from __future__ import annotations

import logging
import math
import random
import time
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imcap.checkpoint import BEST, LAST, atomic_write_json, load_checkpoint, open_run, rng_state, save_checkpoint, set_rng_state
from imcap.data.loader import ResumableSampler
from imcap.errors import ImcapError
from imcap.search.data import ImageCache, SearchData, trim
from imcap.search.evaluate import evaluate_search
from imcap.search.models import MODELS, DualEncoder, SearchModel, SearchModelArgs, build_search_model
from imcap.search.options import SearchTrainOptions

log = logging.getLogger(__name__)


RESUME_OVERRIDES = ("max_iters", "max_epochs", "device", "progress", "save_checkpoint_every", "resume", "image_cache_mb")


def _optimizer(name: str, params: list, lr: float, alpha: float, beta: float, eps: float, wd: float = 0.0) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(alpha, beta), eps=eps, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=alpha if name == "sgdm" else 0.0, weight_decay=wd)


def _decayed(base: float, iteration: int, start: int, every: int) -> float:
    return base if start < 0 or iteration <= start else base * 0.5 ** ((iteration - start) / every)


def init_encoder_from(model: SearchModel, path: str | Path) -> None:
    """Copy the image encoder of another imcap checkpoint (search or captioning) into `model`: the CNN, and its head when the sizes match."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict") if ckpt.get("kind") == "search" else ckpt.get("model")
    if not isinstance(state, dict):
        raise ImcapError(f"{path}: checkpoint holds no model weights")
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    backbone = {k[len("backbone."):]: v for k, v in encoder.items() if k.startswith("backbone.")}
    try:
        model.encoder.backbone.load_state_dict(backbone)
    except RuntimeError as exc:
        args = model.args
        raise ImcapError(f"{path}: its CNN does not fit --cnn {args.cnn} --cnn-width {args.cnn_width} "
                         f"({str(exc).splitlines()[-1].strip()[:100]})") from None
    head = {k[len("head."):]: v for k, v in encoder.items() if k.startswith("head.")}
    mine = model.encoder.head.state_dict()
    if head.keys() == mine.keys() and all(mine[k].shape == v.shape for k, v in head.items()):
        model.encoder.head.load_state_dict(head)
    log.info("image encoder initialised from %s%s", path, "" if head.keys() == mine.keys() else " (CNN only)")


class SearchTrainer:
    """One search training run: data, model, optimisers, position in the data, history."""

    def __init__(self, opts: SearchTrainOptions) -> None:
        from imcap.captioner import pick_device

        self.run = Path(opts.checkpoint_path)
        ckpt = open_run(self.run, opts.resume)
        if ckpt is not None:
            if ckpt.get("kind") != "search":
                raise ImcapError(f"{self.run / LAST}: not a search run")
            names = {f.name for f in fields(SearchTrainOptions)}
            saved = {k: v for k, v in ckpt["options"].items() if k in names}
            opts = SearchTrainOptions(**{**saved, **{k: getattr(opts, k) for k in RESUME_OVERRIDES}})
        self.opts = opts
        if not opts.data:
            raise ImcapError("--data is required (a prepro folder, a caption file or folder, or CUHK-PEDES reid_raw.json)")
        if opts.model not in MODELS:
            raise ImcapError(f"--model {opts.model}: choose one of {', '.join(MODELS)}")
        if opts.batch_size < 2:
            raise ImcapError(f"--batch-size must be at least 2, got {opts.batch_size}")
        if opts.model == "gna" and opts.neg_time < 1:
            raise ImcapError(f"--neg-time must be at least 1, got {opts.neg_time}")
        self.data = SearchData.load(opts.data, opts.format or None, opts.image_root or None, opts.max_length, opts.word_count_threshold)
        self.device = pick_device(opts.device)
        torch.manual_seed(opts.seed)
        random.seed(opts.seed)
        np.random.seed(opts.seed % 2**32)
        if ckpt is not None:
            self.model = build_search_model(SearchModelArgs.from_dict(ckpt["model_args"]), cnn_weights=None)
        else:
            args = SearchModelArgs(opts.model, len(self.data.vocab), opts.cnn, opts.cnn_width, opts.image_size, opts.input_encoding_size,
                                   opts.rnn_size, opts.units, opts.embed_size, opts.rnn_type, opts.drop_prob_lm)
            weights = None if opts.cnn_weights in ("", "none") or opts.cnn_from else opts.cnn_weights
            self.model = build_search_model(args, weights)
            if opts.cnn_from:
                init_encoder_from(self.model, opts.cnn_from)
        if self.model.args.vocab_size != len(self.data.vocab):
            raise ImcapError(f"{opts.data}: vocabulary ({len(self.data.vocab)}) differs from the run's ({self.model.args.vocab_size})")
        self.model.to(self.device)
        backbone = set(map(id, self.model.encoder.backbone.parameters()))
        self.cnn_params = list(self.model.encoder.backbone.parameters())
        self.other_params = [p for p in self.model.parameters() if id(p) not in backbone]
        self.cnn_from_scratch = not self.model.encoder.pretrained
        self.optimizer = _optimizer(opts.optim, self.other_params, opts.learning_rate, opts.optim_alpha, opts.optim_beta, opts.optim_epsilon)
        cnn_lr = opts.learning_rate if self.cnn_from_scratch else opts.cnn_learning_rate
        self.cnn_optimizer = _optimizer(opts.optim, self.cnn_params, cnn_lr, opts.optim_alpha, opts.optim_beta, opts.optim_epsilon, opts.cnn_weight_decay)
        self.train_images = self.data.split_images("train")
        if len(self.train_images) < 2:
            raise ImcapError(f"{opts.data}: the train split needs at least 2 images, has {len(self.train_images)}")
        if len(np.unique(self.data.identity[self.train_images])) < 2:
            raise ImcapError(f"{opts.data}: the train split needs images of at least 2 identities")
        self.train_captions = self.data.captions_of_images(self.train_images)
        counts = np.bincount(self.data.caption_image, minlength=len(self.data.images))
        self.caption_start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # captions of an image are contiguous
        self.caption_count = counts
        self.cache = ImageCache(self.data, self.model.encoder.input_size, opts.image_cache_mb << 20)
        self.iteration, self.epoch, self.position = 0, 0, 0
        self.history: dict = {"train_loss": [], "val": [], "best": None}
        self.best_score, self.best_iteration = -math.inf, -1
        self.run_id = uuid.uuid4().hex
        self.saved_at = -1
        if ckpt is not None:
            self.model.load_state_dict(ckpt["state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.cnn_optimizer.load_state_dict(ckpt["cnn_optimizer"])
            self.iteration, self.epoch, self.position = ckpt["iteration"], ckpt["epoch"], ckpt["position"]
            self.history, self.run_id = ckpt["history"], ckpt["run_id"]
            self.best_score, self.best_iteration = ckpt["best_score"], ckpt["best_iteration"]
            self.saved_at = self.iteration
            set_rng_state(ckpt["rng"])
            log.info("resumed %s at iteration %d (epoch %d)", self.run, self.iteration, self.epoch)

    # ------------------------------------------------------------------ batches
    def _positive_captions(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random caption index for each image."""
        return self.caption_start[images] + (rng.random(len(images)) * self.caption_count[images]).astype(np.int64)

    def _negative_captions(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`neg_time` random training captions per image (B, neg_time), each of another identity."""
        n = self.opts.neg_time
        own = np.repeat(self.data.identity[images], n)  # (B*n,)
        picks = self.train_captions[rng.integers(len(self.train_captions), size=len(own))]
        for _ in range(20):
            clash = self.data.identity[self.data.caption_image[picks]] == own
            if not clash.any():
                break
            picks[clash] = self.train_captions[rng.integers(len(self.train_captions), size=int(clash.sum()))]
        return picks.reshape(len(images), n)

    def train_step(self, images: np.ndarray) -> tuple[float, float]:
        """One optimisation step on training images (indices into the data set); returns (loss, accuracy)."""
        opts = self.opts
        rng = np.random.default_rng([opts.seed, self.iteration])
        self.model.train()
        train_cnn = self.cnn_from_scratch or (opts.finetune_cnn_after >= 0 and self.iteration >= opts.finetune_cnn_after)
        if not train_cnn:
            self.model.encoder.backbone.eval()
        pixels = self.cache.batch(images).to(self.device)  # (B, 3, S, S)
        positives = self._positive_captions(images, rng)
        if isinstance(self.model, DualEncoder):
            tokens = trim(torch.from_numpy(self.data.labels[positives])).to(self.device)  # (B, T)
            identity = torch.from_numpy(self.data.identity[images]).to(self.device)
            loss, acc = self.model.loss(pixels, tokens, identity)
        else:
            negatives = self._negative_captions(images, rng)  # (B, neg)
            captions = np.concatenate([positives, negatives.reshape(-1)])
            tokens = trim(torch.from_numpy(self.data.labels[captions])).to(self.device)  # (B*(1+neg), T)
            b = len(images)
            image_of_pair = torch.cat([torch.arange(b), torch.arange(b).repeat_interleave(opts.neg_time)]).to(self.device)
            target = torch.cat([torch.ones(b), torch.zeros(b * opts.neg_time)]).to(self.device)
            loss, acc = self.model.loss(pixels, tokens, image_of_pair, target)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ImcapError(f"iteration {self.iteration + 1}: loss is not finite; stopped (try a lower --learning-rate)")
        self.optimizer.zero_grad(set_to_none=True)
        self.cnn_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = _decayed(opts.learning_rate, self.iteration, opts.learning_rate_decay_start, opts.learning_rate_decay_every)
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_value_(self.other_params, opts.grad_clip)
        self.optimizer.step()
        if train_cnn:
            base = opts.learning_rate if self.cnn_from_scratch else opts.cnn_learning_rate
            for group in self.cnn_optimizer.param_groups:
                group["lr"] = _decayed(base, self.iteration, opts.learning_rate_decay_start, opts.learning_rate_decay_every)
            if opts.grad_clip > 0:
                torch.nn.utils.clip_grad_value_(self.cnn_params, opts.grad_clip)
            self.cnn_optimizer.step()
        return value, acc

    # ------------------------------------------------------------------ validation and saving
    def validate(self) -> dict:
        """Validation top-1/5/10 and mAP; updates the history and the best score (top-1)."""
        metrics = evaluate_search(self.model, self.data, "val", self.opts.val_images_use, self.cache,
                                  batch_size=max(self.opts.batch_size, 32), device=self.device)
        entry = {"iteration": self.iteration, "epoch": self.epoch, **{k: metrics[k] for k in ("top1", "top5", "top10", "mAP")}}
        improved = entry["top1"] > self.best_score
        if improved:
            self.best_score, self.best_iteration = entry["top1"], self.iteration
            self.history["best"] = entry
        entry["best"] = improved
        self.history["val"].append(entry)
        return entry

    def checkpoint_dict(self) -> dict:
        """Everything a search checkpoint holds (weights_only-loadable)."""
        return {
            "kind": "search",
            "model": self.model.kind,
            "model_args": asdict(self.model.args),
            "state_dict": self.model.state_dict(),
            "vocab": self.data.vocab.to_dict(),
            "max_length": self.data.max_length,
            "run_id": self.run_id,
            "fingerprint": f"{self.run_id}:{self.iteration}",
            "optimizer": self.optimizer.state_dict(),
            "cnn_optimizer": self.cnn_optimizer.state_dict(),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "position": self.position,
            "rng": rng_state(),
            "options": asdict(self.opts),
            "history": self.history,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
        }

    def validate_and_save(self, bar: tqdm | None = None) -> None:
        """Validate, then write best.pt (when top-1 improved), last.pt and history.json atomically."""
        entry = self.validate()
        self.saved_at = self.iteration
        ckpt = self.checkpoint_dict()
        if entry["best"]:
            save_checkpoint(self.run / BEST, ckpt)
        save_checkpoint(self.run / LAST, ckpt)
        atomic_write_json(self.run / "history.json", self.history)
        shown = " ".join(f"{k} {entry[k]:.3f}" for k in ("top1", "top5", "top10", "mAP"))
        (bar.write if bar is not None else log.info)(f"iter {self.iteration}: val {shown}{' (best)' if entry['best'] else ''}")

    # ------------------------------------------------------------------ the loop
    def done(self) -> bool:
        o = self.opts
        return (o.max_iters >= 0 and self.iteration >= o.max_iters) or (o.max_epochs >= 0 and self.epoch >= o.max_epochs)

    def fit(self) -> Path:
        """Train until --max-iters / --max-epochs; return the run directory."""
        opts = self.opts
        if opts.max_iters < 0 and opts.max_epochs < 0:
            raise ImcapError("give --max-iters or --max-epochs (GNA-RNN's default was 20000 iterations)")
        self.run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run / "options.json", asdict(opts))
        n = len(self.train_images)
        per_epoch = math.ceil(n / opts.batch_size)
        total = opts.max_iters if opts.max_iters >= 0 else per_epoch * opts.max_epochs
        if opts.max_iters >= 0 and opts.max_epochs >= 0:
            total = min(total, per_epoch * opts.max_epochs)
        bar = tqdm(total=total, initial=min(self.iteration, total), desc=f"search train {self.model.kind}", unit="it",
                   disable=not opts.progress, dynamic_ncols=True)
        start, running = time.time(), None
        while not self.done():
            order = ResumableSampler(n, opts.seed, self.epoch, self.position).order()
            while self.position < n and not self.done():
                batch = self.train_images[order[self.position:self.position + opts.batch_size]]
                if len(batch) < 2:  # a lone last image has no in-batch partner; the next epoch starts
                    break
                loss, acc = self.train_step(batch)
                self.iteration += 1
                self.position += len(batch)
                running = loss if running is None else 0.95 * running + 0.05 * loss
                if self.iteration % opts.losses_log_every == 0:
                    self.history["train_loss"].append({"iteration": self.iteration, "loss": loss, "acc": acc, "time": round(time.time() - start, 2)})
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}", epoch=self.epoch)
                if self.iteration % opts.save_checkpoint_every == 0 or self.done():
                    self.validate_and_save(bar)
            if self.position >= n or len(order[self.position:]) < 2:
                self.epoch += 1
                self.position = 0
                if self.done() and self.saved_at != self.iteration:
                    self.validate_and_save(bar)
        bar.close()
        if not (self.run / LAST).exists():
            self.validate_and_save()
        return self.run


def train_search(opts: SearchTrainOptions) -> Path:
    """Train a search model with `opts`; return the run directory."""
    return SearchTrainer(opts).fit()

