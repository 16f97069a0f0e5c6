"""A contact sheet PNG: one row per query, the query image then its results, with captions."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from histoseek.fsutil import atomic_file, write_errors
from histoseek.index.search import QueryResult
from histoseek.report.results import shown_label
from histoseek.report.slide_views import QUERY_COLOUR, SlideOverviews
from histoseek.report.thumbnails import fit_thumbnail, load_thumbnail

TILE = 128
GAP = 8
CAPTION_HEIGHT = 34
QUERY_FRAME = (31, 111, 235)


def caption_text(text: str) -> str:
    """`text` with every character that is not printable (a newline, a byte that was not
    UTF-8) shown as '?': Pillow draws one line, and cannot encode a stray surrogate."""
    return "".join(character if character.isprintable() else "?" for character in text)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """Shorten text from the left with '…' until it fits `width` pixels."""
    text = caption_text(text)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


def _query_thumbnail(result: QueryResult, overviews: SlideOverviews) -> Image.Image:
    """The query image; for a region, the region read; for a whole slide, its overview with
    its query tiles boxed."""
    query = result.slide_query
    if query is None:
        return load_thumbnail(result.query, TILE)
    if result.kind == "region":
        return fit_thumbnail(query.images[0], TILE)
    return fit_thumbnail(overviews.with_boxes(query.path, query.boxes, QUERY_COLOUR), TILE)


def contact_sheet(results: list[QueryResult]) -> Image.Image:
    """The contact sheet image for a list of query results."""
    columns = 1 + max(len(result.hits) for result in results)
    cell_height = TILE + CAPTION_HEIGHT
    sheet = Image.new(
        "RGB",
        (GAP + columns * (TILE + GAP), GAP + len(results) * (cell_height + GAP)),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    overviews = SlideOverviews(TILE)
    for row, result in enumerate(results):
        top = GAP + row * (cell_height + GAP)
        cells = [(_query_thumbnail(result, overviews), ["query", result.query.name])]
        cells += [
            (
                load_thumbnail(hit.source(), TILE),
                [f"#{hit.rank}  sim {hit.similarity:.3f}", shown_label(hit.label)],
            )
            for hit in result.hits
        ]
        for column, (thumbnail, caption) in enumerate(cells):
            left = GAP + column * (TILE + GAP)
            sheet.paste(thumbnail, (left, top))
            if column == 0:
                draw.rectangle(
                    (left - 2, top - 2, left + TILE + 1, top + TILE + 1),
                    outline=QUERY_FRAME,
                    width=2,
                )
            for line, text in enumerate(caption):
                draw.text(
                    (left, top + TILE + 3 + line * 14),
                    _fit(draw, text, font, TILE),
                    fill=(30, 30, 30),
                    font=font,
                )
    return sheet


def write_sheet(path: Path, results: list[QueryResult]) -> None:
    """Write the contact sheet as PNG atomically; a failed write is one HistoseekError line."""
    sheet = contact_sheet(results)
    with write_errors(path), atomic_file(Path(path)) as tmp:
        sheet.save(tmp, format="PNG")
