"""`imcap search train`: the GNA-RNN task (BCE on matching / mismatched pairs) and dual-encoder InfoNCE, on the shared engine.

Options and defaults follow the GNA-RNN train.lua seed (adam 4e-4, elementwise grad clip 5, --neg-time 3,
validation every 100 iterations on 100 images, checkpoint on the best validation top-1). Batches are a pure
function of (seed, epoch, position, iteration), so `--resume` continues exactly where a run stopped.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from imcap.checkpoint import load_checkpoint, submodule_state
from imcap.data.loader import ResumableSampler
from imcap.engine import Engine, Task
from imcap.errors import ImcapError
from imcap.search.data import ImageCache, SearchData, trim
from imcap.search.evaluate import evaluate_search
from imcap.search.models import DualEncoder, SearchModel, SearchModelArgs, build_search_model
from imcap.search.options import SEARCH_RESUME_OVERRIDES, SearchTrainOptions

log = logging.getLogger(__name__)


def init_encoder_from(model: SearchModel, path: str | Path) -> None:
    """Copy the image encoder of another imcap checkpoint (search or captioning) into `model`: the CNN, and its head when the sizes match."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict") if ckpt.get("kind") == "search" else ckpt.get("model")
    if not isinstance(state, dict):
        raise ImcapError(f"{path}: checkpoint holds no model weights")
    encoder = submodule_state(state, "encoder.")
    backbone = submodule_state(encoder, "backbone.")
    try:
        model.encoder.backbone.load_state_dict(backbone)
    except RuntimeError as exc:
        args = model.args
        raise ImcapError(f"{path}: its CNN does not fit --cnn {args.cnn} --cnn-width {args.cnn_width} "
                         f"({str(exc).splitlines()[-1].strip()[:100]})") from None
    head = submodule_state(encoder, "head.")
    mine = model.encoder.head.state_dict()
    if head.keys() == mine.keys() and all(mine[k].shape == v.shape for k, v in head.items()):
        model.encoder.head.load_state_dict(head)
    log.info("image encoder initialised from %s%s", path, "" if head.keys() == mine.keys() else " (CNN only)")


class SearchTask(Task):
    """Text -> image search: images and captions in, GNA-RNN pairwise BCE or dual-encoder InfoNCE out."""

    kind = "search"
    history_best_key = "best"
    resume_overrides = SEARCH_RESUME_OVERRIDES

    def __init__(self, opts: SearchTrainOptions, ckpt: dict | None, device: torch.device) -> None:
        self.opts = opts
        if not opts.data:
            raise ImcapError("--data is required (a prepro folder, a caption file or folder, or CUHK-PEDES reid_raw.json)")
        if ckpt is not None and ckpt.get("kind") != "search":
            raise ImcapError(f"{opts.checkpoint_path}: not a search run")
        self.data = SearchData.load(opts.data, opts.format or None, opts.image_root or None, opts.max_length, opts.word_count_threshold)
        self.device = device
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
        backbone = set(map(id, self.model.encoder.backbone.parameters()))
        self.cnn_params = list(self.model.encoder.backbone.parameters())
        self.other_params = [p for p in self.model.parameters() if id(p) not in backbone]
        self.cnn_from_scratch = not self.model.encoder.pretrained
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
        self.run_id = ckpt["run_id"] if ckpt is not None else uuid.uuid4().hex

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

    # ------------------------------------------------------------------ engine hooks
    def language_parameters(self) -> list[torch.nn.Parameter]:
        return self.other_params

    def backbone_parameters(self) -> list[torch.nn.Parameter]:
        return self.cnn_params

    def backbone(self) -> torch.nn.Module:
        return self.model.encoder.backbone

    def batches_per_epoch(self) -> int:
        return -(-len(self.train_images) // self.opts.batch_size)

    def epoch_batches(self, epoch: int, position: int) -> Iterator[tuple[np.ndarray, int]]:
        n, size = len(self.train_images), self.opts.batch_size
        order = ResumableSampler(n, self.opts.seed, epoch, position).order()
        while position < n:
            batch = self.train_images[order[position:position + size]]
            if len(batch) < 2:  # a lone last image has no in-batch partner; the next epoch starts
                return
            position += len(batch)
            yield batch, len(batch)

    def loss(self, images: np.ndarray, iteration: int, train_cnn: bool) -> tuple[torch.Tensor, dict]:
        """The loss of training images (indices into the data set) and the batch accuracy."""
        opts = self.opts
        rng = np.random.default_rng([opts.seed, iteration])
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
        return loss, {"acc": acc}

    def validate(self, iteration: int, epoch: int) -> tuple[dict, float]:
        """Validation top-1/5/10 and mAP; the score is top-1."""
        metrics = evaluate_search(self.model, self.data, "val", self.opts.val_images_use, self.cache,
                                  batch_size=max(self.opts.batch_size, 32), device=self.device)
        entry = {"iteration": iteration, "epoch": epoch, **{k: metrics[k] for k in ("top1", "top5", "top10", "mAP")}}
        return entry, entry["top1"]

    def describe(self, entry: dict) -> str:
        return " ".join(f"{k} {entry[k]:.3f}" for k in ("top1", "top5", "top10", "mAP"))

    def checkpoint_state(self, iteration: int) -> dict:
        return {
            "kind": "search",
            "model": self.model.kind,
            "model_args": asdict(self.model.args),
            "state_dict": self.model.state_dict(),
            "vocab": self.data.vocab.to_dict(),
            "max_length": self.data.max_length,
            "run_id": self.run_id,
            "fingerprint": f"{self.run_id}:{iteration}",
        }

    def load_checkpoint_state(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["state_dict"])


class SearchTrainer(Engine):
    """The engine running a `SearchTask`; exposes the task's model and data."""

    def __init__(self, opts: SearchTrainOptions, explicit: set[str] | None = None) -> None:
        super().__init__(opts, explicit, SearchTask)

    @property
    def model(self) -> SearchModel:
        return self.task.model

    @property
    def data(self) -> SearchData:
        return self.task.data


def train_search(opts: SearchTrainOptions, explicit: set[str] | None = None) -> Path:
    """Train a search model with `opts`; return the run directory."""
    return SearchTrainer(opts, explicit).fit()
