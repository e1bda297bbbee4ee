"""Text -> image evaluation: every caption of a split queries the split's images; top-k accuracy and mAP.

Person-search convention: a query hits when a gallery image of the right identity is ranked within the top k
(recall@k); mAP averages the precision at each gallery image of the right identity.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imcap.data.vocab import UNK, Vocab
from imcap.errors import ImcapError
from imcap.search.data import ImageCache, SearchData, trim
from imcap.search.models import SearchModel
from imcap.progress import progress_bar

log = logging.getLogger(__name__)

TOP_K = (1, 5, 10)


@torch.no_grad()
def embed_images(model: SearchModel, cache: ImageCache, indices: np.ndarray, batch_size: int = 64,
                 device: torch.device | str = "cpu", progress: bool = False) -> torch.Tensor:
    """Gallery features (G, F) of images `indices` of the cache's data set."""
    model.eval()
    out = []
    for start in progress_bar(range(0, len(indices), batch_size), desc="embed images", unit="batch", leave=False, disable=not progress):
        out.append(model.image_features(cache.batch(indices[start:start + batch_size]).to(device)))
    return torch.cat(out)


@torch.no_grad()
def score_queries(model: SearchModel, labels: torch.Tensor, gallery: torch.Tensor, batch_size: int = 256,
                  progress: bool = False) -> torch.Tensor:
    """Scores (Q, G) of sentences (Q, L) against gallery features (G, F); the gallery is scored as one batch per query chunk."""
    model.eval()
    rows = []
    for start in progress_bar(range(0, len(labels), batch_size), desc="score queries", unit="batch", leave=False, disable=not progress):
        tokens = trim(labels[start:start + batch_size]).to(gallery.device)
        rows.append(model.scores(model.text_features(tokens), gallery).float().cpu())
    return torch.cat(rows)


def rank_metrics(scores: torch.Tensor, query_identity: torch.Tensor, gallery_identity: torch.Tensor,
                 ks: tuple[int, ...] = TOP_K) -> dict[str, float]:
    """top-k accuracy (a gallery image of the query's identity within the k best) and mAP, from scores (Q, G)."""
    hits_at = {k: 0 for k in ks}
    ap_sum, counted = 0.0, 0
    for start in range(0, scores.size(0), 1024):
        s = scores[start:start + 1024]
        order = torch.sort(s, dim=1, descending=True, stable=True).indices  # (q, G)
        match = gallery_identity[order] == query_identity[start:start + 1024, None]  # (q, G) bool
        has = match.any(1)
        first = torch.where(has, match.float().argmax(1), torch.full_like(has, s.size(1), dtype=torch.long))
        for k in ks:
            hits_at[k] += int((first < k).sum())
        ranks = torch.arange(1, s.size(1) + 1, dtype=torch.float32)
        precision = match.float().cumsum(1) / ranks  # (q, G)
        positives = match.sum(1)
        ap = (precision * match).sum(1) / positives.clamp(min=1)
        ap_sum += float(ap[has].sum())
        counted += int(has.sum())
    q = scores.size(0)
    out = {f"top{k}": hits_at[k] / q for k in ks}
    out["mAP"] = ap_sum / max(counted, 1)
    return out


@dataclass
class SplitGallery:
    """The queries and gallery of one split: caption word ids, identities, and gallery image indices."""

    images: np.ndarray
    captions: np.ndarray
    labels: torch.Tensor = field(repr=False)
    query_identity: torch.Tensor = field(repr=False)
    gallery_identity: torch.Tensor = field(repr=False)


def split_gallery(data: SearchData, split: str, max_images: int = -1) -> SplitGallery:
    """The first `max_images` images of `split` (all when <= 0) as the gallery and all their captions as queries."""
    images = data.split_images(split)
    if max_images > 0:
        images = images[:max_images]
    if len(images) == 0:
        raise ImcapError(f"{data.source}: the {split} split has no images")
    captions = data.captions_of_images(images)
    ident = torch.from_numpy(data.identity)
    return SplitGallery(images, captions, torch.from_numpy(data.labels[captions]),
                        ident[torch.from_numpy(data.caption_image[captions])], ident[torch.from_numpy(images)])


def evaluate_search(model: SearchModel, data: SearchData, split: str = "test", max_images: int = -1,
                    cache: ImageCache | None = None, batch_size: int = 64, device: torch.device | str = "cpu",
                    progress: bool = False) -> dict:
    """Text -> image top-1/5/10 accuracy and mAP of `model` on `split`, with the query and gallery counts and timing."""
    t0 = time.time()
    gal = split_gallery(data, split, max_images)
    cache = cache or ImageCache(data, model.encoder.input_size)
    gallery = embed_images(model, cache, gal.images, batch_size, device, progress)
    t1 = time.time()
    scores = score_queries(model, gal.labels, gallery, progress=progress)
    t2 = time.time()
    metrics = rank_metrics(scores, gal.query_identity, gal.gallery_identity)
    metrics.update(split=split, queries=len(gal.captions), gallery=len(gal.images),
                   identities=int(gal.gallery_identity.unique().numel()),
                   embed_seconds=round(t1 - t0, 3), score_seconds=round(t2 - t1, 3))
    return metrics


def run_search_eval(model_path: str, data: str = "", split: str = "test", max_images: int = -1, batch_size: int = 64,
                    device: str = "auto", out: str = "", progress: bool = True) -> dict:
    """`imcap search eval`: load a model, evaluate it on a split of its (or the given) data; optionally write metrics.json."""
    from imcap.devices import pick_device
    from imcap.files import atomic_write_json
    from imcap.search.models import load_search_model

    dev = pick_device(device)
    loaded = load_search_model(model_path, dev)
    opts = loaded.info.get("options") or {}
    source = data or opts.get("data", "")
    if not source:
        raise ImcapError(f"{model_path}: the checkpoint records no data; give --data")
    search_data = SearchData.load(source, opts.get("format") or None, opts.get("image_root") or None,
                                  opts.get("max_length", 50), opts.get("word_count_threshold", 5))
    if search_data.vocab.idx_to_word != loaded.vocab.idx_to_word:
        log.warning("%s: vocabulary differs from the model's; captions are re-encoded with the model's", source)
        search_data.labels = _reencode(search_data, loaded.vocab, loaded.max_length)
    metrics = evaluate_search(loaded.model, search_data, split, max_images, batch_size=batch_size, device=dev, progress=progress)
    metrics.update(model=loaded.path, kind=loaded.model.kind, data=str(source))
    if out:
        atomic_write_json(Path(out) / "metrics.json", metrics)
    return metrics


def _reencode(data: SearchData, vocab: Vocab, max_length: int) -> np.ndarray:
    """Caption word ids of `data` translated into another vocabulary (unknown words -> <UNK>)."""
    words = data.vocab.idx_to_word
    table = np.array([vocab.word_to_idx.get(w, UNK) if i > UNK else i for i, w in enumerate(words)], dtype=np.int64)
    return table[data.labels][:, :max_length]
