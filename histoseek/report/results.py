"""Query results as rich tables with a majority-label hint, and as one JSON document."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from histoseek.data.folder import display_path
from histoseek.index.manifest import Manifest
from histoseek.index.search import Hit, QueryResult, SearchReport, shown_path
from histoseek.index.slide_query import Box
from histoseek.slide.defaults import AGGREGATION_RULES


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


def ranking_noun(result: QueryResult) -> str:
    """What a ranking ranks, plural: "slides" or "groups"."""
    return f"{result.by}s"


def ranking_hint(result: QueryResult) -> str:
    """The hint line under a ranking of slides or groups."""
    majority = result.ranking_majority()
    if majority is None:
        return f"hint: no {ranking_noun(result)} found"
    label, count = majority
    total = len(result.ranking)
    return (
        f"hint: majority label among the {total} {ranking_noun(result)}: "
        f"{shown_label(label)} ({count}/{total})"
    )


def index_contents(manifest: Manifest) -> str:
    """What an index holds, in words: "N images", or "N tiles and images, of M slides"."""
    if manifest.slides:
        return f"{manifest.items} tiles and images, of {manifest.slides} slides"
    return f"{manifest.items} images"


def search_header(report: SearchReport) -> str:
    """One line saying what was searched, with what: index, model, backend and search mode."""
    held = index_contents(report.manifest)
    exclude = f"; --exclude {report.exclude}" if report.exclude else ""
    return (
        f"searched {shown_path(report.index_path)} ({held}) "
        f"with model {display_path(report.model)} on {report.backend}; "
        f"search: {report.mode}; k {report.k}{exclude}"
    )


def search_notes(report: SearchReport) -> list[str]:
    """The notes a search deserves: query images left out of their own results, query slides
    that are themselves in the index, and a k larger than what the index could return."""
    notes = []
    results = report.results
    with_self = [result for result in results if result.left_out_self]
    if with_self:
        notes.append(
            f"note: {len(with_self)} of {len(results)} query image(s) are themselves in the "
            "index and were left out of their own results; --include-self keeps them"
        )
    indexed_slides = [
        result
        for result in results
        if result.slide_query is not None and result.origin.in_index and not result.excluded
    ]
    if indexed_slides:
        first = indexed_slides[0]
        notes.append(
            f"note: {len(indexed_slides)} query slide(s) are themselves in the index (first: "
            f"{shown_path(first.query)}, slide {first.origin.slide_id}); their own tiles are "
            "among the results; --exclude same-slide leaves them out"
        )
    short = [result for result in results if len(result.hits) < report.k]
    if short:
        total = report.manifest.items
        less = ""
        if any(result.left_out_self for result in short):
            less = " (less the query's own entry)"
        if any(result.excluded for result in short):
            less = f" (less what --exclude {report.exclude} leaves out)"
        notes.append(
            f"note: -k {report.k} is more than the index can return: it holds only {total} "
            f"images; showing all of them{less}"
        )
    return notes


def _tile_place(hit: Hit) -> str:
    return f"{hit.item.x}, {hit.item.y}" if hit.is_tile else "-"


def result_table(result: QueryResult) -> Table:
    """A table of one query's hits: rank, cosine similarity, label, path; for slide tiles
    also their slide, group and place (level-0 x, y)."""
    title = f"query: {shown_path(result.query)}"
    if result.kind == "region":
        box = result.slide_query.boxes[0]
        title += f" (region {box.x},{box.y},{box.width},{box.height})"
    elif result.kind == "slide":
        title += f" ({len(result.slide_query.boxes)} tissue tiles)"
    table = Table(title=Text(title), title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("similarity", justify="right")
    table.add_column("label")
    tiles = any(hit.is_tile for hit in result.hits)
    if tiles:
        for name in ("slide", "group", "x, y"):
            table.add_column(name)
    table.add_column("path", overflow="fold")
    for hit in result.hits:
        # Text, not markup: file names and labels may hold square brackets.
        cells = [str(hit.rank), f"{hit.similarity:.4f}", Text(shown_label(hit.label))]
        if tiles:
            cells += [
                Text(hit.item.slide_id or "-"),
                Text(hit.item.group or "-"),
                _tile_place(hit),
            ]
        table.add_row(*cells, Text(hit.shown_path))
    return table


def ranking_table(result: QueryResult) -> Table:
    """A table of the slides or groups ranked for one query: score, label, evidence."""
    noun = result.by
    table = Table(
        title=Text(f"query: {shown_path(result.query)}: {ranking_noun(result)} by tile evidence"),
        title_justify="left",
    )
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column(noun, overflow="fold")
    table.add_column("label")
    table.add_column("query tiles", justify="right")
    table.add_column("best similarity", justify="right")
    if noun == "group":
        table.add_column("slides", justify="right")
    query_tiles = 1 if result.slide_query is None else len(result.slide_query.boxes)
    for entry in result.ranking:
        cells = [
            str(entry.rank),
            f"{entry.score:.4g}",
            Text(entry.key),
            Text(shown_label(entry.label)),
            f"{entry.query_tiles}/{query_tiles}",
            f"{entry.best_similarity:.4f}",
        ]
        if noun == "group":
            cells.append(str(len({hit.path for hit in entry.hits})))
        table.add_row(*cells)
    return table


def print_results(console: Console, results: list[QueryResult]) -> None:
    """Print, for every query, the ranking of slides or groups with its hint (when answered
    by slide or group), then the table of hits with its majority-label hint."""
    for result in results:
        if result.ranking is not None:
            console.print(ranking_table(result))
            console.print(Text(ranking_hint(result)), highlight=False)
        console.print(result_table(result))
        console.print(Text(majority_hint(result)), highlight=False)


def _box(box: Box) -> dict:
    return {"x": box.x, "y": box.y, "width": box.width, "height": box.height}


def _hit_document(hit: Hit) -> dict:
    """A hit in --json: rank, similarity, label, path; for a slide tile also its slide, group,
    place and size in level-0 pixels and the mpp it was read at; which query tile found it."""
    document = {
        "rank": hit.rank,
        "similarity": round(hit.similarity, 6),
        "label": display_path(hit.label),
        "path": hit.shown_path,
    }
    if hit.is_tile:
        item = hit.item
        document.update(
            slide=item.slide_id,
            group=item.group,
            x=item.x,
            y=item.y,
            tile_size=item.tile_size,
            mpp=item.mpp,
        )
    elif hit.item is not None and hit.item.group is not None:
        document["group"] = hit.item.group
    if hit.query_tile is not None:
        document["query_tile"] = hit.query_tile
    return document


def _share(majority: tuple[str, int] | None, total: int) -> tuple[str | None, float]:
    if majority is None:
        return None, 0.0
    return display_path(majority[0]), round(majority[1] / total, 6)


def _query_document(result: QueryResult) -> dict:
    """One query in --json."""
    label, share = _share(result.majority(), len(result.hits))
    document = {
        "query": shown_path(result.query),
        "kind": result.kind,
        "results": [_hit_document(hit) for hit in result.hits],
        "majority_label": label,
        "majority_share": share,
        "left_out_self": [shown_path(path) for path in result.left_out_self],
    }
    if result.slide_query is not None:
        boxes = [_box(box) for box in result.slide_query.boxes]
        if result.kind == "region":
            document["region"] = boxes[0]
        else:
            document["query_tiles"] = boxes
        document["slide_mpp"] = result.slide_query.mpp
    if result.origin is not None:
        document["origin"] = {
            "slide": result.origin.slide_id,
            "group": result.origin.group,
            "in_index": result.origin.in_index,
        }
    document["excluded_items"] = result.excluded
    document["by"] = result.by
    if result.ranking is not None:
        label, share = _share(result.ranking_majority(), len(result.ranking))
        document["ranking"] = [
            {
                "rank": entry.rank,
                result.by: entry.key,
                "label": display_path(entry.label),
                "score": round(entry.score, 6),
                "query_tiles": entry.query_tiles,
                "best_similarity": round(entry.best_similarity, 6),
                "tiles": [_hit_document(hit) for hit in entry.hits],
            }
            for entry in result.ranking
        ]
        document["ranking_majority_label"] = label
        document["ranking_majority_share"] = share
    return document


def results_document(report: SearchReport) -> dict:
    """The JSON document `histoseek query --json` prints."""
    manifest = report.manifest
    return {
        "index": {
            "path": shown_path(report.index_path),
            "source_dir": display_path(manifest.source_dir),
            "items": manifest.items,
            "slides": manifest.slides,
            "trees": manifest.trees,
            "mpp": manifest.mpp,
            "patch_size": manifest.patch_size,
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
            "search_k_scaled": report.search_k_scaled,
            "k": report.k,
            "include_self": report.include_self,
            "exclude": report.exclude,
            "tile_k": report.tile_k,
            "aggregation": AGGREGATION_RULES[0],
            "embedding_seconds": round(report.embedding_seconds, 4),
            "search_seconds": round(report.search_seconds, 4),
            "created": report.created.isoformat(timespec="seconds"),
        },
        "queries": [_query_document(result) for result in report.results],
    }
