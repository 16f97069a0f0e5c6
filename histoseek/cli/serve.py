"""`histoseek serve`: a local search service and web page over an index, its model loaded once."""

from __future__ import annotations

import click

from histoseek.cli.options import (
    FiniteFloatRange,
    backend_option,
    batch_size_option,
    device_option,
    exported_option,
    index_model_option,
    index_option,
    max_pixels_option,
)
from histoseek.serve.defaults import (
    DEFAULT_BATCH_WINDOW_MS,
    DEFAULT_HOST,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    MAX_BATCH_WINDOW_MS,
    MAX_UPLOAD_MB_RANGE,
)


@click.command()
@index_option()
@index_model_option()
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on. Anything but 127.0.0.1 lets others reach the service, "
    "which has no authentication.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--max-upload-mb",
    type=FiniteFloatRange(*MAX_UPLOAD_MB_RANGE),
    default=DEFAULT_MAX_UPLOAD_MB,
    show_default=True,
    help="Largest query image upload, in megabytes.",
)
@click.option(
    "--batch-window-ms",
    type=FiniteFloatRange(0, MAX_BATCH_WINDOW_MS),
    default=DEFAULT_BATCH_WINDOW_MS,
    show_default=True,
    help="Longest wait for queries still being decoded to join a batch (a lone query never waits).",
)
@backend_option()
@exported_option()
@device_option()
@batch_size_option(help="Most queries embedded together in one batch.")
@max_pixels_option(
    help="Largest image (width × height) to decode: a larger upload is refused (413), and a "
    "larger indexed image is not shown (404); give what the index was built with."
)
def serve(
    index_dir,
    model_path,
    host,
    port,
    max_upload_mb,
    batch_window_ms,
    backend,
    exported,
    device,
    batch_size,
    max_pixels,
):
    """Serve an index: a JSON API (docs at /docs) and a search page at /, model loaded once."""
    from rich.console import Console

    from histoseek.data.images import pixel_limit
    from histoseek.index.search import open_index, query_embedder
    from histoseek.serve.app import create_app
    from histoseek.serve.server import listen, run_server, url_of
    from histoseek.serve.service import SearchService

    # Markup off: paths may hold square brackets, which rich would read as styles.
    notes = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
    opened = open_index(index_dir)
    sock = listen(host, port)
    if host != DEFAULT_HOST:
        notes.print(
            f"warning: listening on {host}; histoseek serve has no authentication: anyone who "
            "can reach this address can search the index and see its images"
        )
    embedder = query_embedder(
        opened,
        model_path,
        False,
        backend,
        device,
        exported,
        batch_size,
        0,
        notes.print,
        decoding_alongside=True,
    )
    service = SearchService(
        opened,
        embedder,
        max_upload_bytes=round(max_upload_mb * 1_000_000),
        max_pixels=max_pixels,
        batch_window_s=batch_window_ms / 1e3,
    )
    notes.print(
        f"serving {opened.path} ({len(opened.items)} items) with {embedder.name} "
        f"at {url_of(sock)} (API docs: {url_of(sock)}docs); Ctrl+C stops"
    )
    # Indexed images and slides shown by the page are read under the same limit.
    with pixel_limit(max_pixels):
        run_server(create_app(service), sock)
