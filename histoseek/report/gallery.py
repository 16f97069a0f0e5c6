"""A self-contained HTML gallery of query results: thumbnails embedded as data URIs."""

from __future__ import annotations

import html
from pathlib import Path

from histoseek.fsutil import atomic_file
from histoseek.index.search import QueryResult, shown_path
from histoseek.report.results import majority_hint, shown_label
from histoseek.report.thumbnails import data_uri, load_thumbnail

THUMBNAIL_SIZE = 160

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
section { margin-bottom: 2em; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; width: {size}px; font-size: 12px; }
figure img { width: {size}px; height: {size}px; display: block; border: 1px solid #ccc; }
figure.query img { border: 3px solid #1f6feb; }
figcaption { margin-top: 4px; overflow-wrap: anywhere; }
.hint { color: #555; font-style: italic; }
""".replace("{size}", str(THUMBNAIL_SIZE))


def _figure(image_path: Path, caption_lines: list[str], css_class: str) -> str:
    uri = data_uri(load_thumbnail(image_path, THUMBNAIL_SIZE))
    caption = "<br>".join(html.escape(line) for line in caption_lines)
    alt = html.escape(shown_path(image_path), quote=True)
    return (
        f'<figure class="{css_class}"><img src="{uri}" alt="{alt}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def gallery_html(results: list[QueryResult], title: str = "histoseek query results") -> str:
    """The gallery page: per query, the query image and its results with label, similarity
    and path."""
    sections = []
    for result in results:
        figures = [_figure(result.query, ["query", shown_path(result.query)], "query")]
        for hit in result.hits:
            caption = [
                f"#{hit.rank}  {shown_label(hit.label)}",
                f"similarity {hit.similarity:.4f}",
                hit.shown_path,
            ]
            figures.append(_figure(hit.path, caption, "hit"))
        sections.append(
            f"<section><h2>{html.escape(shown_path(result.query))}</h2>"
            f'<div class="row">{"".join(figures)}</div>'
            f'<p class="hint">{html.escape(majority_hint(result))}</p></section>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


def write_gallery(path: Path, results: list[QueryResult]) -> None:
    """Write the gallery page atomically."""
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(gallery_html(results), encoding="utf-8")
