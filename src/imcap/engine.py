"""The training engine shared by every trainer (captioning, search): the loop, optimisers and learning-rate
schedule, gradient clipping, seeding, checkpoints and exact resume, validation cadence, logging, progress.

A trainer supplies a `Task`: its model, its batches, its loss and its validation. The engine owns everything
else, so both trainers resume, clip, decay and checkpoint the same way. A run is a directory:
    last.pt / best.pt   checkpoints (plain dicts, loaded with weights_only=True)
    options.json        the run's options, paths absolute, so the run works from any directory
    history.json        training losses and validation entries
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imcap import distributed, speed
from imcap.checkpoint import LAST, open_run, rng_state, save_run_checkpoints, set_rng_state
from imcap.data.fingerprint import data_fingerprint
from imcap.devices import pick_device
from imcap.errors import ImcapError
from imcap.files import atomic_write_json
from imcap.options import flag_of, validate
from imcap.progress import progress_bar
from imcap.schedules import decayed_lr

log = logging.getLogger(__name__)

# Options that name files: stored absolute, so a run can be resumed and evaluated from any directory.
PATH_OPTIONS = ("checkpoint_path", "data", "features_dir", "start_from", "cnn_from", "image_root")


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, alpha: float, beta: float, eps: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """One of adam, sgd, sgdm, rmsprop, adagrad; Adam uses the fused kernel where torch has one for these tensors."""
    if name == "adam":
        fused = bool(params) and all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, betas=(alpha, beta), eps=eps, weight_decay=weight_decay, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=alpha, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)
    raise ImcapError(f"--optim {name}: choose adam, sgd, sgdm, rmsprop or adagrad")


def clip_gradients(params: list[nn.Parameter], value: float, mode: str) -> float:
    """Clip gradients in place (elementwise `value`, or total norm); return the total norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
    if value > 0:
        if mode == "norm":
            torch.nn.utils.clip_grad_norm_(params, value)
        else:
            torch.nn.utils.clip_grad_value_(params, value)
    return norm


def absolute_paths(opts: Any) -> Any:
    """`opts` with every file option made absolute (relative to the current directory)."""
    changes = {name: os.path.abspath(getattr(opts, name)) for name in PATH_OPTIONS if getattr(opts, name, "")}
    return dataclasses.replace(opts, **changes)


def _same_data(new: str, saved: str, fingerprint: str) -> bool:
    """Whether `new` holds the data set of fingerprint `fingerprint` (or, for runs without one, is the same path)."""
    if fingerprint:
        return data_fingerprint(new) == fingerprint
    return os.path.abspath(new) == os.path.abspath(saved)


def non_default_options(opts: Any) -> set[str]:
    """The options whose value differs from the default: what a Python caller (no command line) chose explicitly."""
    defaults = type(opts)()
    return {f.name for f in dataclasses.fields(opts) if getattr(opts, f.name) != getattr(defaults, f.name)}


def resumed_options(opts: Any, explicit: set[str], ckpt: dict, overridable: frozenset[str], strict: bool = True) -> Any:
    """The run's saved options, with the flags typed alongside `--resume` applied where that is safe.

    A typed flag equal to the saved value is fine; a safe one (`overridable`) replaces it and is logged; `--data`
    must hold the same data set (by fingerprint); any other changed flag is a one-line error naming it
    (with `strict` off, for Python callers, it is ignored: the run's own value is kept).
    """
    cls = type(opts)
    names = {f.name: f for f in dataclasses.fields(cls)}
    saved = {k: v for k, v in (ckpt.get("options") or {}).items() if k in names}
    merged = cls(**saved)
    changes: dict[str, Any] = {"resume": True, "checkpoint_path": os.path.abspath(opts.checkpoint_path)}
    for name in sorted(explicit - {"resume", "checkpoint_path"}):
        if name not in names:
            continue
        new, old = getattr(opts, name), getattr(merged, name)
        flag = flag_of(names[name])
        if name == "data":
            if not _same_data(new, old, ckpt.get("data_fingerprint", "")):
                raise ImcapError(f"{flag} {new}: not the data set this run was trained on ({old}); a run resumes on its own data")
            if os.path.abspath(new) != os.path.abspath(old):
                log.info("--resume: %s %s holds the same data set as %s (same fingerprint)", flag, new, old)
            changes[name] = os.path.abspath(new)
            continue
        if new == old:
            continue
        if name not in overridable:
            if not strict:
                continue
            raise ImcapError(f"{flag} cannot change when resuming (this run has {old!r}, got {new!r}); "
                             f"drop it, or start a new run from a checkpoint with --start-from")
        log.info("--resume: %s %s overrides the run's %s", flag, new, old)
        changes[name] = new
    merged = dataclasses.replace(merged, **changes)
    validate(merged)
    return merged


class Task:
    """What a trainer supplies to the engine. Subclasses set `model` in `__init__` and implement the methods."""

    kind = "task"
    history_best_key = "best"  # history entry that holds the best validation entry
    resume_overrides: frozenset[str] = frozenset()
    model: nn.Module
    cnn_from_scratch: bool = True

    def language_parameters(self) -> list[nn.Parameter]:
        """Parameters trained with --optim / --learning-rate."""
        raise NotImplementedError

    def backbone_parameters(self) -> list[nn.Parameter]:
        """CNN parameters trained with --cnn-optim (empty when the model has no CNN)."""
        return []

    def backbone(self) -> nn.Module | None:
        """The CNN module (put in eval mode while frozen), or None."""
        return None

    def prepare(self, engine: Engine, ckpt: dict | None) -> None:
        """Last set-up once optimisers and states are in place (precision, compile, DDP, ...)."""

    def batches_per_epoch(self) -> int:
        """Optimisation steps in one epoch (for the progress total)."""
        raise NotImplementedError

    def epoch_batches(self, epoch: int, position: int) -> Iterator[tuple[Any, int]]:
        """(batch, items it advances the epoch position by) from `position` of `epoch`."""
        raise NotImplementedError

    def loss(self, batch: Any, iteration: int, train_cnn: bool) -> tuple[torch.Tensor, dict]:
        """The loss to back-propagate and statistics to log (means across processes are taken by the engine)."""
        raise NotImplementedError

    def max_loss(self, iteration: int) -> float:
        """Above this the loss counts as exploding and the run stops."""
        return math.inf

    def learning_rate(self, base: float, iteration: int) -> float:
        """The language model's learning rate at `iteration` (neuraltalk2's halving by default)."""
        o = self.opts  # type: ignore[attr-defined]
        return decayed_lr(base, iteration, o.learning_rate_decay_start, o.learning_rate_decay_every)

    def validate(self, iteration: int, epoch: int) -> tuple[dict, float]:
        """A validation entry for the history and its score (higher is better)."""
        raise NotImplementedError

    def describe(self, entry: dict) -> str:
        """One line summarising a validation entry."""
        return str(entry)

    def checkpoint_state(self, iteration: int) -> dict:
        """The task's part of a checkpoint at `iteration` (weights, model arguments, vocabulary, ...)."""
        raise NotImplementedError

    def load_checkpoint_state(self, ckpt: dict) -> None:
        """Restore the task's part of a checkpoint."""
        raise NotImplementedError

    def must_save(self, iteration: int) -> bool:
        """Whether to validate and save at `iteration` beside the regular cadence."""
        return False

    def after_save(self, run: Path, iteration: int, history: dict) -> None:
        """Extra files after a checkpoint (curves, ...)."""


class Engine:
    """One training run: options, task, optimisers, position in the data, history, best score."""

    def __init__(self, opts: Any, explicit: set[str] | None, make_task) -> None:
        validate(opts)
        self.run = Path(opts.checkpoint_path)
        ckpt = open_run(self.run, opts.resume)
        if ckpt is not None:
            strict = explicit is not None  # the command line: a changed flag is an error; Python callers keep the run's options
            opts = resumed_options(opts, explicit if strict else non_default_options(opts), ckpt, make_task.resume_overrides, strict)
        else:
            opts = absolute_paths(opts)
        self.run = Path(opts.checkpoint_path)
        self.opts = opts
        self.ckpt_fingerprint = (ckpt or {}).get("data_fingerprint", "")
        self.world = distributed.current_world()
        self.device = distributed.local_device(pick_device(opts.device), self.world)
        torch.manual_seed(opts.seed)
        random.seed(opts.seed)
        np.random.seed(opts.seed % 2**32)
        self.task: Task = make_task(opts, ckpt, self.device)
        model = self.task.model.to(self.device)
        self.task.model = model
        self.optimizer = make_optimizer(opts.optim, self.task.language_parameters(), opts.learning_rate, opts.optim_alpha, opts.optim_beta, opts.optim_epsilon)
        backbone = self.task.backbone_parameters()
        cnn_lr = opts.learning_rate if self.task.cnn_from_scratch else opts.cnn_learning_rate
        self.cnn_optimizer = make_optimizer(opts.cnn_optim, backbone, cnn_lr, opts.cnn_optim_alpha, opts.cnn_optim_beta, opts.optim_epsilon, opts.cnn_weight_decay) if backbone else None
        self.iteration, self.epoch, self.position = 0, 0, 0
        self.history: dict = {"train_loss": [], "val": [], self.task.history_best_key: None}
        self.best_score, self.best_iteration = -math.inf, -1
        self.saved_iteration: int | None = None
        self.train_seconds = 0.0  # time spent training (validation and saving excluded), for --max-train-seconds
        self.fingerprint = ckpt.get("data_fingerprint", "") if ckpt else data_fingerprint(opts.data) if opts.data else ""
        self.precision = speed.Precision(self.device, getattr(opts, "amp", False), getattr(opts, "amp_dtype", "auto"))
        if ckpt is not None:
            self.task.load_checkpoint_state(ckpt)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.cnn_optimizer is not None and ckpt.get("cnn_optimizer") is not None:
                self.cnn_optimizer.load_state_dict(ckpt["cnn_optimizer"])
            self.iteration, self.epoch, self.position = ckpt["iteration"], ckpt["epoch"], ckpt["position"]
            self.train_seconds = float(ckpt.get("train_seconds", 0.0))
            self.history = ckpt["history"]
            self.best_score, self.best_iteration = ckpt["best_score"], ckpt["best_iteration"]
            self.precision.load_state_dict(ckpt.get("scaler"))
            set_rng_state(distributed.rank_rng_state(ckpt, self.world))
            self.saved_iteration = self.iteration
            log.info("resumed %s at iteration %d (epoch %d)", self.run, self.iteration, self.epoch)
        self.task.prepare(self, ckpt)
        self.last_stats: dict = {}

    # ------------------------------------------------------------------ one step
    def cnn_trains(self) -> bool:
        """neuraltalk2's finetune_cnn_after; a CNN with no pretrained weights always trains."""
        if self.cnn_optimizer is None:
            return False
        after = self.opts.finetune_cnn_after
        return self.task.cnn_from_scratch or (after >= 0 and self.iteration >= after)

    def train_step(self, batch: Any) -> float:
        """One optimisation step; returns the loss (averaged over processes)."""
        opts, task = self.opts, self.task
        task.model.train()
        train_cnn = self.cnn_trains()
        backbone = task.backbone()
        if not train_cnn and backbone is not None:
            backbone.eval()  # frozen: BatchNorm statistics stay fixed too
        loss, stats = task.loss(batch, self.iteration, train_cnn)
        value, *means = distributed.mean_across([float(loss.detach()), *stats.values()], self.world)
        self.last_stats = dict(zip(stats, means))
        if not math.isfinite(value) or value > task.max_loss(self.iteration):
            last = self.run / LAST
            raise ImcapError(
                f"iteration {self.iteration + 1}: loss is {value:.4g} ({'not finite' if not math.isfinite(value) else 'exploding'}); "
                f"stopped. The last good checkpoint is {last if last.exists() else 'not written yet'}; try a lower --learning-rate or --grad-clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.cnn_optimizer is not None:
            self.cnn_optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        for group in self.optimizer.param_groups:
            group["lr"] = task.learning_rate(opts.learning_rate, self.iteration)
        self.precision.unscale(self.optimizer)
        clip_gradients(task.language_parameters(), opts.grad_clip, opts.grad_clip_mode)
        self.precision.step(self.optimizer)
        if train_cnn:
            for group in self.cnn_optimizer.param_groups:
                group["lr"] = task.learning_rate(opts.learning_rate, self.iteration) if task.cnn_from_scratch else opts.cnn_learning_rate  # a from-scratch CNN follows the language model's schedule
            self.precision.unscale(self.cnn_optimizer)
            clip_gradients(task.backbone_parameters(), opts.grad_clip, opts.grad_clip_mode)
            self.precision.step(self.cnn_optimizer)
        self.precision.update()
        return value

    # ------------------------------------------------------------------ saving
    def checkpoint_dict(self, rng_ranks: list | None = None) -> dict:
        """The whole run state: the task's part plus optimisers, position, RNG, options and history."""
        return {
            **self.task.checkpoint_state(self.iteration),
            "optimizer": self.optimizer.state_dict(),
            "cnn_optimizer": self.cnn_optimizer.state_dict() if self.cnn_optimizer is not None else None,
            "iteration": self.iteration,
            "epoch": self.epoch,
            "position": self.position,
            "train_seconds": self.train_seconds,
            "rng": rng_state(),
            "options": dataclasses.asdict(self.opts),
            "data_fingerprint": self.fingerprint,
            "history": self.history,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "scaler": self.precision.state_dict(),
            "world_size": self.world.size,
            "rng_ranks": rng_ranks,  # every rank's RNG state when several processes train
        }

    def save(self, best: bool, rng_ranks: list | None = None) -> None:
        """Write last.pt (then best.pt when it improved), history.json and the task's extras, each atomically."""
        save_run_checkpoints(self.run, self.checkpoint_dict(rng_ranks), best)  # last.pt first: a kill between the two leaves a resumable run
        atomic_write_json(self.run / "history.json", self.history)
        self.task.after_save(self.run, self.iteration, self.history)

    def validate_and_save(self, bar: Any = None) -> None:
        """Rank 0 validates and saves (with every rank's RNG state); the other ranks wait for it."""
        rng_ranks = distributed.gather(rng_state(), self.world) if self.world.distributed else None
        if self.world.is_main:
            entry, score = self.task.validate(self.iteration, self.epoch)
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_iteration = score, self.iteration
                self.history[self.task.history_best_key] = entry
            entry["best"] = improved
            self.history["val"].append(entry)
            self.save(best=improved, rng_ranks=rng_ranks)
            msg = f"iter {self.iteration}: val {self.task.describe(entry)}{' (best)' if improved else ''}"
            (bar.write if bar is not None else log.info)(msg)
        self.saved_iteration = self.iteration
        distributed.barrier(self.world)

    # ------------------------------------------------------------------ the loop
    def done(self) -> bool:
        o = self.opts
        return ((o.max_iters >= 0 and self.iteration >= o.max_iters) or (o.max_epochs >= 0 and self.epoch >= o.max_epochs)
                or (o.max_train_seconds >= 0 and self.train_seconds >= o.max_train_seconds))

    def count_time(self, seconds: float) -> None:
        """Add `seconds` of training to the run's clock; with several processes they all take the mean, so they stop together."""
        self.train_seconds += seconds
        if self.opts.max_train_seconds >= 0 and self.world.distributed:
            self.train_seconds = distributed.mean_across([self.train_seconds], self.world)[0]

    def fit(self) -> Path:
        """Train until --max-iters / --max-epochs / --max-train-seconds; return the run directory."""
        opts = self.opts
        if opts.max_iters < 0 and opts.max_epochs < 0 and opts.max_train_seconds < 0:
            raise ImcapError("give --max-iters, --max-epochs or --max-train-seconds (neuraltalk2 trained forever by default)")
        if self.world.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run / "options.json", dataclasses.asdict(opts))
        if self.done() and self.saved_iteration is not None:
            log.info("%s is already at iteration %d (epoch %d, %.0f s of training): past --max-iters %d / --max-epochs %d / --max-train-seconds %g, "
                     "nothing to train", self.run, self.iteration, self.epoch, self.train_seconds, opts.max_iters, opts.max_epochs, opts.max_train_seconds)
        per_epoch = self.task.batches_per_epoch()
        limits = [n for n in (opts.max_iters, per_epoch * opts.max_epochs if opts.max_epochs >= 0 else -1) if n >= 0]
        total = min(limits) if limits else None  # a time limit alone: the bar counts without a total
        bar = progress_bar(total=total, initial=min(self.iteration, total or self.iteration), desc=f"train {self.task.kind}", unit="it",
                           disable=not opts.progress or not self.world.is_main, every=max(opts.losses_log_every, (total or 100) // 20))
        start_time, running = time.time(), None
        while not self.done():
            clock = time.perf_counter()  # training time runs from here; validation and saving are not counted
            for batch, items in self.task.epoch_batches(self.epoch, self.position):
                loss = self.train_step(batch)
                self.iteration += 1
                self.position += items
                now = time.perf_counter()
                self.count_time(now - clock)
                clock = now
                running = loss if running is None else 0.95 * running + 0.05 * loss
                if self.iteration % opts.losses_log_every == 0:
                    self.history["train_loss"].append({"iteration": self.iteration, "loss": loss, "time": round(time.time() - start_time, 2),
                                                       "train_time": round(self.train_seconds, 2), **self.last_stats})
                bar.set_postfix(loss=f"{running:.3f}", epoch=self.epoch, **{k: f"{v:.3f}" for k, v in self.last_stats.items() if k in ("reward", "baseline", "acc")})
                bar.update(1)
                if self.iteration % opts.save_checkpoint_every == 0 or self.done() or self.task.must_save(self.iteration):
                    self.validate_and_save(bar)
                    clock = time.perf_counter()
                if self.done():
                    break
            else:
                self.epoch += 1
                self.position = 0
                if self.done() and self.saved_iteration != self.iteration:
                    self.validate_and_save(bar)
        bar.close()
        if self.saved_iteration is None or not (self.run / LAST).exists():
            self.validate_and_save()
        return self.run
