"""Stratified, group-aware splits: no group (slide, source image) ever lands in two splits."""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

from histoseek.callbacks import Notify
from histoseek.errors import HistoseekError


def parse_fractions(text: str) -> list[float]:
    """Parse '0.7,0.15,0.15' into fractions that are positive and sum to 1."""
    try:
        fractions = [float(part) for part in text.split(",")]
    except ValueError:
        raise HistoseekError(
            f"split fractions must be numbers such as 0.7,0.15,0.15: {text!r}"
        ) from None
    if not all(map(math.isfinite, fractions)):
        raise HistoseekError(f"split fractions must be finite numbers: {text!r}")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise HistoseekError(f"split fractions must be non-negative and sum to 1: {text!r}")
    return fractions


def compile_group_regex(pattern: str | None) -> re.Pattern[str] | None:
    """The --group-regex, compiled (None stays None); a bad one is one clear error."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise HistoseekError(f"invalid --group-regex {pattern!r}: {error}") from None


def regex_group(regex: re.Pattern[str] | None, name: str) -> str | None:
    """The group a --group-regex finds in `name`: its first group, else the whole match; None
    when it does not match, or finds only an empty string (which would put every such name
    in one group, or none)."""
    match = regex.search(name) if regex is not None else None
    if match is None:
        return None
    return (match.group(1) if regex.groups else match.group(0)) or None


def group_ids_from_regex(
    names: Sequence[str],
    pattern: str | None,
    matched_on: str | None = None,
    notify: Notify = lambda line: None,
    ids: Sequence[str] | None = None,
) -> list[str]:
    """A group id per name: the regex's first group (or whole match); where there is no regex
    or it does not match, the item's own id, so that it is a group of its own.

    `ids` are the items' own ids, one per name and each unique (e.g. their paths); without
    them the names serve, which must then be unique themselves: file names alone are not, as
    a/1.png and b/1.png share one. With `matched_on` (what the names are, for the messages:
    a user's --group-regex), a regex that matches none of them is refused: a typo would
    silently make each image its own group; one that misses some of them is noted, since
    those images are then groups of their own.
    """
    regex = compile_group_regex(pattern)
    found = [regex_group(regex, name) for name in names]
    if matched_on is not None and regex is not None and names:
        missed = [name for name, group in zip(names, found, strict=True) if group is None]
        if len(missed) == len(names):
            raise HistoseekError(
                f"--group-regex '{pattern}' matches none of the {len(names)} {matched_on} "
                f"(e.g. {names[0]!r}), so every image would be a group of its own"
            )
        if missed:
            notify(
                f"--group-regex '{pattern}' matches {len(names) - len(missed)} of the "
                f"{len(names)} {matched_on}; the other {len(missed)} are each a group of their "
                f"own (e.g. {missed[0]!r})"
            )
    own = names if ids is None else ids
    return [group or item for group, item in zip(found, own, strict=True)]


def stratified_group_split(
    labels: Sequence[Hashable],
    groups: Sequence[Hashable],
    fractions: Sequence[float],
    seed: int,
) -> list[int]:
    """Assign each item to a split index so that class shares follow `fractions` per split.

    Whole groups are assigned together, largest first, each to the split whose per-class
    targets it helps most; ties are broken by a seeded shuffle, so the result is reproducible.
    """
    if len(labels) != len(groups):
        raise ValueError("labels and groups must have the same length")
    class_totals = Counter(labels)
    group_items: dict[Hashable, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        group_items[group].append(index)

    order = sorted(group_items, key=str)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: len(group_items[g]), reverse=True)

    counts = [Counter() for _ in fractions]
    sizes = [0] * len(fractions)
    assignment = [0] * len(labels)
    for group in order:
        members = group_items[group]
        group_counts = Counter(labels[i] for i in members)

        def need(split: int, group_counts: Counter = group_counts) -> float:
            # How far below target this split is, on the classes the group carries; an empty
            # split with a positive share always wins so that no split stays empty.
            if fractions[split] <= 0:
                return float("-inf")
            if sizes[split] == 0:
                return float("inf")
            return sum(
                n * (fractions[split] * class_totals[c] - counts[split][c]) / class_totals[c]
                for c, n in group_counts.items()
            )

        best = max(range(len(fractions)), key=need)
        counts[best].update(group_counts)
        sizes[best] += len(members)
        for i in members:
            assignment[i] = best
    return assignment
