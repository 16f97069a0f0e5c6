"""Rich progress bars with images/s and ETA, handed to library code as `progress` callbacks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(
    description: str, enabled: bool = True, unit: str = "img", transient: bool = False
) -> Iterator[Callable[[int, int], None]]:
    """Yield a `progress(done, total)` callback drawing a bar on stderr (a no-op if disabled).

    A count that starts again below the last one (a new folder, a new epoch) opens a new bar.
    """
    if not enabled:
        yield lambda done, total: None
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
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )
    with bar:
        state = {"task": None, "done": 0}

        def progress(done: int, total: int) -> None:
            if state["task"] is None or done < state["done"]:
                state["task"] = bar.add_task(description, total=total, rate="")
            task = state["task"]
            bar.update(task, completed=done, total=total)
            state["done"] = done
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:6.1f} {unit}/s" if speed else "")

        yield progress
