"""Rich tables for model information, evaluation results and prepared patch counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from histoseek.data.folder import display_path
from histoseek.model.cgd import ModelConfig
from histoseek.model.summary import ModelSummary


def model_table(
    config: ModelConfig,
    summary: ModelSummary,
    reference: str,
    class_names: list[str],
    fingerprint: str | None,
) -> Table:
    """A two-column table describing a CGD model and its cost (no fingerprint: untrained)."""
    table = Table(title="histoseek model", show_header=False)
    table.add_column("property", style="bold")
    table.add_column("value")
    rows = [
        ("model", reference),
        ("backbone", config.backbone),
        ("global descriptors", config.gd_config),
        ("embedding dim", str(config.dim)),
        (
            "classes",
            f"{config.num_classes}" + (f" ({', '.join(class_names)})" if class_names else ""),
        ),
        ("image size", f"{config.image_size} px"),
        ("parameters", f"{summary.parameters / 1e6:.2f}M"),
        (f"FLOPs ({summary.input_size}×{summary.input_size})", f"{summary.flops / 1e9:.2f}G"),
    ]
    if fingerprint is not None:
        rows.append(("fingerprint", fingerprint[:16]))
    for name, value in rows:
        table.add_row(name, Text(value))  # not markup: a path may hold square brackets
    return table


def evaluation_table(document: dict) -> Table:
    """A table of retrieval metrics, with what they were measured on as rows below them."""
    table = Table(title="retrieval quality", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    for name, value in document["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    table.add_section()
    queries = str(document["query_size"])
    if document["queries_left_out"]:
        queries += f" ({document['queries_left_out']} left out: nothing of their class to find)"
    table.add_row("queries", queries)
    table.add_row("gallery", str(document["gallery_size"]))
    # Text, not markup: a path or a --group-regex may hold square brackets.
    table.add_row("protocol", Text(document["protocol"]))
    table.add_row("model", Text(display_path(document["model"])))
    table.add_row("backend", Text(document["backend"]))
    if document["skipped_unreadable"]:
        table.add_row("skipped", f"{len(document['skipped_unreadable'])} unreadable image(s)")
    return table


def slide_evaluation_table(document: dict) -> Table:
    """A table of tile-level and slide-level metrics of a folder of slides, with what they
    were measured on as rows below them."""
    table = Table(title="retrieval quality on slides", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    for level in ("tile", "slide"):
        for name, value in document[f"{level}_metrics"].items():
            table.add_row(f"{level} {name}", f"{value:.4f}")
    table.add_section()
    slides = str(document["slides"])
    if document["query_slides_left_out"]:
        slides += f" ({document['query_slides_left_out']} left out: no other slide of their label)"
    table.add_row("slides", slides)
    tiles = f"{document['tiles']}, {document['query_tiles']} of them querying"
    if document["query_tiles_left_out"]:
        tiles += f" ({document['query_tiles_left_out']} left out: nothing of their label to find)"
    table.add_row("tiles", tiles)
    table.add_row("protocol", Text(document["protocol"]))
    table.add_row("model", Text(display_path(document["model"])))
    table.add_row("backend", Text(document["backend"]))
    if document["skipped_unreadable"]:
        table.add_row("skipped", f"{len(document['skipped_unreadable'])} unreadable slide(s)")
    return table


def patch_count_table(
    output: Path,
    splits: Sequence[str],
    classes: Sequence[str],
    counts: Mapping[str, Mapping[str, int]],
) -> Table:
    """Patches written per class (rows) and split (columns; counts[split][class]), with totals."""
    table = Table(title=Text(f"patches in {display_path(output)}"))
    table.add_column("class")
    for name in splits:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    for name in classes:
        row = [counts[s].get(name, 0) for s in splits]
        table.add_row(Text(name), *map(str, row), str(sum(row)))
    totals = [sum(counts[s].values()) for s in splits]
    table.add_row("total", *map(str, totals), str(sum(totals)), style="bold")
    return table
