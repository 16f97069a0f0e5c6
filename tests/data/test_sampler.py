from collections import Counter

import pytest

from histoseek.data.sampler import ClassBalancedBatchSampler


def _labels(sizes: list[int]) -> list[int]:
    return [c for c, n in enumerate(sizes) for _ in range(n)]


@pytest.mark.parametrize("sizes", [[10, 10], [5, 30, 12], [4, 9, 20, 3, 11, 7, 15]])
def test_every_batch_has_m_images_of_each_chosen_class(sizes):
    labels = _labels(sizes)
    sampler = ClassBalancedBatchSampler(labels, batch_size=16, m_per_class=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) >= 1
    for batch in batches:
        counts = Counter(labels[i] for i in batch)
        assert set(counts.values()) == {4}
        assert len(counts) == min(len(sizes), 4)


def test_two_classes_with_large_batch_uses_both_classes():
    labels = _labels([6, 6])
    batches = list(ClassBalancedBatchSampler(labels, batch_size=64, m_per_class=8))
    for batch in batches:
        assert Counter(labels[i] for i in batch) == {0: 8, 1: 8}


def test_class_smaller_than_m_is_sampled_with_replacement():
    labels = _labels([2, 40, 40])
    sampler = ClassBalancedBatchSampler(labels, batch_size=24, m_per_class=8, seed=1)
    batches = list(sampler)  # must terminate
    small = [i for batch in batches for i in batch if labels[i] == 0]
    assert small and set(small) <= {0, 1}


def test_seven_classes_are_all_visited_in_an_epoch():
    labels = _labels([20] * 7)
    sampler = ClassBalancedBatchSampler(labels, batch_size=12, m_per_class=4, seed=0)
    seen = Counter(labels[i] for batch in sampler for i in batch)
    assert set(seen) == set(range(7))
    # Round-robin over classes keeps the visits balanced.
    assert max(seen.values()) - min(seen.values()) <= 8


def test_epochs_reshuffle_and_are_reproducible():
    labels = _labels([30, 30, 30])
    first = ClassBalancedBatchSampler(labels, 12, 4, seed=5)
    second = ClassBalancedBatchSampler(labels, 12, 4, seed=5)
    assert list(first) == list(second)
    first.set_epoch(1)
    assert list(first) != list(second)


def test_ranks_share_out_the_same_batches():
    labels = _labels([25, 25, 25])
    single = list(ClassBalancedBatchSampler(labels, 12, 4, seed=2))
    ranks = [
        list(ClassBalancedBatchSampler(labels, 12, 4, seed=2, num_replicas=2, rank=r))
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 4
    interleaved = [batch for pair in zip(*ranks, strict=True) for batch in pair]
    # Every rank draws from the same global sequence of batches and takes every other one.
    assert interleaved[: len(single)] == single


@pytest.mark.parametrize("labels, m", [([0, 0, 0], 2), ([0, 1, 1], 1)])
def test_rejects_single_class_and_m_below_two(labels, m):
    with pytest.raises(ValueError):
        ClassBalancedBatchSampler(labels, 8, m)
