"""Query results as rich tables with a majority-label hint, and as one JSON document."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from histoseek.data.folder import display_path
from histoseek.index.search import OpenIndex, QueryResult, shown_path


def shown_label(label: str) -> str:
    """A printable label; images directly in the indexed folder have none."""
    return display_path(label) if label else "-"


def majority_hint(result: QueryResult) -> str:
    """The summary line under a table, worded as the hint it is (not a classification)."""
    label, count = result.majority()
    total = len(result.hits)
    return f"hint: majority label among the {total} results: {shown_label(label)} ({count}/{total})"


def result_table(result: QueryResult) -> Table:
    """A table of one query's hits: rank, cosine similarity, label, path."""
    table = Table(title=f"query: {shown_path(result.query)}", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("similarity", justify="right")
    table.add_column("label")
    table.add_column("path", overflow="fold")
    for hit in result.hits:
        table.add_row(
            str(hit.rank), f"{hit.similarity:.4f}", shown_label(hit.label), hit.shown_path
        )
    return table


def print_results(console: Console, results: list[QueryResult]) -> None:
    """Print a table and its majority-label hint for every query."""
    for result in results:
        console.print(result_table(result))
        console.print(majority_hint(result), highlight=False)


def results_document(index: OpenIndex, results: list[QueryResult]) -> dict:
    """The JSON document `histoseek query --json` prints."""
    queries = []
    for result in results:
        label, count = result.majority()
        queries.append(
            {
                "query": shown_path(result.query),
                "results": [
                    {
                        "rank": hit.rank,
                        "similarity": round(hit.similarity, 6),
                        "label": display_path(hit.label),
                        "path": hit.shown_path,
                    }
                    for hit in result.hits
                ],
                "majority_label": display_path(label),
                "majority_share": round(count / len(result.hits), 6),
            }
        )
    manifest = index.manifest
    return {
        "index": {
            "path": shown_path(index.path),
            "source_dir": display_path(manifest.source_dir),
            "items": manifest.items,
            "trees": manifest.trees,
        },
        "model": {
            "reference": display_path(manifest.model_reference),
            "fingerprint": manifest.model_fingerprint,
            "dim": manifest.dim,
        },
        "queries": queries,
    }
