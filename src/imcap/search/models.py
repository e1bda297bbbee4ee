"""Text -> image search models: GNA-RNN (pairwise affinity) and a dual encoder (one embedding space).

Both expose the same three calls, so evaluation, indexing and querying treat them alike:
    image_features(images (B, 3, S, S)) -> (B, F)     what a gallery stores per image
    text_features(tokens (Q, T))        -> per-query state (a tensor or a tuple of tensors)
    scores(text, gallery (G, F))        -> (Q, G)      ranking scores (GNA: logits; dual: cosines)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from imcap.data.vocab import NULL
from imcap.errors import ImcapError
from imcap.models.encoders import build_encoder

if TYPE_CHECKING:
    from imcap.data.vocab import Vocab

from imcap.search.options import MODELS
PAIR_BUDGET = 1 << 24  # floats per (pairs x units) buffer in batched GNA scoring (64 MiB each)


@dataclass
class SearchModelArgs:
    """Everything needed to rebuild a search model (stored in its checkpoints)."""

    model: str
    vocab_size: int  # rows of the word table: len(vocab), <NULL> included
    cnn: str = "small"
    cnn_width: int = 32
    image_size: int = 0
    input_encoding_size: int = 512
    rnn_size: int = 512
    units: int = 512
    embed_size: int = 256
    rnn_type: str = "gru"
    drop_prob_lm: float = 0.5

    @classmethod
    def from_dict(cls, raw: dict) -> SearchModelArgs:
        """Inverse of `dataclasses.asdict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class GNA(nn.Module):
    """GNA-RNN (Li et al. 2017): visual units, an LSTM over [word; image], word-level gates and unit-level attention.

    affinity(sentence, image) = sigmoid(sum_t gate_t * sum_n attention_t[n] * units[n]); `scores` returns the logit.
    """

    kind = "gna"

    def __init__(self, args: SearchModelArgs, cnn_weights: str | None = None) -> None:
        super().__init__()
        e, h, u = args.input_encoding_size, args.rnn_size, args.units
        self.args = args
        self.encoder = build_encoder(args.cnn, e, cnn_weights, args.cnn_width, args.image_size or None)
        self.visual_units = nn.Sequential(nn.Linear(e, u), nn.BatchNorm1d(u), nn.ReLU(inplace=True), nn.Linear(u, u))
        self.embed = nn.Embedding(args.vocab_size, e, padding_idx=NULL)
        self.lstm = nn.LSTM(2 * e, h, batch_first=True)  # reads [word embedding; image embedding] at every word
        self.gate = nn.Linear(h, 1)
        self.attention = nn.Linear(h, u)
        self.drop = nn.Dropout(args.drop_prob_lm)
        self.hidden_size, self.num_units, self.embed_size = h, u, e

    def _input_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM's input weights split into the word half (4H, E) and the image half (4H, E)."""
        w = self.lstm.weight_ih_l0
        return w[:, :self.embed_size], w[:, self.embed_size:]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [0, 1] -> [visual units (U); image half of the LSTM input (4H)] (B, U + 4H)."""
        feats = self.encoder(images)  # (B, E)
        return torch.cat([self.visual_units(feats), F.linear(feats, self._input_weights()[1])], dim=1)

    def text_features(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Word ids (Q, T) -> (word half of the LSTM input with both biases (Q, T, 4H), mask of real words (Q, T))."""
        bias = self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0
        return F.linear(self.embed(tokens), self._input_weights()[0], bias), tokens != NULL

    def _grid_logits(self, text: tuple[torch.Tensor, torch.Tensor], gallery: torch.Tensor) -> torch.Tensor:
        """The LSTM of every sentence with every gallery image at once (inference) -> logits (Q, G).

        The input projection of [word; image] is the sum of the precomputed word and image halves, so each step
        costs one (Q*G, H) x (H, 4H) product.
        """
        xw, mask = text  # (Q, T, 4H), (Q, T)
        units, xi = gallery[:, :self.num_units], gallery[:, self.num_units:]  # (G, U), (G, 4H)
        q, g = xw.size(0), xi.size(0)
        w_hh = self.lstm.weight_hh_l0  # (4H, H)
        h = xw.new_zeros(q * g, self.hidden_size)  # (P, H)
        c = xw.new_zeros(q * g, self.hidden_size)
        logit = xw.new_zeros(q, g)
        for t in range(xw.size(1)):
            x = (xw[:, t, None, :] + xi[None]).reshape(q * g, -1)  # (P, 4H)
            i, f, cand, o = torch.addmm(x, h, w_hh.T).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cand)
            h = torch.sigmoid(o) * torch.tanh(c)  # (P, H)
            gate = torch.sigmoid(self.gate(h)).view(q, g)  # word-level gate
            attn = torch.softmax(self.attention(h), dim=1).view(q, g, -1)  # (Q, G, U) unit-level attention
            logit += (attn * units[None]).sum(2) * gate * mask[:, t, None]
        return logit

    def pair_logits(self, images: torch.Tensor, tokens: torch.Tensor, image_of_pair: torch.Tensor) -> torch.Tensor:
        """Training forward: images (B, 3, S, S), sentences (P, T), image row of each sentence (P,) -> logits (P,)."""
        feats = self.encoder(images)  # (B, E)
        units = self.visual_units(feats)[image_of_pair]  # (P, U)
        words = self.drop(self.embed(tokens))  # (P, T, E)
        image = self.drop(feats)[image_of_pair, None, :].expand(-1, tokens.size(1), -1)  # (P, T, E)
        out, _ = self.lstm(torch.cat([words, image], dim=2))  # (P, T, H)
        out = self.drop(out)
        gate = torch.sigmoid(self.gate(out)).squeeze(2)  # (P, T) word-level gates
        attn = torch.softmax(self.attention(out), dim=2)  # (P, T, U) unit-level attention
        per_word = (attn * units[:, None, :]).sum(2) * gate  # (P, T)
        return (per_word * (tokens != NULL)).sum(1)

    def loss(self, images: torch.Tensor, tokens: torch.Tensor, image_of_pair: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Binary cross-entropy of the affinities against 1 (matching) / 0 (mismatched); also the 0.5-threshold accuracy."""
        logits = self.pair_logits(images, tokens, image_of_pair)  # (P,)
        acc = float(((logits > 0).float() == target).float().mean())
        return F.binary_cross_entropy_with_logits(logits, target), acc

    def scores(self, text: tuple[torch.Tensor, torch.Tensor], gallery: torch.Tensor) -> torch.Tensor:
        """Affinity logits of every sentence with every gallery image (Q, G), in chunks that bound memory."""
        xw, mask = text
        q, g = xw.size(0), gallery.size(0)
        width = 4 * self.hidden_size + self.num_units
        g_chunk = max(1, min(g, PAIR_BUDGET // width))
        q_chunk = max(1, PAIR_BUDGET // (width * g_chunk))
        lengths = mask.sum(1)  # (Q,)
        order = torch.argsort(lengths, descending=True)  # similar lengths share a chunk: fewer padded steps
        out = xw.new_empty(q, g)
        for qs in range(0, q, q_chunk):
            rows = order[qs:qs + q_chunk]
            steps = max(int(lengths[rows].max()), 1)
            sub = (xw[rows, :steps], mask[rows, :steps])
            for gs in range(0, g, g_chunk):
                out[rows, gs:gs + g_chunk] = self._grid_logits(sub, gallery[gs:gs + g_chunk])
        return out

    @staticmethod
    def to_probability(scores: torch.Tensor) -> torch.Tensor:
        """Logits -> affinities in (0, 1) (the sigmoid of GNA-RNN)."""
        return torch.sigmoid(scores)


class DualEncoder(nn.Module):
    """An image encoder and a sentence encoder (bidirectional GRU/LSTM, mean-pooled) into one unit-length space."""

    kind = "dual"

    def __init__(self, args: SearchModelArgs, cnn_weights: str | None = None) -> None:
        super().__init__()
        e, h, d = args.input_encoding_size, args.rnn_size, args.embed_size
        self.args = args
        self.encoder = build_encoder(args.cnn, e, cnn_weights, args.cnn_width, args.image_size or None)
        self.image_proj = nn.Linear(e, d)
        self.embed = nn.Embedding(args.vocab_size, e, padding_idx=NULL)
        if args.rnn_type not in ("gru", "lstm"):
            raise ImcapError(f"--rnn-type {args.rnn_type}: the dual encoder reads sentences with gru or lstm")
        rnn = nn.GRU if args.rnn_type == "gru" else nn.LSTM
        self.rnn = rnn(e, h, batch_first=True, bidirectional=True)
        self.text_proj = nn.Linear(2 * h, d)
        self.drop = nn.Dropout(args.drop_prob_lm)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # learned temperature, CLIP's start

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [0, 1] -> unit-length embeddings (B, D)."""
        return F.normalize(self.image_proj(self.encoder(images)), dim=1)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word ids (Q, T) -> unit-length embeddings (Q, D) (mean of the RNN outputs over the real words)."""
        mask = tokens != NULL  # (Q, T)
        lengths = mask.sum(1).clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.embed(tokens)), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.size(1))  # (Q, T, 2H)
        pooled = (out * mask[:, :, None]).sum(1) / lengths[:, None]  # (Q, 2H)
        return F.normalize(self.text_proj(self.drop(pooled)), dim=1)

    def scores(self, text: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every query with every gallery embedding: one matrix product (Q, G)."""
        return text @ gallery.to(text.dtype).T

    def loss(self, images: torch.Tensor, tokens: torch.Tensor, identity: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Symmetric InfoNCE over the batch: image i matches sentence i; other pairs of the same identity are left out.

        Also returns the in-batch text -> image top-1 accuracy.
        """
        img = self.image_features(images)  # (B, D)
        txt = self.text_features(tokens)  # (B, D)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * txt @ img.T  # (B, B): rows are sentences
        same = identity[:, None] == identity[None, :]
        eye = torch.eye(len(identity), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same & ~eye, float("-inf"))
        target = torch.arange(len(identity), device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        acc = float((logits.argmax(1) == target).float().mean())
        return loss, acc

    @staticmethod
    def to_probability(scores: torch.Tensor) -> torch.Tensor:
        """Cosines are reported as they are."""
        return scores


SearchModel = GNA | DualEncoder


def build_search_model(args: SearchModelArgs, cnn_weights: str | None = None) -> SearchModel:
    """Return a GNA or DualEncoder for `args`; `args.image_size` is set to the encoder's input size."""
    if args.model not in MODELS:
        raise ImcapError(f"unknown search model {args.model!r}; choose one of {', '.join(MODELS)}")
    model = GNA(args, cnn_weights) if args.model == "gna" else DualEncoder(args, cnn_weights)
    args.image_size = model.encoder.input_size
    return model


def model_args_dict(model: SearchModel) -> dict:
    """The JSON-ready arguments of a model (stored in checkpoints)."""
    return asdict(model.args)


@dataclass
class LoadedModel:
    """A search model in eval mode with what querying needs: vocabulary, caption length, identity of the weights."""

    model: SearchModel
    vocab: Vocab
    max_length: int
    fingerprint: str
    path: str
    info: dict


def load_search_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a search checkpoint (file or run directory); one-line ImcapError for captioning or foreign checkpoints."""
    from imcap.checkpoint import load_checkpoint, resolve_checkpoint
    from imcap.data.vocab import Vocab

    file = resolve_checkpoint(path)
    ckpt = load_checkpoint(file)
    if ckpt.get("kind") != "search":
        raise ImcapError(f"{file}: not a search model (a captioning checkpoint?); train one with `imcap search train`")
    try:
        args = SearchModelArgs.from_dict(ckpt["model_args"])
        model = build_search_model(args, cnn_weights=None)
        model.load_state_dict(ckpt["state_dict"])
        vocab = Vocab.from_dict(ckpt["vocab"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise ImcapError(f"{file}: search checkpoint does not match this imcap ({str(exc).splitlines()[0][:120]})") from None
    info = {k: ckpt.get(k) for k in ("iteration", "best_score", "best_iteration", "options")}
    info["metrics"] = (ckpt.get("history") or {}).get("best")
    model.to(device).eval()
    return LoadedModel(model, vocab, int(ckpt["max_length"]), str(ckpt["fingerprint"]), str(file.resolve()), info)
