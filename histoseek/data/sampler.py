"""Class-balanced batches: m images of each of P classes, so every batch has triplets."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yield batches of `m_per_class` indices for each of min(classes, batch_size // m) classes.

    Works for any number of classes ≥ 2: classes are visited in a shuffled round-robin, and a
    class with fewer than m images is sampled with replacement instead of looping forever.
    Under DDP every rank builds the same batch list from (seed, epoch) and takes its share.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        m_per_class: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        by_class: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_class[int(label)].append(index)
        if len(by_class) < 2:
            raise ValueError("class-balanced batches need at least 2 classes")
        if m_per_class < 2:
            raise ValueError("m per class must be at least 2 (a triplet needs a positive)")
        self.by_class = {c: np.array(ix) for c, ix in sorted(by_class.items())}
        self.m = m_per_class
        self.classes_per_batch = max(2, min(len(self.by_class), batch_size // m_per_class))
        self.batch_size = self.classes_per_batch * self.m
        total = len(labels)
        self.num_replicas, self.rank = num_replicas, rank
        per_rank = math.ceil(total / self.batch_size / num_replicas)
        self.batches_per_rank = max(1, per_rank)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch (same on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        pools = {c: rng.permutation(ix).tolist() for c, ix in self.by_class.items()}
        class_queue: list[int] = []
        batches = []
        for _ in range(self.batches_per_rank * self.num_replicas):
            chosen: list[int] = []
            while len(chosen) < self.classes_per_batch:
                if not class_queue:
                    class_queue = rng.permutation(list(self.by_class)).tolist()
                candidate = class_queue.pop()
                if candidate not in chosen:
                    chosen.append(candidate)
            batch = []
            for c in chosen:
                members = self.by_class[c]
                if len(members) < self.m:
                    batch.extend(rng.choice(members, size=self.m, replace=True).tolist())
                    continue
                if len(pools[c]) < self.m:
                    pools[c] = rng.permutation(members).tolist()
                batch.extend(pools[c][: self.m])
                pools[c] = pools[c][self.m :]
            batches.append(batch)
        yield from batches[self.rank :: self.num_replicas]
