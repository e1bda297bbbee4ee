"""Options of `imcap search` commands, as dataclasses (no torch here, so `imcap --help` stays fast)."""
from __future__ import annotations

from dataclasses import dataclass

from imcap.config import CnnOptions, DeviceOptions, LoopOptions, OptimOptions
from imcap.options import opt, redefault

MODELS = ("gna", "dual")


@dataclass
class SearchTrainOptions(DeviceOptions, OptimOptions, CnnOptions, LoopOptions):
    """Options of `imcap search train` (GNA-RNN train.lua names and defaults where it has them)."""

    data: str = redefault(LoopOptions, "data", "", "prepro folder (`imcap prepro`), any caption file/folder imcap reads, or CUHK-PEDES reid_raw.json")
    format: str = opt("", "caption format of --data when it is a caption file (detected when empty; also cuhk-pedes)")
    image_root: str = opt("", "folder the image paths of --data are relative to (default: per format)")
    max_length: int = opt(50, "words kept per caption when --data is a caption file (a prepro folder has its own)", min=1)
    word_count_threshold: int = opt(5, "training words seen this often or less become <UNK> (caption files only)", min=0)
    checkpoint_path: str = redefault(LoopOptions, "checkpoint_path", "runs/search", "run directory for best.pt, last.pt and history.json")
    model: str = opt("gna", "gna: GNA-RNN pairwise affinity; dual: dual encoder (scales to large galleries)", choices=MODELS)
    cnn_from: str = opt("", "start the image encoder (CNN and head) from another imcap run or checkpoint, search or captioning, "
                            "trained on the same images (GNA-RNN's VGG-16 was first trained on the person images); it keeps training")
    input_encoding_size: int = opt(512, "size of the image encoding and of the word embeddings", min=1)
    rnn_size: int = opt(512, "hidden units of the sentence RNN", min=1)
    units: int = opt(512, "gna: visual units (the attention runs over them)", min=1)
    embed_size: int = opt(256, "dual: size of the joint embedding space", min=1)
    rnn_type: str = opt("gru", "dual: sentence RNN cell (gna always uses an LSTM)", choices=("gru", "lstm"))
    drop_prob_lm: float = opt(0.5, "dropout on word embeddings and RNN outputs", min=0.0, lt=1.0)
    neg_time: int = opt(3, "gna: mismatched sentences per matching pair", min=1)
    batch_size: int = redefault(LoopOptions, "batch_size", 32, "images per batch (in-batch negatives need 2 or more)", min=2)
    grad_clip: float = redefault(OptimOptions, "grad_clip", 5.0)
    finetune_cnn_after: int = redefault(OptimOptions, "finetune_cnn_after", 10000)
    val_images_use: int = redefault(LoopOptions, "val_images_use", 100, "validation gallery size (-1: the whole val split)")
    save_checkpoint_every: int = redefault(LoopOptions, "save_checkpoint_every", 100)
    image_cache_mb: int = opt(1024, "keep decoded training images in memory up to this many MiB", min=0)


# Options a search `--resume` may change (typed explicitly).
SEARCH_RESUME_OVERRIDES = frozenset({"resume", "max_iters", "max_epochs", "max_train_seconds", "device", "progress", "save_checkpoint_every", "image_cache_mb", "data", "checkpoint_path"})


@dataclass
class SearchEvalOptions(DeviceOptions):
    """Options of `imcap search eval`: text -> image top-1/5/10 and mAP on a split."""

    model: str = opt("", "search run directory or checkpoint file", required=True)
    data: str = opt("", "data to evaluate on (default: the data the model was trained on)")
    split: str = opt("test", "split", choices=("train", "val", "test"))
    max_images: int = opt(-1, "gallery size: the first N images of the split (-1: all)", min=1, allow=(-1,))
    batch_size: int = opt(64, "images per batch", min=1, max=1_000_000)
    out: str = opt("", "folder for metrics.json")
    json: bool = opt(False, "print JSON")


@dataclass
class SearchIndexOptions(DeviceOptions):
    """Options of `imcap search index`: embed images (or add precomputed vectors) into an index."""

    out: str = opt("", "index folder (created, or appended to when it exists)", required=True)
    model: str = opt("", "search run directory or checkpoint file (with --embeddings: optional, the dual model that made them)")
    images: list[str] = opt([], "image files, folders or glob patterns", metavar="PATH")
    embeddings: str = opt("", "instead of --images: precomputed unit-length vectors, an (N, D) float .npy file", metavar="FILE.npy")
    paths: str = opt("", "with --embeddings: the N image paths, one per line, in row order", metavar="FILE.txt")
    kind: str = opt("auto", "search structure: flat (exact), ivf, hnsw; auto: flat below 100,000 images, else ivf (gna: always flat)",
                    choices=("auto", "flat", "ivf", "hnsw"))
    batch_size: int = opt(64, "images per batch", min=1, max=1_000_000)


@dataclass
class SearchQueryOptions(DeviceOptions):
    """Options of `imcap search query`: the images of an index that best match a sentence."""

    text: list[str] = opt([], 'the sentence, e.g. "a man in a red jacket"', positional=True, metavar="TEXT")
    index: str = opt("", "index folder written by `imcap search index`", required=True)
    k: int = opt(10, "number of hits", min=1, max=100_000, flag="-k")
    html: str = opt("", "also write an HTML page of the hits here")
    model: str = opt("", "check that the index was built with this model (an index of precomputed vectors: the model that embeds the query)")
    device: str = redefault(DeviceOptions, "device", "cpu")
    json: bool = opt(False, "print JSON")
