"""Greedy captioning over onnxruntime from an export folder's ONNX graphs (see onnx_graphs.py), as `imcap.decoding.greedy` does."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from imcap.data.images import image_to_tensor, load_image
from imcap.data.vocab import END, NULL, START, Vocab
from imcap.errors import ImcapError
from imcap.export.folder import check_file, read_config, read_vocab
from imcap.models.coatt import encode_conditions

ENCODER, STEP = "encoder.onnx", "decoder_step.onnx"


def require_onnx() -> tuple[Any, Any]:
    """The onnx and onnxruntime modules; a one-line ImcapError naming the extra when they are missing."""
    try:
        import onnx
        import onnxruntime
    except ModuleNotFoundError as exc:
        raise ImcapError(f"--onnx needs the scale extra ({exc.name} is missing): pip install 'imcap[scale]'") from None
    return onnx, onnxruntime


def load_sessions(folder: Path, providers: Sequence[str] | None = None) -> tuple[Any, Any]:
    """onnxruntime sessions of the encoder and step graphs in `folder`."""
    _, ort = require_onnx()
    providers = list(providers or ["CPUExecutionProvider"])
    sessions = []
    for name in (ENCODER, STEP):
        try:
            sessions.append(ort.InferenceSession(str(folder / name), providers=providers))
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types for unreadable graphs)
            raise ImcapError(f"{folder / name}: onnxruntime cannot load it ({str(exc).splitlines()[0][:120]})") from None
    return sessions[0], sessions[1]


def step_feeds(tokens: np.ndarray, parts: Sequence[np.ndarray], n_state: int) -> dict[str, np.ndarray]:
    """The inputs of decoder_step.onnx: tokens, then `n_state` state tensors, then the feature tensors."""
    feeds = {"tokens": tokens.astype(np.int64)}
    for i, part in enumerate(parts):
        feeds[f"state_{i}" if i < n_state else f"feature_{i - n_state}"] = part
    return feeds


def greedy_onnx(encoder: Any, step: Any, images: np.ndarray, n_state: int, max_length: int = 16, condition: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max captions over onnxruntime, as `imcap.decoding.greedy`: ids (B, L) padded with <NULL>, summed log-probabilities (B,)."""
    feeds = {"images": images.astype(np.float32)} | ({"condition": condition.astype(np.int64)} if condition is not None else {})
    parts = encoder.run(None, feeds)
    state, features = parts[:n_state], parts[n_state:]
    batch = images.shape[0]
    rows = np.arange(batch)
    tokens = np.full(batch, START, dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    seqs, logps = [], []
    for t in range(max_length + 1):  # at most max_length words, then <END>
        logprobs, *state = step.run(None, step_feeds(tokens, state + features, n_state))  # (B, V+1), next state
        if t == max_length:  # only <END> is left
            end = logprobs[:, END].copy()
            logprobs = np.full_like(logprobs, -np.inf)
            logprobs[:, END] = end
        else:  # <NULL> and <START> are never outputs
            logprobs[:, NULL] = -np.inf
            logprobs[:, START] = -np.inf
        tokens = np.where(done, NULL, logprobs.argmax(axis=1))  # (B,)
        logps.append(np.where(done, 0.0, logprobs[rows, tokens]).astype(np.float32))
        seqs.append(tokens)
        done = done | (tokens == END)
        if done.all():
            break
    return np.stack(seqs, axis=1), np.stack(logps, axis=1).sum(axis=1)


class OnnxCaptioner:
    """An export folder's ONNX graphs and vocabulary: greedy captions with onnxruntime, no PyTorch model."""

    def __init__(self, encoder: Any, step: Any, vocab: Vocab, config: dict) -> None:
        self.encoder = encoder
        self.step = step
        self.vocab = vocab
        self.config = config
        self.n_state = int(config["onnx"]["state"])

    @classmethod
    def load(cls, folder: str | Path, providers: Sequence[str] | None = None) -> OnnxCaptioner:
        """Load `imcap export --onnx` output; `providers` as in onnxruntime (default: the CPU)."""
        folder = Path(folder)
        config = read_config(folder)
        if not isinstance(config.get("onnx"), dict):
            raise ImcapError(f"{folder}: the export has no ONNX graphs (export it with --onnx)")
        for name in (ENCODER, STEP):
            check_file(folder, config, name)
        encoder, step = load_sessions(folder, providers)
        return cls(encoder, step, read_vocab(folder, config), config)

    @property
    def image_size(self) -> int:
        """Side in pixels of the images the encoder reads."""
        return int(self.config["image_size"])

    def to_array(self, image: str | Path | Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
        """A path or PIL image (resized), or a float array (3, S, S) in [0, 1] -> float32 (3, S, S)."""
        if isinstance(image, (np.ndarray, torch.Tensor)):
            array = np.asarray(image, dtype=np.float32)
            if array.shape != (3, self.image_size, self.image_size):
                raise ImcapError(f"image arrays must be (3, {self.image_size}, {self.image_size}), got {array.shape}")
            return array
        img = image if isinstance(image, Image.Image) else load_image(image)
        return image_to_tensor(img, self.image_size).numpy()

    def caption_arrays(self, images: np.ndarray, max_length: int = 16, condition: str | Sequence[str] | None = None) -> list[tuple[str, float]]:
        """A batch (B, 3, S, S) -> (caption, summed log-probability) per image; `condition` for coatt."""
        cond = None
        if self.config["onnx"]["conditioned"]:
            if condition is None:
                raise ImcapError("this model is conditioned (coatt): give a condition, e.g. the answer")
            texts = [condition] * len(images) if isinstance(condition, str) else list(condition)
            cond = encode_conditions(texts, self.config["model_args"]["condition_vocab"]).numpy()
        ids, scores = greedy_onnx(self.encoder, self.step, images, self.n_state, max_length, cond)
        return [(self.vocab.decode(row), float(s)) for row, s in zip(ids.tolist(), scores)]

    def caption(self, x: Any, max_length: int = 16, batch_size: int = 32, condition: str | None = None) -> str | list[str]:
        """Caption one image (returns a string) or a list of images (returns a list of strings)."""
        single = not isinstance(x, (list, tuple))
        items = [x] if single else list(x)
        out: list[str] = []
        for start in range(0, len(items), batch_size):
            batch = np.stack([self.to_array(im) for im in items[start : start + batch_size]])
            out += [c for c, _ in self.caption_arrays(batch, max_length, condition)]
        return out[0] if single else out
