"""The training loop (neuraltalk2's train.lua): options, the loop, validation, exact resume."""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imcap import distributed, speed
from imcap.captioner import pick_device
from imcap.checkpoint import BEST, LAST, atomic_write, atomic_write_json, load_checkpoint, open_run, rng_state, save_checkpoint, set_rng_state, submodule_state
from imcap.config import TrainOptions
from imcap.data.features import FeatureStore
from imcap.data.loader import CaptionDataset, PreproData, ResumableSampler, make_loader
from imcap.decoding import DecodeOptions
from imcap.errors import ImcapError
from imcap.evaluate import caption_loss, evaluate_split, teacher_forcing_batch
from imcap.models.attention import attention_penalty
from imcap.models.caption_model import ModelArgs, build_model, model_args_from_dict
from imcap.models.coatt import condition_vocab_of
from imcap.models.scheduled import ss_probability
from imcap.scst import SCSTOptions, SelfCritical

log = logging.getLogger(__name__)


RESUME_OVERRIDES = ("max_iters", "max_epochs", "device", "num_workers", "progress", "save_checkpoint_every", "resume", "amp", "amp_dtype", "compile", "channels_last", "nproc")


def _make_optimizer(name: str, params, lr: float, alpha: float, beta: float, eps: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(alpha, beta), eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=alpha, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay)
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)


def decayed_lr(base: float, iteration: int, start: int, every: int) -> float:
    """neuraltalk2's schedule: halve every `every` iterations after `start` (continuous)."""
    if start < 0 or iteration <= start:
        return base
    return base * 0.5 ** ((iteration - start) / every)


def _clip(params: list[torch.nn.Parameter], value: float, mode: str) -> float:
    """Clip gradients in place; return the total gradient norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
    if value > 0:
        if mode == "norm":
            torch.nn.utils.clip_grad_norm_(params, value)
        else:
            torch.nn.utils.clip_grad_value_(params, value)
    return norm


def _args_for_features(args: ModelArgs, store: FeatureStore, data: PreproData) -> tuple[ModelArgs, str | None]:
    """Model args and CNN weights that match precomputed features (the CNN that made them, or none)."""
    if store.kind == "imcap":
        if args.cnn != store.cnn:
            log.info("--features-dir was made by %s: using that CNN (not %s)", store.cnn, args.cnn)
        args.cnn, args.cnn_width, args.image_size = store.cnn, store.meta.get("cnn_width", args.cnn_width), store.meta.get("image_size", 0)
        weights = store.meta.get("cnn_weights")
        return args, (None if weights in ("checkpoint", None) else weights)
    first = data.images[data.split_indices("train")[0]]["id"]
    args.cnn, args.feature_dim = "none", store.dim("spatial", first)
    return args, None


def _load_backbone(model, checkpoint: str) -> None:
    """Copy the CNN backbone of `checkpoint` (the one that extracted the features) into `model`."""
    model.encoder.backbone.load_state_dict(submodule_state(load_checkpoint(checkpoint)["model"], "encoder.backbone."))


class Trainer:
    """State of one training run: model, optimisers, position in the data, history."""

    def __init__(self, opts: TrainOptions) -> None:
        self.run = Path(opts.checkpoint_path)
        ckpt = open_run(self.run, opts.resume)
        if ckpt is not None:
            saved = {k: v for k, v in ckpt["options"].items() if k in {f.name for f in fields(TrainOptions)}}
            opts = TrainOptions(**{**saved, **{k: getattr(opts, k) for k in RESUME_OVERRIDES}})
        self.opts = opts
        if not opts.data:
            raise ImcapError("--data is required (a directory written by `imcap prepro`)")
        self.data = PreproData.load(opts.data)
        self.features = FeatureStore(opts.features_dir) if opts.features_dir else None
        if self.features is not None and opts.finetune_cnn_after >= 0:
            raise ImcapError("--finetune-cnn-after needs images: precomputed --features-dir features cannot fine-tune the CNN")
        self.world = distributed.current_world()
        self.device = distributed.local_device(pick_device(opts.device), self.world)
        torch.manual_seed(opts.seed)
        random.seed(opts.seed)
        np.random.seed(opts.seed % 2**32)
        if ckpt is not None:
            args = model_args_from_dict(ckpt["model_args"])
            self.model = build_model(args, cnn_weights=None)
        else:
            args = ModelArgs(
                model=opts.model, cnn=opts.cnn, cnn_width=opts.cnn_width, image_size=opts.image_size, input_encoding_size=opts.input_encoding_size,
                rnn_size=opts.rnn_size, num_layers=opts.num_layers, rnn_type=opts.rnn_type, drop_prob_lm=opts.drop_prob_lm,
                image_input=opts.image_input, vocab_size=self.data.vocab.vocab_size,
            )
            if opts.model == "coatt":
                args.condition_field, args.condition_vocab = opts.condition_field, condition_vocab_of(self.data, opts.condition_field)
            weights = None if opts.start_from else opts.cnn_weights
            if self.features is not None:
                args, weights = _args_for_features(args, self.features, self.data)
            self.model = build_model(args, cnn_weights=weights)
            if self.features is not None and self.features.meta.get("cnn_weights") == "checkpoint":
                _load_backbone(self.model, self.features.meta["source_checkpoint"])
            self.model.args.image_size = self.model.encoder.input_size
            if opts.start_from:
                self.model.load_state_dict(load_checkpoint(opts.start_from)["model"])
        if self.model.args.vocab_size != self.data.vocab.vocab_size:
            raise ImcapError(f"{opts.data}: vocabulary ({self.data.vocab.vocab_size}) differs from the model's ({self.model.args.vocab_size})")
        self.model.to(self.device)
        self.cnn_from_scratch = not self.model.encoder.pretrained
        self.optimizer = _make_optimizer(opts.optim, self.model.language_parameters(), opts.learning_rate, opts.optim_alpha, opts.optim_beta, opts.optim_epsilon)
        cnn_lr = opts.learning_rate if self.cnn_from_scratch else opts.cnn_learning_rate
        backbone = self.model.backbone_parameters()  # empty for models on region features
        self.cnn_optimizer = _make_optimizer(opts.cnn_optim, backbone, cnn_lr, opts.cnn_optim_alpha, opts.cnn_optim_beta, opts.optim_epsilon, opts.cnn_weight_decay) if backbone else None
        self.iteration, self.epoch, self.position = 0, 0, 0
        self.history: dict = {"train_loss": [], "val": [], "best_metrics": None}
        self.best_score, self.best_iteration = -math.inf, -1
        self.train_indices = self.data.split_indices("train")
        if not self.train_indices:
            raise ImcapError(f"{opts.data}: the train split is empty")
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.cnn_optimizer is not None:
                self.cnn_optimizer.load_state_dict(ckpt["cnn_optimizer"])
            self.iteration, self.epoch, self.position = ckpt["iteration"], ckpt["epoch"], ckpt["position"]
            self.history = ckpt["history"]
            self.best_score, self.best_iteration = ckpt["best_score"], ckpt["best_iteration"]
            set_rng_state(distributed.rank_rng_state(ckpt, self.world))
            log.info("resumed %s at iteration %d (epoch %d)", self.run, self.iteration, self.epoch)
        self.max_loss = opts.max_loss_factor * math.log(self.data.vocab.vocab_size + 1)
        self.saved_iteration = self.iteration if ckpt is not None else None
        self.setup_speed_and_scale(ckpt)

    def setup_speed_and_scale(self, ckpt: dict | None) -> None:
        """--amp, channels_last, --compile (done at the first batch), self-critical training, the DDP wrapper."""
        opts = self.opts
        if ckpt is None and self.world.distributed:
            torch.manual_seed(opts.seed + self.world.rank)  # same initial weights (seeded above); own dropout and samples per rank
        self.precision = speed.Precision(self.device, opts.amp, opts.amp_dtype)
        self.precision.load_state_dict((ckpt or {}).get("scaler"))
        self.channels_last = opts.channels_last and speed.use_channels_last(self.model, self.device)
        self.compile_pending = opts.compile
        sc = SCSTOptions(opts.sc_sample_n, opts.sc_baseline, opts.sc_bleu4_weight, opts.sc_entropy_weight, opts.sc_unfinished_penalty, opts.sc_temperature, self.data.max_length)
        self.scst = SelfCritical(self.data, sc) if opts.self_critical_after >= 0 else None
        # every parameter gets a gradient in every step only for show_tell on images with a trained CNN; otherwise
        # DDP must look for unused ones (a frozen CNN, the pooled head beside a spatial decoder, ...)
        all_used = self.model.args.model == "show_tell" and self.features is None and self.cnn_from_scratch
        self.net = distributed.wrap(self.model, self.world, self.device, find_unused=not all_used)  # net(fn, ...) = fn(model, ...)
        self.last_stats: dict = {}

    # ------------------------------------------------------------------ one step
    def cnn_trains(self) -> bool:
        """neuraltalk2's finetune_cnn_after; a CNN with no pretrained weights always trains."""
        if self.features is not None:
            return False
        after = self.opts.finetune_cnn_after
        return self.cnn_from_scratch or (after >= 0 and self.iteration >= after)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None) -> float:
        """One optimisation step on a batch (`idx`: the images' indices, for conditioned decoders); returns the loss."""
        opts = self.opts
        self.model.train()
        train_cnn = self.cnn_trains()
        if not train_cnn and self.model.encoder.backbone is not None:
            self.model.encoder.backbone.eval()  # frozen: BatchNorm statistics stay fixed too
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        images = speed.channels_last_input(images, self.channels_last)
        condition = self.model.condition_for(self.data, idx.tolist()) if self.model.conditioned else None
        if self.compile_pending:  # compiled at the first batch; a failure falls back to eager with a warning
            self.compile_pending = False
            speed.compile_model(self.model, lambda: self.precision.backward(self.batch_loss(images, labels, idx, train_cnn, condition)[0]))
        loss, stats = self.batch_loss(images, labels, idx, train_cnn, condition)
        value, *means = distributed.mean_across([float(loss.detach()), *stats.values()], self.world)  # every rank sees the same numbers
        self.last_stats = dict(zip(stats, means))
        if not math.isfinite(value) or (value > self.max_loss and not self.in_self_critical()):
            raise ImcapError(
                f"iteration {self.iteration + 1}: loss is {value:.4g} ({'not finite' if not math.isfinite(value) else 'exploding'}); "
                f"stopped. The last good checkpoint is {self.run / LAST if (self.run / LAST).exists() else 'not written yet'}; "
                "try a lower --learning-rate or --grad-clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.cnn_optimizer is not None:
            self.cnn_optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        lr = decayed_lr(opts.learning_rate, self.iteration, opts.learning_rate_decay_start, opts.learning_rate_decay_every)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.precision.unscale(self.optimizer)
        _clip(self.model.language_parameters(), opts.grad_clip, opts.grad_clip_mode)
        self.precision.step(self.optimizer)
        if train_cnn:
            base = opts.learning_rate if self.cnn_from_scratch else opts.cnn_learning_rate
            for group in self.cnn_optimizer.param_groups:
                group["lr"] = decayed_lr(base, self.iteration, opts.learning_rate_decay_start, opts.learning_rate_decay_every) if self.cnn_from_scratch else base
            self.precision.unscale(self.cnn_optimizer)
            _clip(self.model.backbone_parameters(), opts.grad_clip, opts.grad_clip_mode)
            self.precision.step(self.cnn_optimizer)
        self.precision.update()
        return value

    def in_self_critical(self) -> bool:
        """Whether steps are self-critical now (after --self-critical-after cross-entropy iterations)."""
        after = self.opts.self_critical_after
        return after >= 0 and self.iteration >= after

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None, train_cnn: bool, condition: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """The loss of a batch under --amp autocast: cross-entropy, or SCST (with its reward statistics)."""
        opts = self.opts
        from_features = self.features is not None
        with self.precision.autocast():
            if self.in_self_critical():
                return self.scst.loss(self.net, self.model, images, idx.tolist(), train_cnn, from_features, condition)
            inputs, targets = teacher_forcing_batch(labels)  # (B, n, T), (B*n, T)
            ss_prob = ss_probability(self.iteration, opts.scheduled_sampling_start, opts.ss_increase_every, opts.ss_increase_prob, opts.ss_max_prob)
            logits = self.net(lambda m: m(images, inputs, train_backbone=train_cnn, from_features=from_features, condition=condition, ss_prob=ss_prob))  # (B*n, T, V+1)
            return caption_loss(logits, targets) + attention_penalty(self.model.decoder, targets, opts.alpha_c), {}

    # ------------------------------------------------------------------ saving
    def validate(self) -> dict:
        """Validation loss (and language metrics); updates history and the best score."""
        opts = self.opts
        decode_opts = DecodeOptions(max_length=self.data.max_length)
        result = evaluate_split(self.model, self.data, "val", decode_opts, opts.val_images_use, batch_size=max(opts.batch_size, 32), seq_per_img=opts.seq_per_img, device=self.device, language_eval=opts.language_eval, progress=False, features=self.features)
        entry = {"iteration": self.iteration, "epoch": self.epoch, "loss": result["loss"], **result["metrics"]}
        self.history["val"].append(entry)
        score = entry["CIDEr"] if opts.language_eval and "CIDEr" in entry else -entry["loss"]
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_iteration = score, self.iteration
            self.history["best_metrics"] = entry
        entry["best"] = improved
        return entry

    def checkpoint_dict(self, rng_ranks: list | None = None) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_args": asdict(self.model.args),
            "vocab": self.data.vocab.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "cnn_optimizer": self.cnn_optimizer.state_dict() if self.cnn_optimizer is not None else None,
            "iteration": self.iteration,
            "epoch": self.epoch,
            "position": self.position,
            "rng": rng_state(),
            "options": asdict(self.opts),
            "history": self.history,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "scaler": self.precision.state_dict(),
            "world_size": self.world.size,
            "rng_ranks": rng_ranks,  # every rank's RNG state when several processes train
        }

    def save(self, best: bool, rng_ranks: list | None = None) -> None:
        """Write last.pt (and best.pt), history.json and curves.png, each atomically."""
        ckpt = self.checkpoint_dict(rng_ranks)
        if best:
            save_checkpoint(self.run / BEST, ckpt)
        save_checkpoint(self.run / LAST, ckpt)  # last: a crash between the two keeps a consistent pair
        atomic_write_json(self.run / "history.json", self.history)
        from imcap.report import plot_history

        plot_history(self.history, self.run / "curves.png")

    def validate_and_save(self, bar: tqdm | None = None) -> None:
        """Rank 0 validates and saves (with every rank's RNG state); the other ranks wait for it."""
        rng_ranks = distributed.gather(rng_state(), self.world) if self.world.distributed else None
        if self.world.is_main:
            entry = self.validate()
            self.save(best=entry["best"], rng_ranks=rng_ranks)
            shown = {k: round(v, 4) for k, v in entry.items() if k in ("loss", "Bleu_4", "CIDEr")}
            msg = f"iter {self.iteration}: val {shown}{' (best)' if entry['best'] else ''}"
            (bar.write if bar is not None else log.info)(msg)
        self.saved_iteration = self.iteration
        distributed.barrier(self.world)

    def keep_xe_checkpoint(self) -> None:
        """Copy last.pt to xe.pt when self-critical training starts: the cross-entropy model of this run."""
        if self.world.is_main:
            atomic_write(self.run / "xe.pt", lambda tmp: tmp.write_bytes((self.run / LAST).read_bytes()))
            log.info("iteration %d: cross-entropy model kept in %s; self-critical training from here", self.iteration, self.run / "xe.pt")

    # ------------------------------------------------------------------ the loop
    def done(self) -> bool:
        o = self.opts
        return (o.max_iters >= 0 and self.iteration >= o.max_iters) or (o.max_epochs >= 0 and self.epoch >= o.max_epochs)

    def fit(self) -> Path:
        """Train until --max-iters / --max-epochs; return the run directory."""
        opts = self.opts
        if opts.max_iters < 0 and opts.max_epochs < 0:
            raise ImcapError("give --max-iters or --max-epochs (neuraltalk2 trained forever by default)")
        if self.world.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run / "options.json", asdict(opts))
        dataset = CaptionDataset(self.data, self.train_indices, self.model.encoder.input_size, opts.seq_per_img, opts.seed, self.features, self.model.feature_kind)
        per_epoch = math.ceil(math.ceil(len(dataset) / self.world.size) / opts.batch_size)  # batches per rank
        total = opts.max_iters if opts.max_iters >= 0 else per_epoch * opts.max_epochs
        if opts.max_iters >= 0 and opts.max_epochs >= 0:
            total = min(total, per_epoch * opts.max_epochs)
        bar = tqdm(total=total, initial=min(self.iteration, total), desc="train", unit="it", disable=not opts.progress or not self.world.is_main, dynamic_ncols=True)
        start_time, running = time.time(), None
        while not self.done():
            dataset.epoch = self.epoch
            sampler = ResumableSampler(len(dataset), opts.seed, self.epoch, self.position, rank=self.world.rank, world_size=self.world.size)
            for images, labels, idx in make_loader(dataset, opts.batch_size, sampler, opts.num_workers):
                loss = self.train_step(images, labels, idx)
                self.iteration += 1
                self.position += images.size(0) * self.world.size  # every rank read a batch of the same size
                running = loss if running is None else 0.95 * running + 0.05 * loss
                if self.iteration % opts.losses_log_every == 0:
                    self.history["train_loss"].append({"iteration": self.iteration, "loss": loss, "time": time.time() - start_time, **self.last_stats})
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}", epoch=self.epoch, **{k: f"{v:.3f}" for k, v in self.last_stats.items() if k in ("reward", "baseline")})
                switch = self.iteration == opts.self_critical_after  # the last cross-entropy step
                if self.iteration % opts.save_checkpoint_every == 0 or self.done() or switch:
                    self.validate_and_save(bar)
                if switch:
                    self.keep_xe_checkpoint()
                if self.done():
                    break
            else:
                self.epoch += 1
                self.position = 0
                if self.done() and self.iteration % opts.save_checkpoint_every != 0:
                    self.validate_and_save(bar)
        bar.close()
        if self.saved_iteration is None:
            self.validate_and_save()
        return self.run


def train(opts: TrainOptions) -> Path:
    """Train a captioning model with `opts`; return the run directory.

    Under torchrun every process calls this and joins the process group; with --nproc N (and no
    torchrun around) it launches torchrun with N local processes and waits for them.
    """
    if opts.nproc > 1 and not distributed.env_world().distributed:
        return _launch(opts)
    with distributed.session(pick_device(opts.device)):
        return Trainer(opts).fit()


def _launch(opts: TrainOptions) -> Path:
    """`imcap train --nproc N`: check the options here (one-line errors), then run torchrun."""
    run = Path(opts.checkpoint_path)
    if opts.resume != (run / LAST).exists() or not (opts.resume or opts.data):
        Trainer(opts)  # raises the one-line error: a run without --resume, nothing to resume, or no --data
    if not opts.resume:
        PreproData.load(opts.data)  # a bad --data fails here once, not in every process
    code = distributed.launch(opts, opts.nproc)
    if code != 0:
        raise ImcapError(f"{opts.nproc} training processes: torchrun exited with code {code} (see the messages above)")
    return run
