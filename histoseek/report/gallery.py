"""A self-contained HTML gallery of query results: thumbnails embedded as data URIs.

Each thumbnail links to its full-size original by a file:// URL; nothing else is fetched.
"""

from __future__ import annotations

import html
from pathlib import Path

from histoseek.data.folder import display_path
from histoseek.fsutil import atomic_file, write_errors
from histoseek.index.search import QueryResult, SearchReport, shown_path
from histoseek.report.results import majority_hint, shown_label
from histoseek.report.thumbnails import data_uri, load_thumbnail

THUMBNAIL_SIZE = 160

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
dl.about { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
dl.about dt { font-weight: bold; }
dl.about dd { margin: 0; overflow-wrap: anywhere; }
section { margin-bottom: 2em; }
.result { display: flex; gap: 24px; align-items: flex-start; }
.query-column { flex: none; padding-right: 24px; border-right: 2px solid #ddd; }
.hits { flex: 1; min-width: 0; display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: {size}px; font-size: 12px; }
figure img { width: {size}px; height: {size}px; display: block; border: 1px solid #ccc; }
figure.query img { border: 3px solid #1f6feb; }
figure.agrees img { border-bottom: 4px solid #2da44e; }
figure.differs img { border-bottom: 4px solid #d4700a; }
figcaption { margin-top: 4px; overflow-wrap: anywhere; }
.differs .agreement { color: #b35900; font-weight: bold; }
.hint { color: #555; font-style: italic; }
""".replace("{size}", str(THUMBNAIL_SIZE))


def _figure(image_path: Path, caption: list[tuple[str, str]], css_class: str) -> str:
    """A thumbnail linked to its original, over caption lines given as (css class, text)."""
    uri = data_uri(load_thumbnail(image_path, THUMBNAIL_SIZE))
    lines = "<br>".join(
        f'<span class="{name}">{html.escape(text)}</span>' for name, text in caption
    )
    alt = html.escape(shown_path(image_path), quote=True)
    image = f'<img src="{uri}" alt="{alt}">'
    if Path(image_path).is_file():
        # The original at full size; a file:// URL, so the page itself stays self-contained.
        href = html.escape(Path(image_path).resolve().as_uri(), quote=True)
        image = f'<a href="{href}" title="open the full-size image">{image}</a>'
    return f'<figure class="{css_class}">{image}<figcaption>{lines}</figcaption></figure>'


def _result_section(result: QueryResult) -> str:
    """One query: its image in a column of its own, beside its results."""
    majority = result.majority()
    figures = []
    for hit in result.hits:
        agrees = majority is not None and hit.label == majority[0]
        caption = [
            ("rank", f"#{hit.rank}  {shown_label(hit.label)}"),
            ("agreement", "agrees with the majority" if agrees else "differs from the majority"),
            ("similarity", f"similarity {hit.similarity:.4f}"),
            ("path", hit.shown_path),
        ]
        figures.append(_figure(hit.path, caption, "hit agrees" if agrees else "hit differs"))
    query = _figure(result.query, [("rank", "query"), ("path", shown_path(result.query))], "query")
    return (
        f"<section><h2>{html.escape(shown_path(result.query))}</h2>"
        f'<div class="result"><div class="query-column">{query}</div>'
        f'<div class="hits">{"".join(figures)}</div></div>'
        f'<p class="hint">{html.escape(majority_hint(result))}</p></section>'
    )


def gallery_html(report: SearchReport, title: str = "histoseek query results") -> str:
    """The gallery page: a header saying what was searched, then per query the query image
    in a column of its own and its results with label, agreement with the majority label,
    similarity and path."""
    about = [
        ("model", display_path(report.model)),
        ("index", f"{shown_path(report.index_path)} ({report.manifest.items} images)"),
        ("k", str(report.k)),
        ("backend", report.backend),
        ("search", report.mode),
        ("date", report.created.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]
    header = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(value)}</dd>" for name, value in about
    )
    sections = "".join(_result_section(result) for result in report.results)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><header><h1>{html.escape(title)}</h1><dl class="about">{header}</dl></header>'
        f"{sections}</body></html>\n"
    )


def write_gallery(path: Path, report: SearchReport) -> None:
    """Write the gallery page atomically; a failed write is one HistoseekError line."""
    page = gallery_html(report)
    with write_errors(path), atomic_file(Path(path)) as tmp:
        tmp.write_text(page, encoding="utf-8")
