"""CaptionModel: an image encoder plus a decoder, built from a plain `model_args` dict."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from imcap.errors import ImcapError
from imcap.models.attention import ShowAttendTell
from imcap.models.coatt import CoAttention, encode_conditions
from imcap.models.decoder import Decoder, Features
from imcap.models.encoders import ImageEncoder, build_encoder
from imcap.models.show_tell import ShowTell
from imcap.models.transformer import TransformerCaptioner
from imcap.models.updown import UpDown

DECODERS = ("show_tell", "show_attend_tell", "coatt", "updown", "transformer")


@dataclass
class ModelArgs:
    """Everything needed to rebuild a model; stored in checkpoints (fields added later keep defaults that rebuild older ones)."""

    model: str = "show_tell"
    cnn: str = "small"
    cnn_width: int = 32
    image_size: int = 0  # 0: the CNN's own input size (64 small, 224 others)
    input_encoding_size: int = 512
    rnn_size: int = 512
    num_layers: int = 1  # RNN layers; transformer: encoder and decoder layers
    rnn_type: str = "lstm"
    drop_prob_lm: float = 0.5
    image_input: str = "first"
    feature_dim: int = 0  # size of precomputed region features when cnn is "none"
    vocab_size: int = 0
    condition_field: str = ""  # coatt: the images.json "extra" field it is conditioned on (e.g. "answer")
    condition_vocab: list[str] = field(default_factory=list)  # coatt: the condition's words (ids 2...)
    # transformer (issue 16)
    d_model: int = 512
    num_heads: int = 8
    ff_size: int = 2048
    transformer_dropout: float = 0.1
    position_encoding: str = "auto"  # auto: grid on a CNN's grid, none on region features; or none, grid, boxes


class CaptionModel(nn.Module):
    """Encoder (CNN backbone + head) and decoder; the backbone can be frozen per call."""

    def __init__(self, encoder: ImageEncoder, decoder: Decoder, args: ModelArgs) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.args = args
        self.grid_size: tuple[int, ...] | None = None  # (h, w) of the last encoded CNN grid (attention maps)

    @property
    def feature_kind(self) -> str:
        """What the decoder reads: "pooled" (B, E) image embeddings or "spatial" (B, K, C) grids/regions."""
        return self.decoder.feature_kind

    @property
    def conditioned(self) -> bool:
        """Whether the decoder also reads a condition (coatt: the answer), given to encode() as ids (B, Lc)."""
        return self.decoder.conditioned

    def encode_condition(self, texts: list[str]) -> torch.Tensor:
        """Condition texts (e.g. answers) -> ids (B, Lc) in the model's condition vocabulary."""
        return encode_conditions(texts, self.args.condition_vocab).to(self.encoder.mean.device)

    def condition_for(self, data, indices: list[int]) -> torch.Tensor:
        """Condition ids (B, Lc) of images `indices` of a PreproData (their `args.condition_field`)."""
        return self.encode_condition(data.condition_texts(indices, self.args.condition_field))

    def _with_condition(self, feats: torch.Tensor, condition: torch.Tensor | None) -> Features:
        if not self.conditioned:
            return feats
        if condition is None:
            raise ImcapError(f"{self.args.model} is conditioned on {self.args.condition_field or 'a text'}: give a condition")
        return feats, condition

    def encode(self, images: torch.Tensor, train_backbone: bool = True, condition: torch.Tensor | None = None) -> Features:
        """Images (B, 3, S, S) in [0, 1] (and condition ids (B, Lc)) -> decoder features; no backbone gradient when frozen."""
        with torch.set_grad_enabled(train_backbone and torch.is_grad_enabled()):
            grid = self.encoder.grid(images)  # (B, C, h, w)
            if self.feature_kind == "pooled":
                pooled = self.encoder.pool(grid)  # (B, feature_dim)
        if self.feature_kind == "pooled":
            return self.encoder.head(pooled)  # (B, E): the head always trains
        self.grid_size = tuple(grid.shape[2:])  # (h, w): attention maps are h x w
        return self._with_condition(grid.flatten(2).transpose(1, 2), condition)  # (B, h*w, C)

    def encode_features(self, feats: torch.Tensor, condition: torch.Tensor | None = None) -> Features:
        """Precomputed features (and condition ids (B, Lc)) -> decoder features: pooled (B, D) or spatial/regions (B, K, C)."""
        if self.feature_kind == "pooled":
            if feats.dim() == 3:
                feats = feats.mean(dim=1)  # regions -> one vector
            return self.encoder.head(feats)  # (B, E)
        if feats.dim() != 3:
            raise ImcapError(f"{self.args.model} needs spatial or region features (B, K, C), got {tuple(feats.shape)}")
        self.grid_size = None  # regions have no grid
        return self._with_condition(feats, condition)

    def forward(self, inputs: torch.Tensor, tokens: torch.Tensor, train_backbone: bool = True, from_features: bool = False, condition: torch.Tensor | None = None, ss_prob: float = 0.0,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, 3, S, S) or precomputed features, and tokens (B, n, T) -> log-probabilities (B*n, T, V+1).

        `ss_prob` > 0: scheduled sampling (each input word replaced by a model sample with this probability).
        `return_attention`: return (log-probabilities, attention weights (B*n, T, K) or None for decoders without attention).
        """
        feats = self.encode_features(inputs, condition) if from_features else self.encode(inputs, train_backbone, condition)  # once per image
        logprobs, alphas = self.decoder.forward_with_attention(feats, tokens.flatten(0, 1), ss_prob, repeats=tokens.size(1))  # decoder's per-image work once
        return (logprobs, alphas) if return_attention else logprobs

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The CNN backbone's parameters (neuraltalk2's `cnn_params`)."""
        return list(self.encoder.backbone.parameters()) if self.encoder.backbone is not None else []

    def language_parameters(self) -> list[nn.Parameter]:
        """Everything else: the encoder head and the decoder."""
        backbone = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]


def build_decoder(args: ModelArgs, feature_dim: int, has_cnn: bool) -> Decoder:
    """The decoder `args.model`; `feature_dim` is C of the grid/region features, `has_cnn` whether they come from a CNN grid."""
    sizes = (args.input_encoding_size, args.rnn_size, args.num_layers, args.drop_prob_lm, args.rnn_type)
    if args.model == "show_attend_tell":
        return ShowAttendTell(args.vocab_size, feature_dim, *sizes)
    if args.model == "coatt":
        return CoAttention(args.vocab_size, feature_dim, len(args.condition_vocab) + 2, *sizes)
    if args.model == "updown":
        return UpDown(args.vocab_size, feature_dim, *sizes)
    if args.model == "transformer":
        position = args.position_encoding if args.position_encoding != "auto" else ("grid" if has_cnn else "none")
        return TransformerCaptioner(args.vocab_size, feature_dim, args.d_model, args.num_heads, args.ff_size, args.num_layers, args.transformer_dropout, position)
    return ShowTell(args.vocab_size, *sizes, args.image_input)


def build_model(args: ModelArgs, cnn_weights: str | None = None) -> CaptionModel:
    """Build a CaptionModel; `cnn_weights` as in `build_encoder` (None: random init)."""
    if args.model not in DECODERS:
        raise ImcapError(f"unknown model {args.model!r}; choose one of {', '.join(DECODERS)}")
    if args.vocab_size <= 0:
        raise ImcapError("model_args.vocab_size must be positive")
    encoder = build_encoder(args.cnn, args.input_encoding_size, cnn_weights, args.cnn_width, args.image_size, args.feature_dim)
    return CaptionModel(encoder, build_decoder(args, encoder.grid_dim, encoder.backbone is not None), args)


def model_args_from_dict(raw: dict) -> ModelArgs:
    """Inverse of `dataclasses.asdict(ModelArgs)`, ignoring unknown keys from newer versions."""
    known = set(asdict(ModelArgs()))
    return ModelArgs(**{k: v for k, v in raw.items() if k in known})
