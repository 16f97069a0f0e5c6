"""A self-contained HTML gallery of query results: thumbnails embedded as data URIs.

Each thumbnail of an image links to its full-size original by a file:// URL. A slide tile is
shown with its slide's overview and a box where it lies, and links to the tile at full
resolution, embedded in the page (a slide itself cannot be opened by a browser). Slides
ranked for a query show their overview with a box at each of their hits. Nothing is fetched.
"""

from __future__ import annotations

import html
from pathlib import Path

from histoseek.data.folder import display_path
from histoseek.data.images import UnreadableImageError
from histoseek.data.sources import ImageSource, load_source
from histoseek.fsutil import atomic_file, write_errors
from histoseek.index.items import IndexedSource
from histoseek.index.search import Hit, QueryResult, SearchReport, shown_path
from histoseek.index.slide_query import Box
from histoseek.report.results import (
    index_contents,
    majority_hint,
    ranking_hint,
    ranking_noun,
    shown_label,
)
from histoseek.report.slide_views import HIT_COLOUR, QUERY_COLOUR, SlideOverviews
from histoseek.report.thumbnails import data_uri, fit_thumbnail, load_thumbnail

THUMBNAIL_SIZE = 160
#: Shown width of a ranked slide's overview; overviews are embedded at OVERVIEW_SIZE.
ANSWER_SIZE = 240
OVERVIEW_SIZE = 320
#: A group's slides shown with their hit boxes, at most (the rest are counted).
MAX_SLIDES_SHOWN = 3

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
figure img.overview { height: auto; margin-top: 4px; border: 1px solid #ccc; }
.answers { display: flex; flex-wrap: wrap; gap: 12px; }
figure.answer { width: {overview}px; }
figure.answer img.overview { width: {overview}px; }
.full { display: none; position: fixed; inset: 0; background: rgba(0, 0, 0, 0.85);
  align-items: center; justify-content: center; text-align: center; }
.full:target { display: flex; }
.full a { color: #eee; text-decoration: none; display: flex; flex-direction: column;
  align-items: center; }
.full img { width: auto; height: auto; min-width: 448px; max-width: 90vw; max-height: 85vh;
  image-rendering: pixelated; border: 2px solid #fff; }
.differs .agreement { color: #b35900; font-weight: bold; }
.hint { color: #555; font-style: italic; }
""".replace("{size}", str(THUMBNAIL_SIZE)).replace("{overview}", str(ANSWER_SIZE))


def _caption(lines: list[tuple[str, str]]) -> str:
    return "<br>".join(f'<span class="{name}">{html.escape(text)}</span>' for name, text in lines)


def _figure(
    image_path: Path,
    caption: list[tuple[str, str]],
    css_class: str,
    source: ImageSource | None = None,
) -> str:
    """A thumbnail of `source` (default: the file) linked to the file, over caption lines
    given as (css class, text)."""
    uri = data_uri(load_thumbnail(image_path if source is None else source, THUMBNAIL_SIZE))
    alt = html.escape(shown_path(image_path), quote=True)
    image = f'<img src="{uri}" alt="{alt}">'
    if Path(image_path).is_file():
        # The original at full size; a file:// URL, so the page itself stays self-contained.
        href = html.escape(Path(image_path).resolve().as_uri(), quote=True)
        image = f'<a href="{href}" title="open the full-size image">{image}</a>'
    return (
        f'<figure class="{css_class}">{image}<figcaption>{_caption(caption)}</figcaption></figure>'
    )


class _SlidePage:
    """What the figures of slide tiles share on one page: each slide's overview, read once,
    and the full-resolution tiles, embedded once each at the end of the page and opened
    in place by a link to their anchor (no script, no file outside the page)."""

    def __init__(self) -> None:
        self.overviews = SlideOverviews(OVERVIEW_SIZE)
        self.full_tiles: dict[tuple, tuple[str, str]] = {}

    def hit_overview(self, hit: Hit, boxes: list[Box], alt: str) -> str:
        """The overview of a hit's slide with `boxes`, grey if the slide has changed since it
        was indexed (the boxes would mark places on another picture)."""
        source = hit.source()
        if isinstance(source, IndexedSource) and source.changed():
            self.overviews.forget(hit.path)
        return self.overview(hit.path, boxes, HIT_COLOUR, alt)

    def overview(self, path: Path, boxes: list[Box], colour: tuple[int, int, int], alt: str) -> str:
        """An <img> of the slide at `path` with the boxes drawn on it."""
        uri = data_uri(self.overviews.with_boxes(path, boxes, colour))
        return f'<img class="overview" src="{uri}" alt="{html.escape(alt, quote=True)}">'

    def full_tile_link(self, hit: Hit, image: str) -> str:
        """`image` linked to the hit's tile at full resolution (as embedded in the index)."""
        key = (str(hit.path), hit.item.x, hit.item.y, hit.item.tile_size)
        if key not in self.full_tiles:
            anchor = f"tile-{len(self.full_tiles) + 1}"
            try:
                tile = load_source(hit.source())
            except UnreadableImageError:
                tile = None
            body = (
                f'<img src="{data_uri(tile, lossless=True)}" alt="the tile at full resolution">'
                if tile is not None
                else "<p>the slide can no longer be read</p>"
            )
            place = (
                f"{hit.item.slide_id} at x {hit.item.x}, y {hit.item.y}: {hit.item.tile_size} "
                f"level-0 px, read at {hit.item.mpp:g} µm/px"
            )
            self.full_tiles[key] = (
                anchor,
                f'<div class="full" id="{anchor}"><a class="close" href="#" title="close">'
                f"{body}<p>{html.escape(place)} (click to close)</p></a></div>",
            )
        anchor = self.full_tiles[key][0]
        return f'<a href="#{anchor}" title="the tile at full resolution">{image}</a>'

    def tile_figure(self, hit: Hit, caption: list[tuple[str, str]], css_class: str) -> str:
        """A tile hit: the tile, and its slide's overview with a box where it lies."""
        tile = data_uri(load_thumbnail(hit.source(), THUMBNAIL_SIZE))
        alt = f"{hit.item.slide_id} at {hit.item.x}, {hit.item.y}"
        images = f'<img src="{tile}" alt="{html.escape(alt, quote=True)}">' + self.hit_overview(
            hit, [_tile_box(hit)], f"where it lies on {hit.shown_path}"
        )
        return (
            f'<figure class="{css_class}">{self.full_tile_link(hit, images)}'
            f"<figcaption>{_caption(caption)}</figcaption></figure>"
        )

    def query_figure(self, result: QueryResult) -> str:
        """A region or whole-slide query: the region read, or the slide with its query tiles."""
        query = result.slide_query
        caption = [("rank", f"query {result.kind}"), ("path", shown_path(result.query))]
        images = ""
        if result.kind == "region":
            box = query.boxes[0]
            caption.append(("place", f"{box.x},{box.y},{box.width},{box.height}"))
            region = data_uri(fit_thumbnail(query.images[0], THUMBNAIL_SIZE))
            images = f'<img src="{region}" alt="the query region">'
        else:
            caption.append(("place", f"{len(query.boxes)} tissue tiles"))
        images += self.overview(
            query.path, query.boxes, QUERY_COLOUR, f"the query on {shown_path(result.query)}"
        )
        return (
            f'<figure class="query">{images}<figcaption>{_caption(caption)}</figcaption></figure>'
        )

    def ranking_row(self, result: QueryResult) -> str:
        """The ranked slides or groups: each slide's overview with all its hit boxes."""
        majority = result.ranking_majority()
        query_tiles = 1 if result.slide_query is None else len(result.slide_query.boxes)
        figures = []
        for entry in result.ranking:
            agrees = majority is not None and entry.label == majority[0]
            slides: dict[Path, tuple[Hit, list[Box]]] = {}
            for hit in entry.hits:
                if hit.is_tile:
                    slides.setdefault(hit.path, (hit, []))[1].append(_tile_box(hit))
            images = "".join(
                self.hit_overview(hit, boxes, f"hits on {shown_path(path)}")
                for path, (hit, boxes) in list(slides.items())[:MAX_SLIDES_SHOWN]
            )
            if not slides:  # a plain image, ranked as a slide of its own
                uri = data_uri(load_thumbnail(entry.hits[0].source(), THUMBNAIL_SIZE))
                images = f'<img src="{uri}" alt="{html.escape(entry.key, quote=True)}">'
            more = len(slides) - MAX_SLIDES_SHOWN
            caption = [
                ("rank", f"#{entry.rank}  {result.by} {entry.key}"),
                ("label", shown_label(entry.label)),
                (
                    "agreement",
                    "agrees with the majority" if agrees else "differs from the majority",
                ),
                (
                    "score",
                    f"score {entry.score:.4g}, {entry.query_tiles}/{query_tiles} query tiles",
                ),
                ("similarity", f"best similarity {entry.best_similarity:.4f}"),
            ]
            if more > 0:
                caption.append(("more", f"and {more} more slide(s)"))
            css = "answer agrees" if agrees else "answer differs"
            figures.append(
                f'<figure class="{css}">{images}'
                f"<figcaption>{_caption(caption)}</figcaption></figure>"
            )
        return (
            f"<h3>{html.escape(ranking_noun(result))} ranked by tile evidence</h3>"
            f'<div class="answers">{"".join(figures)}</div>'
            f'<p class="hint">{html.escape(ranking_hint(result))}</p>'
        )


def _tile_box(hit: Hit) -> Box:
    return Box(hit.item.x, hit.item.y, hit.item.tile_size, hit.item.tile_size)


def _result_section(result: QueryResult, page: _SlidePage) -> str:
    """One query: its image in a column of its own, beside its results; answered by slide
    or group, the ranked slides or groups below."""
    majority = result.majority()
    figures = []
    for hit in result.hits:
        agrees = majority is not None and hit.label == majority[0]
        caption = [
            ("rank", f"#{hit.rank}  {shown_label(hit.label)}"),
            ("agreement", "agrees with the majority" if agrees else "differs from the majority"),
            ("similarity", f"similarity {hit.similarity:.4f}"),
        ]
        css = "hit agrees" if agrees else "hit differs"
        if hit.is_tile:
            caption += [
                ("slide", f"slide {hit.item.slide_id}, group {hit.item.group}"),
                ("place", f"x {hit.item.x}, y {hit.item.y}"),
                ("path", hit.shown_path),
            ]
            figures.append(page.tile_figure(hit, caption, css))
        else:
            caption += [("path", hit.shown_path)]
            figures.append(_figure(hit.path, caption, css, source=hit.source()))
    if result.slide_query is None:
        query = _figure(
            result.query, [("rank", "query"), ("path", shown_path(result.query))], "query"
        )
    else:
        query = page.query_figure(result)
    ranking = "" if result.ranking is None else page.ranking_row(result)
    return (
        f"<section><h2>{html.escape(shown_path(result.query))}</h2>"
        f'<div class="result"><div class="query-column">{query}</div>'
        f'<div class="hits">{"".join(figures)}</div></div>'
        f'<p class="hint">{html.escape(majority_hint(result))}</p>{ranking}</section>'
    )


def gallery_html(report: SearchReport, title: str = "histoseek query results") -> str:
    """The gallery page: a header saying what was searched, then per query the query image
    in a column of its own and its results with label, agreement with the majority label,
    similarity and path."""
    about = [
        ("model", display_path(report.model)),
        ("index", f"{shown_path(report.index_path)} ({index_contents(report.manifest)})"),
        ("k", str(report.k)),
        ("backend", report.backend),
        ("search", report.mode),
        ("date", report.created.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]
    header = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(value)}</dd>" for name, value in about
    )
    page = _SlidePage()
    sections = "".join(_result_section(result, page) for result in report.results)
    full_tiles = "".join(box for _, box in page.full_tiles.values())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><header><h1>{html.escape(title)}</h1><dl class="about">{header}</dl></header>'
        f"{sections}{full_tiles}</body></html>\n"
    )


def write_gallery(path: Path, report: SearchReport) -> None:
    """Write the gallery page atomically; a failed write is one HistoseekError line."""
    page = gallery_html(report)
    with write_errors(path), atomic_file(Path(path)) as tmp:
        tmp.write_text(page, encoding="utf-8")
