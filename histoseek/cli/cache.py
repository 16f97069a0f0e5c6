"""`histoseek cache`: list or clear histoseek's cache of on-the-fly model exports."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--clear",
    is_flag=True,
    help="Remove histoseek's cached exports (nothing else in the folder is touched).",
)
def cache(clear: bool) -> None:
    """List the cache of automatic ONNX exports (path, files, sizes, total), or clear it.

    The folder is $HISTOSEEK_CACHE, else $XDG_CACHE_HOME/histoseek, else ~/.cache/histoseek.
    """
    from rich.console import Console

    from histoseek.inference.exported import (
        UNFINISHED_GRACE_S,
        cache_dir,
        cached_files,
        clear_cache,
    )
    from histoseek.report.environment import cache_table, format_size

    console = Console(highlight=False)
    folder = cache_dir()
    if not clear:
        files = cached_files()
        if not files:
            console.print(f"{folder}: no cached export")
            return
        # On its own line rather than as the table's title, which would wrap a long path.
        console.print(f"histoseek cache: {folder}", soft_wrap=True)
        console.print(cache_table(folder, files))
        return
    removed = clear_cache()
    for cached in removed:
        console.print(f"removed {cached.path} ({format_size(cached.size)})")
    freed = format_size(sum(cached.size for cached in removed))
    console.print(f"removed {len(removed)} file(s) from {folder}, freed {freed}")
    kept = [cached for cached in cached_files() if not cached.finished]
    if kept:
        console.print(
            f"kept {len(kept)} unfinished export(s) younger than {UNFINISHED_GRACE_S // 60} "
            "minutes: a running command may still be writing them"
        )
