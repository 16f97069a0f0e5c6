"""What a non-editable install ships: every package folder, as pyproject.toml lists them by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_installation():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "histoseek").rglob("__init__.py")
    }
    # A package missing here installs only with `pip install -e` (seen: histoseek.train).
    assert folders - listed == set()
    assert setuptools["package-dir"] == {"histoseek_export": "export"}
    assert "histoseek_export" in listed
