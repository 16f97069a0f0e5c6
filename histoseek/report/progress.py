"""Rich progress bars with items/s and ETA, handed to library code as `progress` callbacks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

ProgressCallback = Callable[[int, int], None]


@contextlib.contextmanager
def progress_bars(
    bars: list[tuple[str, str]], enabled: bool = True, transient: bool = False
) -> Iterator[list[ProgressCallback]]:
    """Yield one `progress(done, total)` callback per (description, unit) in `bars`, each
    drawing its own bar on stderr, all in one display (no-ops if disabled).

    A bar appears at its first call. A count that starts again below the last one (a new
    folder, a new epoch) opens a new bar of that description.
    """
    if not enabled:
        yield [lambda done, total: None for _ in bars]
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    display = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )

    def callback(description: str, unit: str) -> ProgressCallback:
        state = {"task": None, "done": 0}

        def progress(done: int, total: int) -> None:
            if state["task"] is None or done < state["done"]:
                state["task"] = display.add_task(description, total=total, rate="")
            task = state["task"]
            display.update(task, completed=done, total=total)
            state["done"] = done
            speed = display.tasks[task].speed
            display.update(task, rate=f"{speed:6.1f} {unit}/s" if speed else "")

        return progress

    with display:
        yield [callback(description, unit) for description, unit in bars]


@contextlib.contextmanager
def progress_bar(
    description: str, enabled: bool = True, unit: str = "img", transient: bool = False
) -> Iterator[ProgressCallback]:
    """Yield a `progress(done, total)` callback drawing a bar on stderr (a no-op if disabled).

    A count that starts again below the last one (a new folder, a new epoch) opens a new bar.
    """
    with progress_bars([(description, unit)], enabled, transient) as (progress,):
        yield progress
