"""The Transformer captioner (Vaswani et al. 2017, as self-critical.pytorch's TransformerModel): an encoder over
the K image features and a masked decoder over the words, with a key/value cache for step-by-step decoding.

    memory = Encoder(ReLU(W_f features) + W_b box)       `num_layers` self-attention layers over the K features
    h      = Decoder(embed(words) * sqrt(d) + PE(t), memory)   `num_layers` layers: masked self-attention,
                                                        cross-attention to the memory, feed-forward
    p(y_t) = softmax(W_o h_t)

Layers are pre-norm (LayerNorm before each sub-layer, one after the stack). PE is the sinusoidal position
encoding of the word positions. The box encoding tells the encoder where each feature sits:
"grid" gives every cell of a square CNN grid its box (x0, y0, x1, y1) in [0, 1]; "boxes" reads each
region's box from the last 4 columns of region features; "none" leaves the features unordered.

Step-by-step decoding keeps, for every decoder layer, the keys and values of the words so far in the
state (B, heads, t, d/heads), and the memory's keys and values computed once in `init_state`: each step
runs one token through the layers. `use_cache = False` re-runs the whole prefix at every step instead
(the reference the cache is tested and benchmarked against). Attention maps are the last layer's
cross-attention weights averaged over the heads.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from imcap.errors import ImcapError
from imcap.models.decoder import Decoder, State, StepOutput

POSITION_ENCODINGS = ("none", "grid", "boxes")

KeyValue = tuple[torch.Tensor, torch.Tensor]  # keys, values (B, heads, S, d/heads)


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Positions (T,) -> sinusoidal encodings (T, dim): sin(p / 10000^(2i/dim)) at 2i, cos at 2i+1."""
    freq = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    angles = positions.float().unsqueeze(1) * freq  # (T, ceil(dim/2))
    out = torch.zeros(positions.size(0), dim, device=positions.device)
    out[:, 0::2] = torch.sin(angles)
    out[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return out


def grid_boxes(k: int, like: torch.Tensor) -> torch.Tensor:
    """The boxes (K, 4) of the cells of a square grid flattened row-major: (x0, y0, x1, y1) in [0, 1]."""
    side = math.isqrt(k)
    if side * side != k:
        raise ImcapError(f"--position-encoding grid needs a square grid of features, got K={k}; use --position-encoding none (or boxes)")
    idx = torch.arange(k, device=like.device)
    row, col = (idx // side).to(like.dtype), (idx % side).to(like.dtype)
    return torch.stack([col, row, col + 1, row + 1], dim=1) / side  # (K, 4)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with `num_heads` heads; keys and values are projected once (`keys_values`) so they can be cached."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = num_heads
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, d) -> (B, heads, S, d/heads)."""
        return x.view(x.size(0), x.size(1), self.heads, -1).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> KeyValue:
        """Inputs (B, S, d) -> keys and values (B, heads, S, d/heads)."""
        k, v = self.key_value(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, causal: bool = False, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Queries from x (B, T, d) over keys/values (B, heads, S, d/heads) -> (B, T, d) and, with `need_weights`, the weights averaged over heads (B, T, S).

        `causal` (T == S): position t sees positions <= t only.
        """
        q = self._split(self.query(x))  # (B, heads, T, dh)
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ keys.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, heads, T, S)
            if causal:
                scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p, self.training) @ values  # (B, heads, T, dh)
            mean = weights.mean(dim=1)  # (B, T, S)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, dropout_p=p, is_causal=causal)  # (B, heads, T, dh)
            mean = None
        return self.out(out.transpose(1, 2).flatten(2)), mean  # (B, T, d)


class FeedForward(nn.Sequential):
    """d -> ff_size -> d with ReLU and dropout."""

    def __init__(self, d_model: int, ff_size: int, dropout: float) -> None:
        super().__init__(nn.Linear(d_model, ff_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_size, d_model))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention over the K features, then feed-forward."""

    def __init__(self, d_model: int, num_heads: int, ff_size: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ff = FeedForward(d_model, ff_size, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, K, d) -> (B, K, d)."""
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, *self.attn.keys_values(h))[0])
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-norm masked self-attention (with a key/value cache), cross-attention to the memory, feed-forward."""

    def __init__(self, d_model: int, num_heads: int, ff_size: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ff = FeedForward(d_model, ff_size, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KeyValue | None, memory: KeyValue, need_weights: bool) -> tuple[torch.Tensor, KeyValue, torch.Tensor | None]:
        """Words x (B, T, d) after the cached ones (keys/values (B, heads, t, dh), or None: T words from the start, causal)
        -> (B, T, d), the cache grown to t + T, and the cross-attention weights (B, T, K) when `need_weights`."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)  # (B, heads, T, dh)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (B, heads, t+T, dh)
        x = x + self.drop(self.self_attn(h, k, v, causal=cache is None and x.size(1) > 1)[0])
        attended, alpha = self.cross_attn(self.norm2(x), *memory, need_weights=need_weights)
        x = x + self.drop(attended)
        return x + self.drop(self.ff(self.norm3(x))), (k, v), alpha


class TransformerCaptioner(Decoder):
    """Transformer encoder-decoder over (B, K, C) features; `feature_dim` is C (including the 4 box columns with "boxes")."""

    feature_kind = "spatial"
    has_attention = True
    state_batch_dims = 0  # (memory keys/values per layer, word keys/values per layer (or the prefix ids)), all (B, ...)

    def __init__(self, vocab_size: int, feature_dim: int, d_model: int = 512, num_heads: int = 8, ff_size: int = 2048, num_layers: int = 3, dropout: float = 0.1, position_encoding: str = "none") -> None:
        super().__init__(vocab_size)
        if position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding must be one of {POSITION_ENCODINGS}")
        if d_model % num_heads:
            raise ImcapError(f"--num-heads {num_heads} must divide --d-model {d_model}")
        if position_encoding == "boxes" and feature_dim <= 4:
            raise ImcapError(f"--position-encoding boxes reads boxes from the last 4 feature columns, but the features have {feature_dim}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.position_encoding = position_encoding
        self.use_cache = True
        self.feat_proj = nn.Sequential(nn.Linear(feature_dim - (4 if position_encoding == "boxes" else 0), d_model), nn.ReLU(), nn.Dropout(dropout))
        self.box_proj = nn.Linear(4, d_model) if position_encoding != "none" else None
        self.encoder = nn.ModuleList(EncoderLayer(d_model, num_heads, ff_size, dropout) for _ in range(num_layers))
        self.enc_norm = nn.LayerNorm(d_model)
        self.embed = nn.Embedding(vocab_size + 1, d_model)
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, ff_size, dropout) for _ in range(num_layers))
        self.dec_norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.logit = nn.Linear(d_model, vocab_size + 1)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        """Features (B, K, C) -> the memory (B, K, d)."""
        boxes = None
        if self.position_encoding == "boxes":
            feats, boxes = feats[..., :-4], feats[..., -4:]  # (B, K, C-4), (B, K, 4)
        elif self.position_encoding == "grid":
            boxes = grid_boxes(feats.size(1), feats).unsqueeze(0)  # (1, K, 4)
        x = self.feat_proj(feats)  # (B, K, d)
        if boxes is not None:
            x = x + self.box_proj(boxes)
        for layer in self.encoder:
            x = layer(x)
        return self.enc_norm(x)

    def _memory(self, feats: torch.Tensor) -> tuple[KeyValue, ...]:
        """Features (B, K, C) -> each decoder layer's cross-attention keys and values (B, heads, K, dh)."""
        memory = self.encode(feats)
        return tuple(layer.cross_attn.keys_values(memory) for layer in self.layers)

    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Tokens (B, T) at positions start.. -> scaled embeddings plus position encodings (B, T, d)."""
        positions = torch.arange(start, start + tokens.size(1), device=tokens.device)
        x = self.embed(tokens) * math.sqrt(self.d_model) + sinusoid(positions, self.d_model).to(self.embed.weight.dtype)
        return self.drop(x)

    def _decode(self, x: torch.Tensor, memory: tuple[KeyValue, ...], caches: tuple[KeyValue, ...] | None) -> tuple[torch.Tensor, tuple[KeyValue, ...], torch.Tensor]:
        """Embedded words (B, T, d) after `caches` (None: from the start) -> outputs (B, T, d), grown caches, last-layer cross-attention (B, T, K)."""
        grown, alpha = [], None
        for i, layer in enumerate(self.layers):
            x, kv, alpha = layer(x, caches[i] if caches is not None else None, memory[i], need_weights=i == len(self.layers) - 1)
            grown.append(kv)
        return self.dec_norm(x), tuple(grown), alpha

    def _logprobs(self, h: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (..., d) -> log-probabilities (..., V+1)."""
        return torch.log_softmax(self.logit(h), dim=-1)

    def init_state(self, feats: torch.Tensor) -> State:
        """Features (B, K, C) -> (memory keys/values per layer, empty word caches (B, heads, 0, dh) per layer (or empty prefix ids (B, 0)))."""
        memory = self._memory(feats)
        keys = memory[0][0]  # (B, heads, K, dh)
        if not self.use_cache:
            return memory, keys.new_zeros(keys.size(0), 0, dtype=torch.long)
        empty = keys.new_zeros(keys.size(0), self.num_heads, 0, keys.size(3))  # (B, heads, 0, dh)
        return memory, tuple((empty, empty) for _ in self.layers)

    def step(self, tokens: torch.Tensor, state: State) -> StepOutput:
        """Tokens (B,) -> log-probabilities (B, V+1), the state with this word cached, attention weights (B, K)."""
        memory, words = state
        if not self.use_cache:  # re-run the whole prefix
            prefix = torch.cat([words, tokens.unsqueeze(1)], dim=1)  # (B, t+1)
            h, _, alpha = self._decode(self._embed(prefix, 0), memory, None)  # (B, t+1, d)
            return self._logprobs(h[:, -1]), (memory, prefix), alpha[:, -1]
        t = words[0][0].size(2)  # words decoded so far
        h, caches, alpha = self._decode(self._embed(tokens.unsqueeze(1), t), memory, words)  # (B, 1, d)
        return self._logprobs(h[:, 0]), (memory, caches), alpha[:, 0]

    def teacher_force(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the state before <START> (its memory) and input tokens (B, T) -> log-probabilities (B, T, V+1), cross-attention (B, T, K), in one masked pass."""
        h, _, alpha = self._decode(self._embed(tokens, 0), state[0], None)  # (B, T, d)
        return self._logprobs(h), alpha
