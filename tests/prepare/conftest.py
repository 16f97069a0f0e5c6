"""Small on-disk copies of each dataset layout (a few images of a few hundred pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_slides import he_image, save, stray_files


@pytest.fixture
def bach_tree(tmp_path: Path) -> Path:
    """ICIAR2018_BACH_Challenge/Photos with 2 images per class (256×192, left half tissue),
    one mislabelled by folder per the CSV, mixed-case extensions and stray files."""
    photos = tmp_path / "bach" / "ICIAR2018_BACH_Challenge" / "Photos"
    rows = []
    for c, name in enumerate(("Normal", "Benign", "InSitu", "Invasive")):
        prefix = name[0].lower() + ("s" if name == "InSitu" else "")
        for i in range(2):
            file = f"{prefix}{i:03d}.{'TIF' if i else 'tif'}"
            save(photos / name / file, he_image(256, 192, seed=10 * c + i, tissue_width=128))
            rows.append(f"{file},{name}")
    # b001 sits in Benign but the ground truth says Normal.
    rows = [row.replace("b001.TIF,Benign", "b001.TIF,Normal") for row in rows]
    (photos / "microscopy_ground_truth.csv").write_text("\n".join(rows) + "\n")
    stray_files(photos)
    stray_files(photos / "Normal")
    return tmp_path / "bach"


@pytest.fixture
def bracs_tree(tmp_path: Path) -> Path:
    """BRACS_RoI/latest_version/{train,val,test}/<class>/BRACS_<slide>_<class>_<n>.png."""
    root = tmp_path / "bracs" / "BRACS_RoI" / "latest_version"
    slides = {"train": (1, 2, 3), "val": (4,), "test": (5, 6)}
    for split, ids in slides.items():
        for class_name in ("0_N", "5_DCIS", "6_IC"):
            for slide in ids:
                stem = f"BRACS_{slide}_{class_name.split('_')[1]}_1"
                save(root / split / class_name / f"{stem}.png", he_image(192, 128, seed=slide))
    stray_files(root / "train")
    return tmp_path / "bracs"


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    """SRC/<class>/<slide>/<image>: two classes, four slides each with two images."""
    root = tmp_path / "folder"
    for c, class_name in enumerate(("stroma", "tumour")):
        for slide in range(4):
            for i in range(2):
                path = root / class_name / f"slide{c}{slide}" / f"img{i}.png"
                save(path, he_image(128, 128, seed=1000 + 100 * c + 10 * slide + i))
    return root
