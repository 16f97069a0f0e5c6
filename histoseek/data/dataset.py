"""A dataset over image sources (files or slide tiles) that skips (or replaces) unreadable
ones, and its loaders."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from histoseek.data.images import UnreadableImageError
from histoseek.data.sources import ImageSource, load_source_sized, source_name
from histoseek.data.transforms import seed_worker_transform
from histoseek.errors import HistoseekError


class Item(NamedTuple):
    """One dataset item: an image's array, label and index, and the unreadable files met."""

    #: CHW array as the transform makes it; None for an unreadable file (when not replaced).
    image: np.ndarray | None
    label: int
    index: int
    #: Indices of the unreadable files met on the way (the item's own, or those replaced).
    failed: list[int]
    #: The source's width and height as stored (before any reduced-scale decoding).
    stored_size: tuple[int, int] | None


class ImageDataset(Dataset):
    """Items (`Item`) are an image's array, label and index, with the unreadable files met.

    By default an unreadable file gives an item without an image, and the collate leaves
    it out. With `replace_unreadable` (training), it gives the next readable image of the same
    class instead, so every batch keeps its size: under DDP all processes then take the same
    steps. The choice depends only on which files are readable, so it repeats. With
    `decode_size`, JPEGs larger than needed decode at reduced scale (load_rgb_sized's min_size);
    training leaves it None, as its random crops want every pixel.

    `paths` are image sources: file paths, or slide tiles that each worker reads itself.
    """

    def __init__(
        self,
        paths: Sequence[ImageSource],
        labels: Sequence[int],
        transform: Callable,
        replace_unreadable: bool = False,
        decode_size: int | None = None,
    ):
        self.paths = list(paths)
        self.decode_size = decode_size
        self.labels = list(labels)
        self.transform = transform
        self.replace_unreadable = replace_unreadable
        self._class_members: dict[int, list[int]] = {}
        for index, label in enumerate(self.labels):
            self._class_members.setdefault(label, []).append(index)
        # Files found unreadable in this process, so a replacement search skips them quickly.
        self._unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        loaded = self.load(index)
        if loaded is not None:
            return Item(self.transform(loaded[0]), self.labels[index], index, [], loaded[1])
        if not self.replace_unreadable:
            return Item(None, self.labels[index], index, [index], None)
        members = self._class_members[self.labels[index]]
        start = members.index(index)
        for other in members[start + 1 :] + members[:start]:
            loaded = self.load(other)
            if loaded is not None:
                return Item(
                    self.transform(loaded[0]), self.labels[other], other, [index], loaded[1]
                )
        raise HistoseekError(
            f"no image of the class of {source_name(self.paths[index])} is readable"
        )

    def load(self, index: int) -> tuple[Image.Image, tuple[int, int]] | None:
        """The source at `index` decoded (without the transform) and its stored size; None if
        it is unreadable."""
        if index in self._unreadable:
            return None
        try:
            return load_source_sized(self.paths[index], min_size=self.decode_size)
        except UnreadableImageError:
            self._unreadable.add(index)
            return None


@dataclass
class Batch:
    """A collated batch: images of the readable items, and the indices that failed to load."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    failed: list[int]
    #: Width and height as stored of each readable item's source, in the order of `indices`.
    stored_sizes: list[tuple[int, int]]


def collate_skipping_unreadable(items: list[Item]) -> Batch:
    """Stack the items that have an image; report every unreadable file met by index."""
    good = [item for item in items if item.image is not None]
    failed = [index for item in items for index in item.failed]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0), failed, [])
    return Batch(
        images=torch.from_numpy(np.stack([item.image for item in good])),
        labels=torch.tensor([item.label for item in good], dtype=torch.long),
        indices=torch.tensor([item.index for item in good], dtype=torch.long),
        failed=failed,
        stored_sizes=[item.stored_size for item in good],
    )


def default_workers() -> int:
    """One decoding process per CPU core, at most 8."""
    return min(os.cpu_count() or 1, 8)


def _init_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    seed_worker_transform(info.dataset.transform, info.seed % 2**32)
    # Decoding workers must not compete with the model's own threads for the cores.
    torch.set_num_threads(1)


def make_loader(
    dataset: ImageDataset,
    workers: int,
    batch_size: int | None = None,
    batch_sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader with the skipping collate; ordered batches unless a batch sampler is given."""
    batching = {"batch_sampler": batch_sampler} if batch_sampler else {"batch_size": batch_size}
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        collate_fn=collate_skipping_unreadable,
        worker_init_fn=_init_worker if workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
