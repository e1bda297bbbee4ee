"""Captioning training (neuraltalk2's train.lua): the captioning task on the shared engine (imcap.engine).

The task supplies the model, the batches (images and captions, or precomputed features), the loss
(cross-entropy, or self-critical after --self-critical-after) and the validation; the engine does the rest.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from imcap import distributed, speed
from imcap.checkpoint import LAST, load_checkpoint, submodule_state
from imcap.config import RESUME_OVERRIDES, TrainOptions
from imcap.data.features import FeatureStore
from imcap.data.loader import CaptionDataset, PreproData, ResumableSampler, make_loader
from imcap.decoding import DecodeOptions
from imcap.devices import pick_device
from imcap.engine import Engine, Task
from imcap.errors import ImcapError
from imcap.evaluate import evaluate_split, teacher_forcing_batch
from imcap.files import atomic_write
from imcap.losses import attention_penalty, caption_loss
from imcap.models.caption_model import ModelArgs, build_model, model_args_from_dict
from imcap.models.coatt import condition_vocab_of
from imcap.models.scheduled import ss_probability
from imcap.schedules import decayed_lr, scheduled_lr
from imcap.scst import SCSTLearningRate, SCSTOptions, SelfCritical

log = logging.getLogger(__name__)

# Model options a --start-from checkpoint decides (its weights have these sizes).
ARCHITECTURE = ("model", "cnn", "cnn_width", "image_size", "input_encoding_size", "rnn_size", "num_layers", "rnn_type", "image_input", "d_model", "num_heads", "ff_size", "position_encoding")

__all__ = ["CaptionTask", "Trainer", "decayed_lr", "train"]


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


def _args_from_start(opts: TrainOptions, args: ModelArgs, ckpt: dict) -> ModelArgs:
    """The model arguments of a --start-from checkpoint, saying which flags it overrides."""
    saved = model_args_from_dict(ckpt["model_args"])
    differ = [f"--{name.replace('_', '-')} {getattr(saved, name)} (flag: {getattr(args, name)})" for name in ARCHITECTURE
              if hasattr(saved, name) and getattr(saved, name) != getattr(args, name) and not (name == "image_size" and not getattr(args, name))]
    if differ:
        log.info("--start-from %s: model sizes come from the checkpoint: %s", opts.start_from, ", ".join(differ))
    saved.drop_prob_lm, saved.transformer_dropout = args.drop_prob_lm, args.transformer_dropout
    return saved


class CaptionTask(Task):
    """Captioning: images (or features) and captions in, cross-entropy or SCST loss out."""

    kind = "captioning"
    history_best_key = "best_metrics"
    resume_overrides = RESUME_OVERRIDES

    def __init__(self, opts: TrainOptions, ckpt: dict | None, device: torch.device) -> None:
        self.opts = opts
        if not opts.data:
            raise ImcapError("--data is required (a directory written by `imcap prepro`)")
        self.data = PreproData.load(opts.data)
        self.features = FeatureStore(opts.features_dir) if opts.features_dir else None
        if self.features is not None and opts.finetune_cnn_after >= 0:
            raise ImcapError("--finetune-cnn-after needs images: precomputed --features-dir features cannot fine-tune the CNN")
        self.device = device
        self.world = distributed.current_world()
        if ckpt is not None:
            self.model = build_model(model_args_from_dict(ckpt["model_args"]), cnn_weights=None)
        else:
            self.model = self._new_model(opts)
        if self.model.args.vocab_size != self.data.vocab.vocab_size:
            raise ImcapError(f"{opts.data}: vocabulary ({self.data.vocab.vocab_size}) differs from the model's ({self.model.args.vocab_size})")
        self.cnn_from_scratch = not self.model.encoder.pretrained
        self.train_indices = self.data.split_indices("train")
        if not self.train_indices:
            raise ImcapError(f"{opts.data}: the train split is empty")
        self.max_loss_value = opts.max_loss_factor * math.log(self.data.vocab.vocab_size + 1)
        self.dataset = CaptionDataset(self.data, self.train_indices, self.model.encoder.input_size, opts.seq_per_img, opts.seed, self.features, self.model.feature_kind)
        self.sc_rate = SCSTLearningRate(opts.sc_learning_rate, opts.sc_guard_window, opts.sc_guard_patience)

    def _new_model(self, opts: TrainOptions):
        args = ModelArgs(
            model=opts.model, cnn=opts.cnn, cnn_width=opts.cnn_width, image_size=opts.image_size, input_encoding_size=opts.input_encoding_size,
            rnn_size=opts.rnn_size, num_layers=opts.num_layers, rnn_type=opts.rnn_type, drop_prob_lm=opts.drop_prob_lm,
            image_input=opts.image_input, vocab_size=self.data.vocab.vocab_size, d_model=opts.d_model, num_heads=opts.num_heads, ff_size=opts.ff_size,
            transformer_dropout=opts.transformer_dropout, position_encoding=opts.position_encoding,
        )
        if opts.model == "coatt":
            args.condition_field, args.condition_vocab = opts.condition_field, condition_vocab_of(self.data, opts.condition_field)
        start = load_checkpoint(opts.start_from) if opts.start_from else None
        if start is not None:
            args = _args_from_start(opts, args, start)
        weights = None if start is not None else opts.cnn_weights
        if self.features is not None and start is None:
            args, weights = _args_for_features(args, self.features, self.data)
        model = build_model(args, cnn_weights=weights)
        if self.features is not None and self.features.meta.get("cnn_weights") == "checkpoint" and start is None:
            model.encoder.backbone.load_state_dict(submodule_state(load_checkpoint(self.features.meta["source_checkpoint"])["model"], "encoder.backbone."))
        model.args.image_size = model.encoder.input_size
        if start is not None:
            try:
                model.load_state_dict(start["model"])
            except RuntimeError as exc:
                raise ImcapError(f"{opts.start_from}: its weights do not fit this model ({str(exc).splitlines()[-1].strip()[:120]})") from None
        return model

    # ------------------------------------------------------------------ engine hooks
    def language_parameters(self) -> list[torch.nn.Parameter]:
        return self.model.language_parameters()

    def backbone_parameters(self) -> list[torch.nn.Parameter]:
        return self.model.backbone_parameters() if self.features is None else []

    def backbone(self) -> torch.nn.Module | None:
        return self.model.encoder.backbone

    def prepare(self, engine: Engine, ckpt: dict | None) -> None:
        """--amp, channels_last, --compile (done at the first batch), self-critical training, the DDP wrapper."""
        opts = self.opts
        if ckpt is None and self.world.distributed:
            torch.manual_seed(opts.seed + self.world.rank)  # same initial weights (seeded above); own dropout and samples per rank
        self.precision = engine.precision
        self.engine = engine  # learning_rate reads the step's process-averaged statistics (engine.last_stats)
        self.channels_last = opts.channels_last and speed.use_channels_last(self.model, self.device)
        self.compile_pending = opts.compile
        sc = SCSTOptions(opts.sc_sample_n, opts.sc_baseline, opts.sc_bleu4_weight, opts.sc_entropy_weight, opts.sc_unfinished_penalty, opts.sc_temperature, self.data.max_length)
        self.scst = SelfCritical(self.data, sc) if opts.self_critical_after >= 0 else None
        # every parameter gets a gradient in every step only for show_tell on images with a trained CNN; otherwise
        # DDP must look for unused ones (a frozen CNN, the pooled head beside a spatial decoder, ...)
        all_used = self.model.args.model == "show_tell" and self.features is None and self.cnn_from_scratch
        self.net = distributed.wrap(self.model, self.world, self.device, find_unused=not all_used)  # net(fn, ...) = fn(model, ...)

    def batches_per_epoch(self) -> int:
        return math.ceil(math.ceil(len(self.dataset) / self.world.size) / self.opts.batch_size)

    def epoch_batches(self, epoch: int, position: int) -> Iterator[tuple[tuple, int]]:
        self.dataset.epoch = epoch
        sampler = ResumableSampler(len(self.dataset), self.opts.seed, epoch, position, rank=self.world.rank, world_size=self.world.size)
        for images, labels, idx in make_loader(self.dataset, self.opts.batch_size, sampler, self.opts.num_workers):
            yield (images, labels, idx), images.size(0) * self.world.size  # every rank read a batch of the same size

    def in_self_critical(self, iteration: int) -> bool:
        """Whether steps are self-critical at `iteration` (after --self-critical-after cross-entropy iterations)."""
        after = self.opts.self_critical_after
        return after >= 0 and iteration >= after

    def max_loss(self, iteration: int) -> float:
        return math.inf if self.in_self_critical(iteration) else self.max_loss_value

    def learning_rate(self, base: float, iteration: int) -> float:
        """--lr-schedule (with --warmup-steps); self-critical steps use --sc-learning-rate, lowered by its safeguard (imcap.scst)."""
        o = self.opts
        if self.in_self_critical(iteration):
            return self.sc_rate.step(iteration, self.engine.last_stats["baseline"])
        return scheduled_lr(o.lr_schedule, base, iteration, o.warmup_steps, o.learning_rate_decay_start, o.learning_rate_decay_every)

    def loss(self, batch: tuple, iteration: int, train_cnn: bool) -> tuple[torch.Tensor, dict]:
        images, labels, idx = batch
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        images = speed.channels_last_input(images, self.channels_last)
        condition = self.model.condition_for(self.data, idx.tolist()) if self.model.conditioned else None
        if self.compile_pending:  # compiled at the first batch; a failure falls back to eager with a warning
            self.compile_pending = False
            speed.compile_model(self.model, lambda: self.precision.backward(self.batch_loss(images, labels, idx, iteration, train_cnn, condition)[0]))
        return self.batch_loss(images, labels, idx, iteration, train_cnn, condition)

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, iteration: int, train_cnn: bool, condition: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """The loss of a batch under --amp autocast: cross-entropy, or SCST (with its reward statistics)."""
        opts = self.opts
        from_features = self.features is not None
        with self.precision.autocast():
            if self.in_self_critical(iteration):
                return self.scst.loss(self.net, self.model, images, idx.tolist(), train_cnn, from_features, condition)
            inputs, targets = teacher_forcing_batch(labels)  # (B, n, T), (B*n, T)
            ss_prob = ss_probability(iteration, opts.scheduled_sampling_start, opts.ss_increase_every, opts.ss_increase_prob, opts.ss_max_prob)
            forward = lambda m: m(images, inputs, train_backbone=train_cnn, from_features=from_features, condition=condition, ss_prob=ss_prob, return_attention=True)  # noqa: E731
            logprobs, alphas = self.net(forward)  # (B*n, T, V+1), (B*n, T, K) or None
            return caption_loss(logprobs, targets, opts.label_smoothing) + attention_penalty(alphas, targets, opts.alpha_c), {}

    def validate(self, iteration: int, epoch: int) -> tuple[dict, float]:
        """Validation loss (and language metrics); the score is CIDEr with --language-eval, else minus the loss."""
        opts = self.opts
        result = evaluate_split(self.model, self.data, "val", DecodeOptions(max_length=self.data.max_length), opts.val_images_use, batch_size=max(opts.batch_size, 32),
                                seq_per_img=opts.seq_per_img, device=self.device, language_eval=opts.language_eval, progress=False, features=self.features)
        entry = {"iteration": iteration, "epoch": epoch, "loss": result["loss"], **result["metrics"]}
        return entry, entry["CIDEr"] if opts.language_eval and "CIDEr" in entry else -entry["loss"]

    def describe(self, entry: dict) -> str:
        return str({k: round(v, 4) for k, v in entry.items() if k in ("loss", "Bleu_4", "CIDEr")})

    def checkpoint_state(self, iteration: int) -> dict:
        return {"model": self.model.state_dict(), "model_args": asdict(self.model.args), "vocab": self.data.vocab.to_dict(), "sc_rate": self.sc_rate.state_dict()}

    def load_checkpoint_state(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("sc_rate") is not None:
            self.sc_rate.load_state_dict(ckpt["sc_rate"])

    def must_save(self, iteration: int) -> bool:
        return iteration == self.opts.self_critical_after  # the last cross-entropy step

    def after_save(self, run: Path, iteration: int, history: dict) -> None:
        """curves.png; at the switch to SCST, xe.pt keeps the cross-entropy model."""
        from imcap.report import plot_history

        plot_history(history, run / "curves.png")
        if iteration == self.opts.self_critical_after:
            atomic_write(run / "xe.pt", lambda tmp: tmp.write_bytes((run / LAST).read_bytes()))
            log.info("iteration %d: cross-entropy model kept in %s; self-critical training from here", iteration, run / "xe.pt")


class Trainer(Engine):
    """The engine running a `CaptionTask` (what `imcap train` runs); exposes the task's model and data."""

    def __init__(self, opts: TrainOptions, explicit: set[str] | None = None) -> None:
        super().__init__(opts, explicit, CaptionTask)

    @property
    def model(self):
        return self.task.model

    @property
    def data(self) -> PreproData:
        return self.task.data

    @property
    def scst(self) -> SelfCritical | None:
        return self.task.scst

    @property
    def train_indices(self) -> list[int]:
        return self.task.train_indices

    def train_step(self, images, labels=None, idx=None) -> float:  # type: ignore[override]
        """One optimisation step on (images, labels, idx); returns the loss."""
        batch = images if labels is None else (images, labels, idx)
        return super().train_step(batch)


def train(opts: TrainOptions, explicit: set[str] | None = None) -> Path:
    """Train a captioning model with `opts`; return the run directory.

    `explicit`: the option names the user typed (with --resume, only those may override the run's saved
    options). Under torchrun every process calls this and joins the process group; with --nproc N (and no
    torchrun around) it launches torchrun with N local processes and waits for them.
    """
    if opts.nproc > 1 and not distributed.env_world().distributed:
        return _launch(opts, explicit)
    with distributed.session(pick_device(opts.device)):
        return Trainer(opts, explicit).fit()


def _launch(opts: TrainOptions, explicit: set[str] | None) -> Path:
    """`imcap train --nproc N`: check the options here (one-line errors), then run torchrun."""
    trainer = Trainer(opts, explicit)  # one-line errors here, once: a bad --data, nothing to resume, a changed flag
    opts = trainer.opts
    del trainer
    code = distributed.launch(opts, opts.nproc)
    if code != 0:
        raise ImcapError(f"{opts.nproc} training processes: torchrun exited with code {code} (see the messages above)")
    return Path(opts.checkpoint_path)
