"""Stand-in groups for validation when no patient or slide is recorded: clusters of colour.

Tiles of one patient share a stain batch and a scanner, so they resemble each other in colour
more than tiles of different patients do. A random validation split therefore keeps each
patient on both sides and rewards recognising the patient again. Holding out whole clusters of
similar colour, within each class, approximates holding out patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from histoseek.data.images import UnreadableImageError, load_rgb

#: Side, in pixels, of the thumbnail whose colour describes an image.
THUMBNAIL_SIZE = 32
#: Whole clusters per class that a validation split should hold out, so that validation
#: does not hang on a single one.
HELD_OUT_CLUSTERS = 2


def clusters_per_class(val_fraction: float) -> int:
    """Colour clusters per class for which a `val_fraction` split holds out about two."""
    return max(2, round(HELD_OUT_CLUSTERS / val_fraction))


def colour_features(path: Path) -> np.ndarray:
    """Mean and standard deviation of each channel's optical density (6 numbers) of an image.

    Raises UnreadableImageError for a file that does not decode.
    """
    with load_rgb(path, min_size=THUMBNAIL_SIZE) as image:
        thumbnail = image.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX)
        pixels = np.asarray(thumbnail, np.float64).reshape(-1, 3)
    # Optical density is linear in the amount of stain, so stain batches separate in it.
    density = -np.log((pixels + 1.0) / 256.0)
    return np.concatenate([density.mean(axis=0), density.std(axis=0)])


def kmeans(points: np.ndarray, clusters: int, seed: int, iterations: int = 100) -> np.ndarray:
    """The cluster (0..clusters-1) of each row of `points`: Lloyd's k-means, k-means++ start."""
    rng = np.random.default_rng(seed)
    clusters = min(clusters, len(points))
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, clusters):
        distance = ((points[:, None, :] - np.array(centres)[None]) ** 2).sum(-1).min(axis=1)
        if distance.sum() == 0:  # fewer distinct points than clusters
            break
        centres.append(points[rng.choice(len(points), p=distance / distance.sum())])
    centres_array = np.array(centres)
    assignment = np.full(len(points), -1)
    for _ in range(iterations):
        distance = ((points[:, None, :] - centres_array[None]) ** 2).sum(-1)
        updated = distance.argmin(axis=1)
        if np.array_equal(updated, assignment):
            break
        assignment = updated
        for cluster in range(len(centres_array)):
            members = points[assignment == cluster]
            if len(members):
                centres_array[cluster] = members.mean(axis=0)
    return assignment


def colour_groups(
    paths: Sequence[Path], labels: Sequence[int], groups_per_class: int, seed: int = 0
) -> list[str]:
    """A group name per image: its class and its colour cluster within the class.

    Features are standardised over all images, so each of the six counts alike. An image that
    does not decode is a group of its own (training replaces it with another of its class).
    """
    names = [f"unreadable:{index}" for index in range(len(paths))]
    readable, rows = [], []
    for index, path in enumerate(paths):
        try:
            rows.append(colour_features(path))
        except UnreadableImageError:
            continue
        readable.append(index)
    if not rows:
        return names
    features = np.stack(rows)
    features = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-12)
    for label in sorted({labels[index] for index in readable}):
        members = [row for row, index in enumerate(readable) if labels[index] == label]
        assignment = kmeans(features[members], groups_per_class, seed)
        for member, cluster in zip(members, assignment, strict=True):
            names[readable[member]] = f"{label}:{cluster}"
    return names
