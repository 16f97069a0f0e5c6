"""Listing and clearing the cache of on-the-fly exports: histoseek's own files, nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from histoseek.fsutil import atomic_file
from histoseek.inference.exported import (
    UNFINISHED_GRACE_S,
    cached_files,
    cached_onnx_path,
    clear_cache,
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("HISTOSEEK_CACHE", str(folder))
    return folder


def test_missing_cache_folder_holds_nothing(cache):
    assert cached_files() == [] and clear_cache() == []


def test_a_running_export_is_listed_as_unfinished(cache):
    export = cached_onnx_path("ef" * 32, 224)
    with atomic_file(export) as tmp:
        tmp.write_bytes(b"\0" * 10)
        (listed,) = cached_files()
        assert listed.path == tmp and not listed.finished and listed.size == 10
    (listed,) = cached_files()
    assert listed.path == export and listed.finished


def test_clear_removes_exports_and_stale_leftovers_only(cache, tmp_path):
    export = cached_onnx_path("01" * 32, 224)
    export.parent.mkdir(parents=True)
    export.write_bytes(b"\0" * 300)
    stale = export.with_name(f".{export.name}.k1ll3d.tmp")
    stale.write_bytes(b"\0" * 20)
    old = time.time() - UNFINISHED_GRACE_S - 60
    os.utime(stale, (old, old))
    running = export.with_name(f".{export.name}.runn1ng.tmp")
    running.write_bytes(b"\0" * 7)
    outside = tmp_path / "precious.onnx"
    outside.write_bytes(b"keep")
    link = cached_onnx_path("23" * 32, 224)
    link.symlink_to(outside)
    others = [
        cache / "onnx" / "model.onnx",
        cache / "onnx" / "notes.txt",
        cache / "other" / "data.bin",
        cache / "README",
    ]
    for other in others:
        other.parent.mkdir(parents=True, exist_ok=True)
        other.write_text("not histoseek's")

    assert [(c.path, c.size, c.finished) for c in cached_files()] == [
        (export, 300, True),
        (stale, 20, False),
        (running, 7, False),
    ]
    removed = clear_cache()
    assert sorted(c.path for c in removed) == sorted([export, stale])
    assert not export.exists() and not stale.exists() and running.exists()
    assert link.is_symlink() and outside.read_bytes() == b"keep"
    assert all(other.read_text() == "not histoseek's" for other in others)


def test_int8_exports_of_the_builtin_model_are_listed_and_cleared(cache):
    fp32, int8 = cached_onnx_path("ab" * 32, 224), cached_onnx_path("ab" * 32, 224, int8=True)
    assert int8.name.endswith("-224px.int8.onnx") and int8.parent == fp32.parent
    for path in (fp32, int8):
        with atomic_file(path) as tmp:
            tmp.write_bytes(b"model")
    assert {cached.path for cached in cached_files()} == {fp32, int8}
    assert len(clear_cache()) == 2 and not int8.exists()
