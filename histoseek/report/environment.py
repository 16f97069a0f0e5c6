"""Rich tables about this installation: the backends it can run, its device, its cache."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from histoseek.inference.exported import INT8_SUFFIX

if TYPE_CHECKING:  # availability imports torch, which `histoseek cache` must not load
    from histoseek.inference.availability import BackendStatus
    from histoseek.inference.exported import CachedFile


def format_size(size: int) -> str:
    """A byte count the way people read it: 512 B, 20.9 MB, 1.2 GB (powers of 1000)."""
    if size < 1000:
        return f"{size} B"
    value, unit = size / 1000, "kB"
    for larger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{value:.1f} {unit}"


def cache_summary(folder: Path, files: Sequence[CachedFile]) -> str:
    """One line: the cache folder, what histoseek keeps there and its size."""
    if not files:
        return f"{folder} (empty)"
    total = sum(cached.size for cached in files)
    return f"{folder}: {len(files)} file(s), {format_size(total)}"


def environment_table(backends: Sequence[BackendStatus], device: str, cache: str | Text) -> Table:
    """Which backends can run here (or why not), where `--device auto` runs, and `cache`, the
    cache row (see `cache_summary`)."""
    table = Table(title="this installation", show_header=False)
    table.add_column("property", style="bold")
    table.add_column("value")
    for status in backends:
        mark = Text("✓ ", style="green") if status.available else Text("✗ ", style="red")
        table.add_row(f"backend {status.name}", mark + Text(status.detail))
    table.add_row("device (auto)", device)
    table.add_row("cache", cache)
    return table


def cache_table(folder: Path, files: Sequence[CachedFile]) -> Table:
    """histoseek's files in `folder`, its cache: name, size, date, and a total row."""
    table = Table()
    table.add_column("file", overflow="fold")
    table.add_column("kind")
    table.add_column("size", justify="right")
    table.add_column("modified")
    for cached in files:
        table.add_row(
            cached.path.relative_to(folder).as_posix(),
            _cache_kind(cached),
            format_size(cached.size),
            datetime.fromtimestamp(cached.modified).strftime("%Y-%m-%d %H:%M"),
        )
    total = sum(cached.size for cached in files)
    table.add_row(f"total: {len(files)} file(s)", "", format_size(total), "", style="bold")
    return table


def _cache_kind(cached: CachedFile) -> str:
    if not cached.finished:
        return "unfinished export"
    return "INT8 ONNX export" if cached.path.name.endswith(INT8_SUFFIX) else "ONNX export"
