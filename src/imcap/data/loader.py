"""Batches for training and evaluation from a directory written by `imcap prepro`.

The sampler is a pure function of (seed, epoch, position), so a resumed run sees exactly the
batches an uninterrupted run would have seen, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from imcap.data.features import FeatureStore
from imcap.data.images import image_to_tensor, load_image
from imcap.data.store import ImageStore
from imcap.data.vocab import Vocab
from imcap.errors import ImcapError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class PreproData:
    """What `imcap prepro` wrote: the image table, the label matrix (memory-mapped), the vocabulary and,
    when `imcap prepro --image-store` built one, the prepared image store that images are read from."""

    root: Path
    image_root: Path
    images: list[dict]
    labels: np.ndarray  # (num_captions, max_length) int32, 0-padded
    vocab: Vocab
    max_length: int
    store: ImageStore | None = None

    @classmethod
    def load(cls, data_dir: str | Path) -> PreproData:
        """Read a prepro directory; raise ImcapError naming the file when something is missing or malformed."""
        root = Path(data_dir)
        index = root / "images.json"
        if not index.is_file():
            raise ImcapError(f"{root}: not an imcap prepro directory (no images.json); run `imcap prepro` first")
        try:
            meta = json.loads(index.read_text(encoding="utf-8"))
            images = meta["images"]
            max_length = int(meta["max_length"])
            image_root = Path(meta["image_root"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ImcapError(f"{index}: malformed prepro index ({exc.__class__.__name__})") from None
        try:
            labels = np.load(root / "labels.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ImcapError(f"{root / 'labels.npy'}: cannot read labels ({exc.__class__.__name__})") from None
        rows = max((int(im.get("label_end", 0)) for im in images), default=0)
        if labels.ndim != 2 or labels.shape[0] != rows or labels.shape[1] != max_length:
            raise ImcapError(f"{root / 'labels.npy'}: shape {labels.shape} does not match images.json ({rows} captions of at most {max_length} words); "
                             "run `imcap prepro` again")
        store = ImageStore.find(root)
        if store is not None:
            missing = store.missing([im["file_path"] for im in images])
            if missing:
                raise ImcapError(f"{store.path}: {len(missing)} of {len(images)} images are not in the image store (first: {missing[0]}); "
                                 f"run `imcap prepro --image-store {store.size}` again, or delete {store.path}")
        return cls(root, image_root, images, labels, Vocab.load(root / "vocab.json"), max_length, store)

    def split_indices(self, split: str) -> list[int]:
        """Indices of the images of `split` (Karpathy's restval counts as train)."""
        wanted = {"train": ("train", "restval")}.get(split, (split,))
        return [i for i, im in enumerate(self.images) if im["split"] in wanted]

    def image_path(self, i: int) -> Path:
        """Absolute path of image `i`."""
        return self.image_root / self.images[i]["file_path"]

    def image_tensor(self, i: int, size: int) -> torch.Tensor:
        """Image `i` as a float tensor (3, size, size) in [0, 1]: from the image store when there is one, else the file."""
        if self.store is not None:
            return image_to_tensor(self.store.load(self.images[i]["file_path"], min_side=size), size)
        return image_to_tensor(load_image(self.image_path(i)), size)

    def captions_of(self, i: int) -> np.ndarray:
        """Label rows (n, max_length) of image `i`."""
        im = self.images[i]
        return np.asarray(self.labels[im["label_start"] : im["label_end"]])

    def condition_texts(self, indices: list[int], field: str) -> list[str]:
        """The extra field `field` of images `indices` as text, e.g. VQA answers for coatt.

        Lists of words are joined; "answer,concepts" joins several fields (an answer and concept words).
        """
        out = []
        for i in indices:
            extra = self.images[i].get("extra") or {}
            parts = []
            for name in field.split(","):
                value = extra.get(name.strip())
                if value is None:
                    raise ImcapError(f"{self.root / 'images.json'}: image {self.images[i]['id']!r} has no {name.strip()!r} field to condition on (see --condition-field)")
                parts.append(" ".join(map(str, value)) if isinstance(value, list) else str(value))
            out.append(" ".join(parts))
        return out


class CaptionDataset(Dataset):
    """Items are (image (3, S, S) in [0, 1], labels (seq_per_img, max_length) int64, image index).

    With a FeatureStore the first item is the image's precomputed features of `feature_kind` instead.
    """

    def __init__(self, data: PreproData, indices: list[int], image_size: int, seq_per_img: int, seed: int = 0, features: FeatureStore | None = None, feature_kind: str = "pooled") -> None:
        self.data = data
        self.indices = indices
        self.image_size = image_size
        self.seq_per_img = seq_per_img
        self.seed = seed
        self.epoch = 0
        self.features = features
        self.feature_kind = feature_kind
        if features is None and data.store is not None and data.store.size < image_size:
            log.warning("%s: images are stored with a shorter side of %d pixels and read at %d: build the store with "
                        "`imcap prepro --image-store %d` or more for full detail", data.store.path, data.store.size, image_size, image_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i = self.indices[pos]
        if self.features is not None:
            image = self.features.get(self.data.images[i]["id"], self.feature_kind)
        else:
            image = self.data.image_tensor(i, self.image_size)
        caps = self.data.captions_of(i)  # (n, L)
        rng = np.random.default_rng([self.seed, self.epoch, i])  # same choice on resume, in any worker
        n = caps.shape[0]
        pick = rng.choice(n, self.seq_per_img, replace=n < self.seq_per_img) if n != self.seq_per_img else np.arange(n)
        return image, torch.from_numpy(caps[pick].astype(np.int64)), i


class ResumableSampler(Sampler[int]):
    """Shuffles positions with a permutation seeded by (seed, epoch) and starts at `start`.

    With `world_size` > 1 (DistributedSampler's role) the epoch's order is padded by wrapping around to
    a multiple of `world_size` and rank r reads every world_size-th item from `start` + r: the ranks
    see disjoint shards of equal length. `start` counts items of the whole epoch, all ranks together.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, start: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.epoch, self.start, self.shuffle = size, seed, epoch, start, shuffle
        self.rank, self.world_size = rank, world_size

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def shard(self) -> list[int]:
        """This rank's items from `start` on."""
        order = self.order()
        if self.world_size == 1:
            return order[self.start :]
        padded = [order[i % self.size] for i in range(-(-self.size // self.world_size) * self.world_size)] if self.size else []
        rest = padded[self.start :]
        rest += rest[: -len(rest) % self.world_size] if rest else []  # a resume with another world size
        return rest[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self.shard())

    def __len__(self) -> int:
        if self.world_size == 1:
            return max(self.size - self.start, 0)
        return len(self.shard())


AUTO_WORKERS = -1  # `--num-workers -1`: choose workers, pinned memory and prefetch from the machine
MIN_ITEMS_FOR_WORKERS = 512  # fewer items than this: starting workers costs more than it saves


@dataclass(frozen=True)
class LoaderSettings:
    """How a DataLoader feeds the model: worker processes, pinned memory, batches prefetched per worker."""

    num_workers: int
    pin_memory: bool
    prefetch_factor: int | None


def loader_settings(num_workers: int, items: int, reads_images: bool = True, cuda: bool | None = None) -> LoaderSettings:
    """The settings for a loader of `items` items: `num_workers` >= 0 as given; -1 (auto) chosen here.

    Auto: no workers for precomputed features (memory-mapped reads) or under 512 items; otherwise one
    worker per core this process may use (cores / processes on this node under torchrun), at most 8,
    leaving a core to the training process when there are more than 2, and 4 batches prefetched per
    worker. Memory is pinned when batches go to a CUDA GPU.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if num_workers < 0:
        cores = max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        busy = reads_images and items >= MIN_ITEMS_FOR_WORKERS
        num_workers = min(8, cores - 1 if cores > 2 else cores) if busy else 0
        return LoaderSettings(num_workers, cuda, 4 if num_workers else None)
    return LoaderSettings(num_workers, cuda, None)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler, num_workers: int = 0, drop_last: bool = False, collate_fn=None) -> DataLoader:
    """A DataLoader that never touches the global torch RNG (so resume is exact); `num_workers` -1: auto (`loader_settings`)."""
    settings = loader_settings(num_workers, len(sampler), reads_images=getattr(dataset, "features", None) is None)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=settings.num_workers,
        drop_last=drop_last,
        pin_memory=settings.pin_memory,
        prefetch_factor=settings.prefetch_factor,
        persistent_workers=False,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
    )
