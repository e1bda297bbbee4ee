"""Self-critical sequence training (Rennie et al. 2017): REINFORCE with a CIDEr-D reward and a baseline.

For each image, K captions are sampled in one batch (B*K rows); each gets a reward (CIDEr-D against the
training references with training-corpus document frequencies, plus an optional BLEU-4 term); the
baseline is the reward of the greedy caption ("greedy") or the mean reward of the other K-1 samples
("mean", no extra decoding). The loss is -(reward - baseline) * log p(sample), averaged over tokens,
minus an optional entropy bonus. Sampling draws from the global torch RNG, which checkpoints save, so
a resumed run samples exactly what an uninterrupted one would have.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from imcap.data.loader import PreproData
from imcap.data.vocab import END, NULL
from imcap.decoding import decode_steps, greedy
from imcap.errors import ImcapError
from imcap.models.decoder import Decoder, Features

log = logging.getLogger(__name__)

BASELINES = ("greedy", "mean")


@dataclass
class SCSTOptions:
    """How self-critical training samples, rewards and regularises (the --sc-* flags)."""

    sample_n: int = 5
    baseline: str = "greedy"
    bleu4_weight: float = 0.0
    entropy_weight: float = 0.0
    unfinished_penalty: float = 0.0
    temperature: float = 1.0
    max_length: int = 16

    def check(self) -> None:
        """Raise ImcapError for inconsistent options."""
        if self.baseline not in BASELINES:
            raise ImcapError(f"--sc-baseline {self.baseline}: choose one of {', '.join(BASELINES)}")
        if self.sample_n < 1:
            raise ImcapError(f"--sc-sample-n {self.sample_n}: need at least one sample per image")
        if self.baseline == "mean" and self.sample_n < 2:
            raise ImcapError("--sc-baseline mean averages the other samples: give --sc-sample-n 2 or more")
        if self.temperature <= 0:
            raise ImcapError(f"--sc-temperature {self.temperature}: must be positive")


class Samples(NamedTuple):
    """K samples per image: ids (B*K, L), their log-probabilities (B*K, L), step entropies (B*K, L)."""

    seqs: torch.Tensor
    logps: torch.Tensor
    entropy: torch.Tensor


def sample_with_entropy(decoder: Decoder, feats: Features, max_length: int, temperature: float = 1.0, with_entropy: bool = False, repeats: int = 1) -> Samples:
    """Sample `repeats` captions per image of `feats` (batched, image-major); log-probabilities keep their gradient.

    The entropy of each step's distribution is computed only when `with_entropy` (zeros otherwise).
    """
    entropies: list[torch.Tensor] = []

    def choose(logprobs: torch.Tensor) -> torch.Tensor:  # (N, V+1), <NULL>/<START> at -inf
        if with_entropy:  # of the distribution sampled from: renormalised over the allowed tokens
            lp = logprobs.float().log_softmax(dim=1)
            entropies.append(-(lp.exp() * lp.masked_fill(torch.isinf(lp), 0.0)).sum(dim=1))  # (N,)
        probs = (logprobs.detach().float() / temperature).softmax(dim=1)
        return torch.multinomial(probs, 1).squeeze(1)

    seqs, logps = decode_steps(decoder, feats, max_length, choose, repeats=repeats)  # (N, L), (N, L)
    entropy = torch.stack(entropies, 1) if with_entropy else torch.zeros_like(logps)
    return Samples(seqs, logps, entropy)


def _detach(feats):
    return tuple(f.detach() for f in feats) if isinstance(feats, tuple) else feats.detach()


def sample_captions(model, inputs: torch.Tensor, k: int, max_length: int, temperature: float = 1.0, with_entropy: bool = False, train_backbone: bool = True,
                    from_features: bool = False, condition: torch.Tensor | None = None) -> tuple:
    """Encode once per image, sample `k` captions per image; returns (seqs, logps, entropy, detached features).

    Rows are image-major: row b*k + j is sample j of image b. Run it through the training wrapper
    (`imcap.distributed.TrainForward`) so that DistributedDataParallel sees the forward.
    """
    if from_features:
        feats = model.encode_features(inputs, condition=condition)  # (B, ...) or a tuple of them
    else:
        feats = model.encode(inputs, train_backbone, condition=condition)
    samples = sample_with_entropy(model.decoder, feats, max_length, temperature, with_entropy, repeats=k)
    return (*samples, _detach(feats))


@torch.no_grad()
def greedy_captions(decoder: Decoder, feats: Features, max_length: int) -> torch.Tensor:
    """Arg-max captions (B, L) with dropout off; the decoder's training mode is restored afterwards."""
    was_training = decoder.training
    decoder.eval()
    try:
        return greedy(decoder, feats, max_length)[0]
    finally:
        decoder.train(was_training)


def mean_of_others(rewards: np.ndarray) -> np.ndarray:
    """Leave-one-out baseline: for rewards (B, K), the mean of the other K-1 rewards of the same image."""
    k = rewards.shape[1]
    return (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)


def policy_loss(logps: torch.Tensor, seqs: torch.Tensor, advantage: torch.Tensor, entropy: torch.Tensor | None = None, entropy_weight: float = 0.0) -> torch.Tensor:
    """REINFORCE: -(advantage * log p) averaged over real tokens (words and <END>), minus an entropy bonus.

    logps, seqs, entropy: (N, L); advantage: (N,) without gradient.
    """
    mask = (seqs != NULL).to(logps.dtype)  # (N, L): <NULL> only after <END>
    tokens = mask.sum().clamp(min=1.0)
    loss = -(advantage.unsqueeze(1) * logps.float() * mask).sum() / tokens
    if entropy is not None and entropy_weight > 0:
        loss = loss - entropy_weight * (entropy.float() * mask).sum() / tokens
    return loss


class CaptionReward:
    """CIDEr-D (with document frequencies of the training references, built once) plus w * BLEU-4.

    Scores rows of token ids against the raw training captions of `images.json`, mapped through the
    vocabulary; `__call__(image_ids, seqs)` returns one reward per row.
    """

    def __init__(self, data: PreproData, bleu4_weight: float = 0.0, split: str = "train") -> None:
        from imcap.metrics.cider import CiderDReward

        indices = data.split_indices(split)
        refs = {data.images[i]["id"]: data.images[i]["captions"] for i in indices}
        if not refs:
            raise ImcapError(f"{data.root}: no {split} captions to compute self-critical rewards from")
        self.words = data.vocab.idx_to_word
        self.cider = CiderDReward(refs, vocab=self.words)
        self.bleu4_weight = bleu4_weight
        self._bleu_refs: dict | None = None
        if bleu4_weight > 0:
            from imcap.metrics.tokenizer import PTBTokenizer

            tok = PTBTokenizer()
            self._bleu_refs = {k: [c.split() for c in tok.tokenize_captions(list(v))] for k, v in refs.items()}

    def __call__(self, image_ids: list, seqs: np.ndarray) -> np.ndarray:
        """Rewards (N,) of token-id rows seqs (N, L) for images image_ids (N)."""
        reward = self.cider.score(image_ids, seqs)
        if self._bleu_refs is not None:
            from imcap.metrics.bleu import bleu_from_stats, bleu_stats

            hyps = [self._words(row) for row in seqs]
            _, per_image = bleu_from_stats(bleu_stats(hyps, [self._bleu_refs[i] for i in image_ids], 4))
            reward = reward + self.bleu4_weight * np.asarray(per_image[3])
        return reward

    def _words(self, row: np.ndarray) -> list[str]:
        words = []
        for t in row.tolist():
            if t in (NULL, END):
                break
            words.append(self.words[t])
        return words


class SelfCritical:
    """One SCST loss per batch: sample, reward, baseline, policy loss; the reward is built on first use."""

    def __init__(self, data: PreproData, opts: SCSTOptions) -> None:
        opts.check()
        self.data = data
        self.opts = opts
        self._reward: CaptionReward | None = None

    @property
    def reward(self) -> CaptionReward:
        """The cached reward (document frequencies computed once per run)."""
        if self._reward is None:
            log.info("self-critical: computing CIDEr-D document frequencies of the training references")
            self._reward = CaptionReward(self.data, self.opts.bleu4_weight)
        return self._reward

    def loss(self, net, model, inputs: torch.Tensor, indices: list[int], train_backbone: bool = True, from_features: bool = False, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """SCST loss of a batch (images or features of data images `indices`) and its statistics.

        `net(fn, *args)` runs `fn(model, *args)` (the DDP-wrapped training forward); `model` is the bare
        CaptionModel, used for the greedy baseline without gradient.
        """
        o = self.opts
        k = o.sample_n
        seqs, logps, entropy, feats = net(sample_captions, inputs, k, o.max_length, o.temperature, o.entropy_weight > 0, train_backbone, from_features, condition)
        ids = [self.data.images[i]["id"] for i in indices]
        sample_ids = [i for i in ids for _ in range(k)]  # image-major, like the sample rows
        rewards = self.reward(sample_ids, seqs.cpu().numpy())  # (B*K,)
        if o.unfinished_penalty > 0:
            unfinished = ~(seqs == END).any(dim=1).cpu().numpy()  # never said <END>: ran to max length
            rewards = rewards - o.unfinished_penalty * unfinished
        if o.baseline == "greedy":
            best = greedy_captions(model.decoder, feats, o.max_length).cpu().numpy()  # (B, L)
            baseline = np.repeat(self.reward(ids, best), k)  # (B*K,)
        else:
            baseline = mean_of_others(rewards.reshape(-1, k)).reshape(-1)
        advantage = torch.as_tensor(rewards - baseline, dtype=torch.float32, device=logps.device)
        loss = policy_loss(logps, seqs, advantage, entropy, o.entropy_weight)
        mask = (seqs != NULL).float()  # (B*K, L)
        tokens = mask.sum().clamp(min=1.0)
        stats = {
            "reward": float(rewards.mean()),
            "baseline": float(baseline.mean()),
            "sample_nll": float(-(logps.detach().float() * mask).sum() / tokens),  # a Monte Carlo entropy estimate
            "length": float(mask.sum(dim=1).mean()),  # tokens per sample, <END> included
        }
        if o.entropy_weight > 0:
            stats["entropy"] = float((entropy.detach().float() * mask).sum() / tokens)
        return loss, stats


class SCSTLearningRate:
    """The language model's learning rate during SCST: `rate`, halved when the baseline reward falls steadily.

    The baseline reward (of the greedy caption; with --sc-baseline mean, the mean sample reward) is averaged
    over blocks of `window` SCST iterations. The rate is halved when the last `patience` blocks each fell
    below the one before and, together, by more than `z` standard errors of a difference of two block
    means (from the spread of the rewards inside the blocks): a steady drop that noise rarely makes. Then
    the count starts again. A policy pushed too far by too large a step loses the reward of its greedy
    caption first. `window` 0 turns the safeguard off.
    """

    factor = 0.5
    z = 3.0

    def __init__(self, rate: float, window: int, patience: int) -> None:
        self.rate = rate
        self.window = window
        self.patience = patience
        self.block: list[float] = []  # baseline rewards of the block being filled
        self.means: list[float] = []  # averages of the last patience + 1 full blocks
        self.variances: list[float] = []  # and the variances of the rewards inside them
        self.last_iteration = -1
        self.lowered: list[int] = []  # iterations at which the rate was halved

    def step(self, iteration: int, baseline_reward: float) -> float:
        """Record the (process-averaged) baseline reward of SCST iteration `iteration`, once; return the learning rate for it."""
        if self.window <= 0 or iteration <= self.last_iteration:
            return self.rate
        self.last_iteration = iteration
        self.block.append(float(baseline_reward))
        if len(self.block) < self.window:
            return self.rate
        rewards = np.asarray(self.block)
        self.block = []
        self.means = [*self.means, float(rewards.mean())][-(self.patience + 1):]
        self.variances = [*self.variances, float(rewards.var(ddof=1)) if self.window > 1 else 0.0][-(self.patience + 1):]
        if len(self.means) > self.patience and self._fell_steadily():
            self.rate *= self.factor
            self.means, self.variances = [], []
            self.lowered.append(iteration)
            log.warning("iteration %d: the SCST baseline reward fell steadily over the last %d blocks of %d iterations; SCST learning rate lowered to %.3g",
                        iteration + 1, self.patience, self.window, self.rate)
        return self.rate

    def _fell_steadily(self) -> bool:
        """Every one of the last `patience` blocks below the one before, and the drop over them above z standard errors."""
        steady = all(later < earlier for earlier, later in zip(self.means, self.means[1:]))
        se = math.sqrt(2.0 * sum(self.variances) / len(self.variances) / self.window)
        return steady and self.means[0] - self.means[-1] > self.z * se

    def state_dict(self) -> dict:
        """Everything `load_state_dict` needs for an exact resume (plain Python values)."""
        return {"rate": self.rate, "block": list(self.block), "means": list(self.means), "variances": list(self.variances),
                "last_iteration": self.last_iteration, "lowered": list(self.lowered)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`."""
        self.rate, self.block, self.means, self.variances = state["rate"], list(state["block"]), list(state["means"]), list(state["variances"])
        self.last_iteration, self.lowered = state["last_iteration"], list(state["lowered"])
