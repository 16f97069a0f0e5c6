"""Query results as rich tables with a majority-label hint, and as one JSON document."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from histoseek.data.folder import display_path
from histoseek.index.search import QueryResult, SearchReport, shown_path


def shown_label(label: str) -> str:
    """A printable label; images directly in the indexed folder have none."""
    return display_path(label) if label else "-"


def majority_hint(result: QueryResult) -> str:
    """The summary line under a table, worded as the hint it is (not a classification)."""
    majority = result.majority()
    if majority is None:
        return "hint: no results"
    label, count = majority
    total = len(result.hits)
    return f"hint: majority label among the {total} results: {shown_label(label)} ({count}/{total})"


def search_header(report: SearchReport) -> str:
    """One line saying what was searched, with what: index, model, backend and search mode."""
    return (
        f"searched {shown_path(report.index_path)} ({report.manifest.items} images) "
        f"with model {display_path(report.model)} on {report.backend}; "
        f"search: {report.mode}; k {report.k}"
    )


def search_notes(report: SearchReport) -> list[str]:
    """The notes a search deserves: query images left out of their own results, and a k
    larger than what the index could return."""
    notes = []
    results = report.results
    with_self = [result for result in results if result.left_out_self]
    if with_self:
        notes.append(
            f"note: {len(with_self)} of {len(results)} query image(s) are themselves in the "
            "index and were left out of their own results; --include-self keeps them"
        )
    short = [result for result in results if len(result.hits) < report.k]
    if short:
        total = report.manifest.items
        less_self = " (less the query's own entry)" if any(r.left_out_self for r in short) else ""
        notes.append(
            f"note: -k {report.k} is more than the index can return: it holds only {total} "
            f"images; showing all of them{less_self}"
        )
    return notes


def result_table(result: QueryResult) -> Table:
    """A table of one query's hits: rank, cosine similarity, label, path."""
    table = Table(title=Text(f"query: {shown_path(result.query)}"), title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("similarity", justify="right")
    table.add_column("label")
    table.add_column("path", overflow="fold")
    for hit in result.hits:
        # Text, not markup: file names and labels may hold square brackets.
        table.add_row(
            str(hit.rank),
            f"{hit.similarity:.4f}",
            Text(shown_label(hit.label)),
            Text(hit.shown_path),
        )
    return table


def print_results(console: Console, results: list[QueryResult]) -> None:
    """Print a table and its majority-label hint for every query."""
    for result in results:
        console.print(result_table(result))
        console.print(Text(majority_hint(result)), highlight=False)


def results_document(report: SearchReport) -> dict:
    """The JSON document `histoseek query --json` prints."""
    queries = []
    for result in report.results:
        majority = result.majority()
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
                "majority_label": None if majority is None else display_path(majority[0]),
                "majority_share": 0.0
                if majority is None
                else round(majority[1] / len(result.hits), 6),
                "left_out_self": [shown_path(path) for path in result.left_out_self],
            }
        )
    manifest = report.manifest
    return {
        "index": {
            "path": shown_path(report.index_path),
            "source_dir": display_path(manifest.source_dir),
            "items": manifest.items,
            "trees": manifest.trees,
        },
        "model": {
            "reference": display_path(report.model),
            "fingerprint": manifest.model_fingerprint,
            "dim": manifest.dim,
        },
        "search": {
            "backend": report.backend,
            "mode": "exact" if report.exact else "annoy",
            "search_k": report.search_k,
            "k": report.k,
            "include_self": report.include_self,
            "embedding_seconds": round(report.embedding_seconds, 4),
            "search_seconds": round(report.search_seconds, 4),
            "created": report.created.isoformat(timespec="seconds"),
        },
        "queries": queries,
    }
