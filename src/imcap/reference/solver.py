"""CaptioningSolver: minibatch training of a CaptioningRNN on precomputed image features."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imcap.errors import ImcapError
from imcap.reference.model import CaptioningRNN
from imcap.reference.optim import UPDATE_RULES

log = logging.getLogger(__name__)


@dataclass
class CaptionData:
    """Captions (K, T) int (<START> first, <NULL>-padded) of images whose features (M, D) are given.

    `image_idxs` (K,) names the feature row of each caption; None means caption k belongs to row k.
    """

    features: np.ndarray
    captions: np.ndarray
    image_idxs: np.ndarray | None = None
    name: str = field(default="data", compare=False)

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ImcapError(f"{self.name}: features must be an N x D array, got shape {self.features.shape}")
        if self.captions.ndim != 2 or self.captions.shape[1] < 2 or not np.issubdtype(self.captions.dtype, np.integer):
            raise ImcapError(f"{self.name}: captions must be an int array N x T with T >= 2, got "
                             f"{self.captions.dtype} {self.captions.shape}")
        if self.image_idxs is None:
            if len(self.captions) != len(self.features):
                raise ImcapError(f"{self.name}: {len(self.captions)} captions but {len(self.features)} feature rows "
                                 "(give image_idxs to map captions to rows)")
            self.image_idxs = np.arange(len(self.captions))
        elif self.image_idxs.shape != (len(self.captions),) or (
            len(self.captions) and not (0 <= self.image_idxs.min() and self.image_idxs.max() < len(self.features))
        ):
            raise ImcapError(f"{self.name}: image_idxs must give one feature row in [0, {len(self.features)}) "
                             "per caption")

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (features (B, D), captions (B, T)) of the captions at `rows`."""
        return self.features[self.image_idxs[rows]], self.captions[rows]


class CaptioningSolver:
    """Trains `model` with one update rule (sgd, sgd_momentum, rmsprop, adam) and per-epoch lr decay.

    After `train()`, `loss_history` holds every minibatch loss, `epoch_loss_history` the loss on `val`
    (or on `train` when no val set is given) after each epoch, and `model.params` the best params by it.
    """

    def __init__(
        self,
        model: CaptioningRNN,
        train: CaptionData,
        val: CaptionData | None = None,
        update_rule: str = "adam",
        optim_config: dict[str, Any] | None = None,
        lr_decay: float = 1.0,
        batch_size: int = 100,
        num_epochs: int = 10,
        seed: int = 0,
    ) -> None:
        if update_rule not in UPDATE_RULES:
            raise ImcapError(f"update_rule: must be one of {', '.join(UPDATE_RULES)}, not {update_rule!r}")
        if batch_size < 1 or num_epochs < 0:
            raise ImcapError("solver: batch_size must be >= 1 and num_epochs >= 0")
        if len(train) == 0:
            raise ImcapError(f"{train.name}: no training captions")
        self.model, self.train_data, self.val_data = model, train, val
        self.update_rule = UPDATE_RULES[update_rule]
        self.lr_decay, self.batch_size, self.num_epochs = lr_decay, batch_size, num_epochs
        self.rng = np.random.default_rng(seed)
        self.optim_configs = {name: dict(optim_config or {}) for name in model.params}
        self.loss_history: list[float] = []
        self.epoch_loss_history: list[float] = []
        self.best_loss = math.inf
        self.best_params: dict[str, np.ndarray] = {k: v.copy() for k, v in model.params.items()}

    def step(self, rows: np.ndarray) -> float:
        """One update on the training captions at `rows`; returns the minibatch loss."""
        features, captions = self.train_data.batch(rows)
        loss, grads = self.model.loss(features, captions)
        for name, w in self.model.params.items():
            self.model.params[name], self.optim_configs[name] = self.update_rule(
                w, grads[name], self.optim_configs[name]
            )
        self.loss_history.append(loss)
        return loss

    def check_loss(self, data: CaptionData) -> float:
        """Mean per-caption loss of the current model on all of `data`."""
        total = 0.0
        for start in range(0, len(data), self.batch_size):
            rows = np.arange(start, min(start + self.batch_size, len(data)))
            total += self.model.loss(*data.batch(rows), backward=False)[0] * len(rows)
        return total / max(len(data), 1)

    def train(self) -> None:
        """Run `num_epochs` epochs of shuffled minibatches, then keep the best params."""
        n = len(self.train_data)
        for epoch in range(self.num_epochs):
            order = self.rng.permutation(n)
            for start in range(0, n, self.batch_size):
                loss = self.step(order[start : start + self.batch_size])
                log.debug("epoch %d iteration %d: loss %.4f", epoch + 1, len(self.loss_history), loss)
            for config in self.optim_configs.values():  # every config holds its learning_rate after a step
                config["learning_rate"] *= self.lr_decay
            self._end_epoch(epoch)
        self.model.params = {k: v.copy() for k, v in self.best_params.items()}

    def _end_epoch(self, epoch: int) -> None:
        """Record the epoch's held-out (or training) loss and remember the params if they are the best."""
        loss = self.check_loss(self.val_data if self.val_data is not None else self.train_data)
        self.epoch_loss_history.append(loss)
        log.debug("epoch %d/%d: %s loss %.4f", epoch + 1, self.num_epochs,
                 "val" if self.val_data is not None else "train", loss)
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_params = {k: v.copy() for k, v in self.model.params.items()}

