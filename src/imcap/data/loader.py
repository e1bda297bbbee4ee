"""Batches for training and evaluation from a directory written by `imcap prepro`.

The sampler is a pure function of (seed, epoch, position), so a resumed run sees exactly the
batches an uninterrupted run would have seen, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from imcap.data.features import FeatureStore
from imcap.data.images import image_to_tensor, load_image
from imcap.data.vocab import Vocab
from imcap.errors import ImcapError

SPLITS = ("train", "val", "test")


@dataclass
class PreproData:
    """What `imcap prepro` wrote: the image table, the label matrix (memory-mapped) and the vocabulary."""

    root: Path
    image_root: Path
    images: list[dict]
    labels: np.ndarray  # (num_captions, max_length) int32, 0-padded
    vocab: Vocab
    max_length: int

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
        return cls(root, image_root, images, labels, Vocab.load(root / "vocab.json"), max_length)

    def split_indices(self, split: str) -> list[int]:
        """Indices of the images of `split` (Karpathy's restval counts as train)."""
        wanted = {"train": ("train", "restval")}.get(split, (split,))
        return [i for i, im in enumerate(self.images) if im["split"] in wanted]

    def image_path(self, i: int) -> Path:
        """Absolute path of image `i`."""
        return self.image_root / self.images[i]["file_path"]

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

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i = self.indices[pos]
        if self.features is not None:
            image = self.features.get(self.data.images[i]["id"], self.feature_kind)
        else:
            image = image_to_tensor(load_image(self.data.image_path(i)), self.image_size)
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


def make_loader(dataset: CaptionDataset, batch_size: int, sampler: Sampler, num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader that never touches the global torch RNG (so resume is exact)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
