"""Rich progress bars with images/s and ETA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def image_progress(
    enabled: bool, description: str, total: int, transient: bool = False
) -> Iterator[Callable[..., None]]:
    """Yield `advance(n, note="")`; shows count, images/s, a note and ETA on stderr if enabled."""
    if not enabled:
        yield lambda n, note="": None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[note]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )
    with bar:
        task = bar.add_task(description, total=total, rate="", note="")

        def advance(n: int, note: str = "") -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:6.1f} img/s" if speed else "", note=note)

        yield advance
