"""Learning-rate schedules: plain functions of the iteration, which the training loop calls every step.

- "step": neuraltalk2's decay (halve every `every` iterations after `start`), after an optional linear warm-up;
- "noam": the Transformer schedule (Vaswani et al. 2017): linear warm-up to the base rate over `warmup`
  iterations, then decay with the inverse square root of the iteration. The paper's
  d_model^-0.5 * min(n^-0.5, n * warmup^-1.5) is this with base = (d_model * warmup)^-0.5; here the base
  rate is the peak, so --learning-rate means the same under every schedule.
"""
from __future__ import annotations

import math

SCHEDULES = ("step", "noam")


def decayed_lr(base: float, iteration: int, start: int, every: int) -> float:
    """neuraltalk2's schedule: halve every `every` iterations after `start` (continuous); `start` < 0: constant."""
    if start < 0 or iteration <= start:
        return base
    return base * 0.5 ** ((iteration - start) / every)


def warmup_factor(iteration: int, warmup: int) -> float:
    """Linear warm-up: (iteration + 1) / warmup for the first `warmup` iterations, then 1 (0: no warm-up)."""
    if warmup <= 0:
        return 1.0
    return min(1.0, (iteration + 1) / warmup)


def noam_lr(base: float, iteration: int, warmup: int) -> float:
    """The Transformer schedule with peak `base` at iteration `warmup`: base * min(n / warmup, sqrt(warmup / n)), n = iteration + 1."""
    n = iteration + 1
    warmup = max(warmup, 1)
    return base * min(n / warmup, math.sqrt(warmup / n))


def scheduled_lr(schedule: str, base: float, iteration: int, warmup: int = 0, decay_start: int = -1, decay_every: int = 50000) -> float:
    """The learning rate of iteration `iteration` (0-based) under `schedule` (one of SCHEDULES)."""
    if schedule == "noam":
        return noam_lr(base, iteration, warmup)
    if schedule == "step":
        return warmup_factor(iteration, warmup) * decayed_lr(base, iteration, decay_start, decay_every)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
