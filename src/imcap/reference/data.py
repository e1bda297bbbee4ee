"""Training sets for the reference engine: .npy features/captions, or a small built-in overfitting set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imcap.data.vocab import END, NULL, SPECIAL_TOKENS, START, Vocab, tokenize
from imcap.errors import ImcapError
from imcap.reference.options import DEFAULT_FLICKR8K
from imcap.reference.solver import CaptionData


def load_array(path: str | Path, kind: str) -> np.ndarray:
    """Read a .npy array (no pickles); kind is 'features' (2-D float), 'captions' (2-D int) or 'image_idxs'."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ImcapError(f"{path}: {kind} file not found") from None
    except (ValueError, OSError) as exc:
        raise ImcapError(f"{path}: not a .npy array ({exc})") from None
    ndim = 1 if kind == "image_idxs" else 2
    if array.ndim != ndim:
        raise ImcapError(f"{path}: {kind} must be a {ndim}-D array, got shape {array.shape}")
    if kind in ("captions", "image_idxs") and not np.issubdtype(array.dtype, np.integer):
        raise ImcapError(f"{path}: {kind} must be integers, got {array.dtype}")
    if kind == "features" and not np.issubdtype(array.dtype, np.floating):
        raise ImcapError(f"{path}: features must be floats, got {array.dtype}")
    return array


def placeholder_vocab(captions: np.ndarray) -> Vocab:
    """A vocabulary naming word id i `w<i>`, for captions given without their vocab.json."""
    return Vocab(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(len(SPECIAL_TOKENS), int(captions.max()) + 1)])


def encode_captions(token_lists: list[list[str]], vocab: Vocab, max_words: int) -> np.ndarray:
    """Return (K, max_words + 2) ids: <START>, up to max_words words, <END>, then <NULL> padding."""
    out = np.full((len(token_lists), max_words + 2), NULL, dtype=np.int64)
    for k, tokens in enumerate(token_lists):
        ids = [START, *vocab.encode(tokens, max_words), END]
        out[k, : len(ids)] = ids
    return out


def with_start_end(labels: np.ndarray) -> np.ndarray:
    """imcap prepro labels (K, L) (0-padded words) -> (K, L + 2) <START> words <END> <NULL>..."""
    lengths = (labels != NULL).sum(axis=1)  # (K,) prepro pads at the end only
    out = np.full((len(labels), labels.shape[1] + 2), NULL, dtype=np.int64)
    out[:, 0] = START
    out[:, 1:-1] = labels
    out[np.arange(len(labels)), lengths + 1] = END
    return out


def load_prepro(folder: str | Path, split: str | None = "train") -> tuple[np.ndarray, np.ndarray, Vocab]:
    """Captions of an `imcap prepro` folder: (captions (K, L+2) with <START>/<END>, image_idxs (K,), vocab).

    image_idxs index the images of images.json in their order (the rows of features extracted for it);
    `split` keeps the captions of that split's images only (None: all).
    """
    folder = Path(folder)
    labels = load_array(folder / "labels.npy", "captions")
    vocab = Vocab.load(folder / "vocab.json")
    try:
        images = json.loads((folder / "images.json").read_text(encoding="utf-8"))["images"]
        rows = [(r, i) for i, im in enumerate(images) if split in (None, im["split"])
                for r in range(im["label_start"], im["label_end"])]
    except FileNotFoundError:
        raise ImcapError(f"{folder / 'images.json'}: file not found (not an imcap prepro folder)") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ImcapError(f"{folder / 'images.json'}: not an imcap prepro manifest ({exc.__class__.__name__})") from None
    if not rows:
        raise ImcapError(f"{folder}: no captions of split {split!r}")
    label_rows, image_idxs = (np.array(c) for c in zip(*rows))
    if label_rows.max() >= len(labels):
        raise ImcapError(f"{folder / 'images.json'}: label rows beyond the {len(labels)} of labels.npy")
    return with_start_end(labels[label_rows]), image_idxs, vocab


def read_first_captions(flickr8k_dir: Path, count: int) -> list[list[str]]:
    """Tokens of the first caption (#0) of the first `count` images of Flickr8k.token.txt."""
    token_lists = []
    with (flickr8k_dir / "Flickr8k.token.txt").open(encoding="utf-8") as f:
        for line in f:
            key, _, caption = line.partition("\t")
            if key.endswith("#0"):
                token_lists.append(tokenize(caption))
                if len(token_lists) == count:
                    break
    return token_lists


def synthetic_captions(count: int, rng: np.random.Generator, words: int = 30) -> list[list[str]]:
    """Random 4-12 word captions over a made-up vocabulary `word0`..`word<words-1>`."""
    return [[f"word{i}" for i in rng.integers(0, words, size=rng.integers(4, 13))] for _ in range(count)]


def overfit_set(
    count: int = 50,
    feature_dim: int = 512,
    max_words: int = 16,
    seed: int = 0,
    vocab: Vocab | None = None,
    flickr8k_dir: Path | None = DEFAULT_FLICKR8K,
) -> tuple[CaptionData, Vocab, str]:
    """Random features for `count` images and one real Flickr8k caption each (synthetic words without it).

    Returns the data, the vocabulary (built from these captions unless `vocab` is given) and where the
    captions came from.
    """
    rng = np.random.default_rng(seed)
    if flickr8k_dir is not None and (flickr8k_dir / "Flickr8k.token.txt").is_file():
        token_lists, source = read_first_captions(flickr8k_dir, count), f"Flickr8k ({flickr8k_dir.resolve()})"
    else:
        token_lists, source = synthetic_captions(count, rng), "synthetic words"
    if vocab is None:
        vocab = Vocab.build(token_lists, word_count_threshold=0)
    features = rng.standard_normal((len(token_lists), feature_dim))
    return CaptionData(features, encode_captions(token_lists, vocab, max_words), name="overfit set"), vocab, source
