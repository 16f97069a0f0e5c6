"""Colour clusters as stand-in validation groups: features, k-means, group names."""

import numpy as np
import pytest
from PIL import Image

from histoseek.data.colour_groups import clusters_per_class, colour_features, colour_groups, kmeans

PINK, PURPLE = (230, 150, 190), (120, 70, 160)


def _tile(path, colour, seed):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 6, (40, 40, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_features_are_the_mean_and_spread_of_optical_density(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), (255, 127, 0)).save(path)
    # Flat colour: density -ln((x + 1) / 256) per channel, no spread.
    expected = [-np.log(256 / 256), -np.log(128 / 256), -np.log(1 / 256), 0, 0, 0]
    np.testing.assert_allclose(colour_features(path), expected, atol=1e-9)


def test_kmeans_finds_two_separate_blobs_and_repeats_itself():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (30, 2))])
    assignment = kmeans(points, 2, seed=3)
    assert len(set(assignment[:20])) == 1 and len(set(assignment[20:])) == 1
    assert assignment[0] != assignment[20]
    np.testing.assert_array_equal(assignment, kmeans(points, 2, seed=3))


def test_kmeans_makes_no_more_clusters_than_distinct_points():
    assert sorted(set(kmeans(np.zeros((5, 3)), 4, seed=0))) == [0]
    assert len(set(kmeans(np.eye(3), 8, seed=0))) == 3


def test_groups_split_each_class_by_stain_and_never_mix_classes(tmp_path):
    paths, labels, tones = [], [], []
    for label in (0, 1):
        for tone, colour in enumerate((PINK, PURPLE)):
            for copy in range(4):
                paths.append(_tile(tmp_path / f"{label}_{tone}_{copy}.png", colour, len(paths)))
                labels.append(label)
                tones.append(tone)
    groups = colour_groups(paths, labels, groups_per_class=2)
    rows = list(zip(groups, labels, tones, strict=True))
    for label in (0, 1):
        by_tone = [{group for group, own, shade in rows if own == label and shade == tone}
                   for tone in (0, 1)]  # fmt: skip
        assert all(len(found) == 1 for found in by_tone) and by_tone[0] != by_tone[1]
        assert all(group.startswith(f"{label}:") for group in by_tone[0] | by_tone[1])


def test_an_unreadable_image_is_a_group_of_its_own(tmp_path):
    paths = [_tile(tmp_path / f"{i}.png", PINK, i) for i in range(3)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    groups = colour_groups([*paths, broken], [0, 0, 0, 0], groups_per_class=1)
    assert groups == ["0:0", "0:0", "0:0", "unreadable:3"]
    assert colour_groups([broken], [0], groups_per_class=2) == ["unreadable:0"]


@pytest.mark.parametrize(("fraction", "clusters"), [(0.2, 10), (0.1, 20), (0.5, 4), (0.9, 2)])
def test_a_split_holds_out_about_two_clusters_per_class(fraction, clusters):
    assert clusters_per_class(fraction) == clusters
