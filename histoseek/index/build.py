"""Building and updating an index: embed what is new or changed into shards, then write the
index over all of them.

An index folder holds the served index (manifest.json, items.jsonl, embeddings.npy,
annoy.ann, skipped.txt), which query reads, and shards/ (see shards.py): one embedding shard
per slide and one for the plain images, which only `index` reads. A run writes each shard into
INDEX/shards as soon as it is finished, beside the served files, which it leaves alone, and
keeps the plain images it embeds as part shards, IMAGES_CHUNK at a time, until the images
shard holds them all; so a killed run keeps its finished shards and parts, and the last good
index stays whole and served. At the end it writes the served files over every shard it uses,
with those shards linked in, into a temporary folder that replaces INDEX as a whole
(fsutil.atomic_dir): the parts, and shards of slides it no longer holds (deleted, or
unreadable now), are dropped then.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from histoseek.callbacks import Notify, Progress
from histoseek.data.folder import display_path
from histoseek.data.images import current_pixel_limit
from histoseek.data.sources import why_unreadable
from histoseek.data.split import compile_group_regex, group_ids_from_regex, regex_group
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_dir, check_replaceable, dir_lock
from histoseek.index.annoy_index import build_annoy
from histoseek.index.defaults import DEFAULT_SEED, DEFAULT_TREES
from histoseek.index.items import IndexItem, item_json, item_source
from histoseek.index.labels import LabelRow, SlideIdentity, identify_slides, read_labels_csv
from histoseek.index.manifest import (
    ANNOY_NAME,
    EMBEDDINGS_DTYPE,
    EMBEDDINGS_NAME,
    ITEMS_NAME,
    MANIFEST_NAME,
    SHARDS_NAME,
    SKIPPED_NAME,
    DamagedIndexError,
    Manifest,
    read_manifest,
    write_manifest,
)
from histoseek.index.shards import (
    IMAGES_SHARD,
    Shard,
    ShardError,
    ShardInfo,
    holds_plain_images,
    images_part_name,
    images_part_number,
    images_parts,
    link_shard,
    read_shard,
    read_shard_info,
    remove_temporaries,
    shard_folders,
    shard_name,
    write_shard,
)
from histoseek.index.slides import TiledSlide, TilingOptions, find_tissue, shard_fits
from histoseek.index.store import recover_index
from histoseek.slide.folder import SlideFile, find_slides_and_images
from histoseek.slide.reader import SlideError, UnknownMppError
from histoseek.slide.sources import close_slides

if TYPE_CHECKING:
    from histoseek.embedder import ImageEmbedder

#: Plain images embedded between two part shards, so at most what a run killed while embedding
#: them loses: 4 to 45 s at the 46 to 580 images/s `index` measured on 2-core CPUs. Each chunk
#: costs a write of its embeddings and a pause while decoding starts again, too small to see:
#: 3,000 images took 27.6 s to index in chunks of 500 and 28.3 s in one (2-core Xeon, ONNX).
IMAGES_CHUNK = 2048


@dataclass(frozen=True)
class SkippedFile:
    """A file under the indexed folder that could not be indexed, and why."""

    path: str
    reason: str


@dataclass
class BuildReport:
    """What an index run did. Item counts take tiles and plain images together."""

    index_dir: Path
    items: int
    embedded: int
    reused: int
    dropped: int
    skipped: list[SkippedFile]
    backend: str
    seconds: float
    slides: int = 0
    """Slides the index holds tiles of (or found no tissue in)."""
    slides_embedded: int = 0
    slides_reused: int = 0
    tiles: int = 0


@dataclass(frozen=True)
class _Image:
    """A plain image below the folder, as it is now."""

    path: Path
    key: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class _Slide:
    """A slide below the folder, as its files are now."""

    file: SlideFile
    size: int
    mtime_ns: int


def _scan(source: Path) -> tuple[list[_Slide], list[_Image], list[SkippedFile]]:
    """The slides and plain images below `source` with their sizes and mtimes; entries that
    are not regular files, or that cannot be stat'ed, are skipped with the reason."""
    found = find_slides_and_images(source)
    skipped = [
        SkippedFile(entry.path.relative_to(source).as_posix(), entry.reason)
        for entry in found.skipped
    ]
    images, slides = [], []
    for path in found.images:
        key = path.relative_to(source).as_posix()
        try:
            info = os.stat(path)
        except OSError as error:  # removed since the walk
            skipped.append(SkippedFile(key, error.strerror or str(error)))
            continue
        images.append(_Image(path, key, info.st_size, info.st_mtime_ns))
    for file in found.slides:
        try:
            size, mtime_ns = file.stat()
        except OSError as error:
            skipped.append(SkippedFile(file.relative, error.strerror or str(error)))
            continue
        slides.append(_Slide(file, size, mtime_ns))
    return slides, images, skipped


def _check_previous(
    index_dir: Path, source: Path, embedder: ImageEmbedder, overwrite: bool
) -> None:
    """Refuse to write over anything but an index of this folder and model (or the shards a
    killed first run left), unless --overwrite replaces an index of another."""
    shown = display_path(index_dir)
    if not index_dir.exists():
        return
    if not index_dir.is_dir():
        raise HistoseekError(f"{shown} exists and is not a folder; choose another -o")
    if not (index_dir / MANIFEST_NAME).exists():
        if any(entry.name != SHARDS_NAME for entry in index_dir.iterdir()):
            raise HistoseekError(f"{shown} exists and is not a histoseek index; choose another -o")
        return
    try:
        manifest = read_manifest(index_dir)
    except DamagedIndexError as error:
        if overwrite:
            return
        raise HistoseekError(
            f"{error}; it cannot say which folder and model it indexes, so pass --overwrite "
            "to rebuild it"
        ) from None
    except HistoseekError:
        if overwrite:
            return
        raise
    if overwrite:
        return
    if manifest.source_dir != str(source):
        raise HistoseekError(
            f"{shown} holds an index of another folder ({display_path(manifest.source_dir)}); "
            "pass --overwrite to replace it, or choose another -o"
        )
    if (manifest.model_fingerprint, manifest.model_config) != (
        embedder.fingerprint,
        embedder.config.to_dict(),
    ):
        raise HistoseekError(
            f"{shown} was built with another model ({manifest.model_reference}); "
            "pass --overwrite to replace it, or choose another -o"
        )
    if manifest.tta != embedder.tta:
        built, hint = ("with", "pass --tta") if manifest.tta else ("without", "drop --tta")
        raise HistoseekError(
            f"{shown} was built {built} --tta; {hint} to update it, "
            "or pass --overwrite to replace it"
        )
    if manifest.precision != embedder.precision:
        raise HistoseekError(
            f"{shown} holds {manifest.precision.upper()} embeddings and {embedder.name} embeds "
            f"in {embedder.precision.upper()}; choose a backend that embeds in "
            f"{manifest.precision.upper()} (--backend) to update it, or pass --overwrite to "
            "embed everything again"
        )


class _Counter:
    """One progress count over several embedding jobs run one after another."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def job(self) -> Progress:
        """The progress callback of the next job; call `advance` when it is done."""
        start = self.done

        def progress(done: int, total: int) -> None:
            if self.progress is not None:
                self.progress(start + done, self.total)

        return progress

    def advance(self, count: int) -> None:
        self.done += count


@dataclass
class _Run:
    """One index run: what it reads, how it embeds, and what it found so far."""

    source: Path
    shards_dir: Path
    embedder: ImageEmbedder
    options: TilingOptions
    strict: bool
    notify: Notify
    skipped: list[SkippedFile]
    embedded: int = 0
    reused: int = 0
    unfit: Counter[str] = field(default_factory=Counter)
    """Stored shards not reused though their files are unchanged, by how they were made."""

    def skip(self, key: str, reason: str) -> None:
        """List a file as skipped, or under --strict stop at it."""
        if self.strict:
            raise HistoseekError(f"--strict: {display_path(key)} cannot be indexed ({reason})")
        self.skipped.append(SkippedFile(key, reason))

    def recipe(self) -> tuple[str, dict, bool, str]:
        """How this run embeds, in ShardInfo.recipe's terms."""
        embedder = self.embedder
        return embedder.fingerprint, embedder.config.to_dict(), embedder.tta, embedder.precision

    def stored(self, name: str, fits: Callable[[ShardInfo], bool], what: str) -> Shard | None:
        """The shard `name` if it fits and passes every check; a damaged one is noted."""
        path = self.shards_dir / name
        if not path.is_dir():
            return None
        try:
            info = read_shard_info(path)
            if fits(info):
                return read_shard(path)
            if info.recipe() != self.recipe():
                self.unfit["another way (another model, --tta or precision)"] += 1
            elif info.tiling is not None and info.tiling != self.options.shard_tiling():
                self.unfit["at other tiling options (--mpp, --patch-size, --min-tissue)"] += 1
            return None
        except ShardError as error:
            self.notify(f"the stored shard of {what} cannot be used ({error}); embedding it again")
            return None

    def written(self, path: Path, what: str) -> Shard:
        """The shard just written to `path`, read back with every check; one line if it fails
        them (only a disk fault could), since nothing this run made can then be trusted."""
        try:
            return read_shard(path)
        except ShardError as error:
            raise HistoseekError(
                f"the shard of {what} just written to {display_path(path)} cannot be read "
                f"back ({error}); check the disk, then run index again"
            ) from None

    def shard_info(self, items: int, slide: TiledSlide | None) -> ShardInfo:
        fingerprint, config, tta, precision = self.recipe()
        return ShardInfo(
            model_fingerprint=fingerprint,
            model_config=config,
            tta=tta,
            precision=precision,
            tiling=self.options.shard_tiling() if slide is not None else None,
            slide=slide.record if slide is not None else None,
            items=items,
            dim=self.embedder.backend.dim,
        )


@dataclass
class _ImagesPlan:
    """The plain images a run embeds, and those the stored shards of them still hold."""

    images_shard: Shard | None
    rows: dict[str, tuple[Shard, int]]
    """The stored shard and row of each stored image, by path: the newest, where a part that
    a killed run left holds it too."""
    reusable: set[str]
    to_embed: list[_Image]
    next_part: int
    """The number of the first part this run writes (after every part there, even damaged)."""


def _plan_images(run: _Run, images: list[_Image]) -> _ImagesPlan:
    """Which plain images keep their stored embedding (in the images shard, or a part of it
    a killed run left): same path, size and mtime, same model, and still within the pixel
    limit (one above it is read again, so refused as it would be)."""

    def fits(info: ShardInfo) -> bool:
        return info.recipe() == run.recipe()

    images_shard = run.stored(IMAGES_SHARD, fits, "the plain images")
    stored = [images_shard]
    parts = images_parts(run.shards_dir)
    for part in parts:
        stored.append(run.stored(part.name, fits, f"the plain images ({part.name})"))
    # A part was written after the images shard, and a higher-numbered part after a lower one.
    rows = {
        item.path: (shard, row)
        for shard in stored
        if shard is not None
        for row, item in enumerate(shard.items)
    }
    limit = current_pixel_limit()

    def reusable_as_stored(image: _Image) -> bool:
        shard, row = rows[image.key]
        item = shard.items[row]
        same_file = (item.size, item.mtime_ns) == (image.size, image.mtime_ns)
        return same_file and item.width * item.height <= limit

    reusable = {image.key for image in images if image.key in rows and reusable_as_stored(image)}
    return _ImagesPlan(
        images_shard=images_shard,
        rows=rows,
        reusable=reusable,
        to_embed=[image for image in images if image.key not in reusable],
        next_part=max((images_part_number(part.name) for part in parts), default=0) + 1,
    )


def _embed_chunk(
    run: _Run, chunk: list[_Image], group_regex, counter: _Counter
) -> tuple[list[IndexItem], np.ndarray]:
    """The items and embeddings of the readable images of `chunk`; the others are skipped."""
    embedded = run.embedder.embed_files([image.path for image in chunk], counter.job())
    counter.advance(len(chunk))
    for position in embedded.failed:
        image = chunk[position]
        run.skip(image.key, why_unreadable(image.path))
    items = []
    for row, position in enumerate(embedded.indices):
        image = chunk[int(position)]
        width, height = (int(side) for side in embedded.stored_sizes[row])
        label = PurePosixPath(image.key).parent.name
        group = regex_group(group_regex, image.key)
        items.append(
            IndexItem(image.key, label, width, height, image.size, image.mtime_ns, group=group)
        )
    return items, embedded.embeddings


def _embed_images(
    run: _Run, plan: _ImagesPlan, images: list[_Image], group_regex, counter: _Counter
) -> Shard | None:
    """The shard of the plain images, with the planned ones embedded IMAGES_CHUNK at a time
    and every chunk but the last kept as a part shard at once; written again only if anything
    changed. None when there are no readable plain images."""
    fresh: dict[str, tuple[IndexItem, np.ndarray]] = {}
    number = plan.next_part
    for start in range(0, len(plan.to_embed), IMAGES_CHUNK):
        chunk = plan.to_embed[start : start + IMAGES_CHUNK]
        items, vectors = _embed_chunk(run, chunk, group_regex, counter)
        # The last chunk goes straight into the images shard, written next.
        if items and start + IMAGES_CHUNK < len(plan.to_embed):
            name = images_part_name(number)
            info = run.shard_info(len(items), None)
            written = write_shard(run.shards_dir, name, info, items, vectors)
            vectors = run.written(written, f"the plain images ({name})").embeddings
            number += 1
        fresh.update((item.path, (item, vectors[row])) for row, item in enumerate(items))
    run.embedded += len(fresh)
    run.reused += len(plan.reusable)
    kept = [image.key for image in images if image.key in plan.reusable or image.key in fresh]
    if not kept:
        return None
    unchanged = plan.images_shard
    if (
        unchanged is not None
        and not fresh
        and len(kept) == len(unchanged.items)
        and all(plan.rows[key][0] is unchanged for key in kept)
    ):
        return unchanged

    def row_of(key: str) -> tuple[IndexItem, np.ndarray]:
        if key in fresh:
            return fresh[key]
        shard, row = plan.rows[key]
        return shard.items[row], shard.embeddings[row]

    rows = [row_of(key) for key in kept]
    items = [item for item, _ in rows]
    vectors = np.stack([vector for _, vector in rows])
    info = run.shard_info(len(items), None)
    written = write_shard(run.shards_dir, IMAGES_SHARD, info, items, vectors)
    return run.written(written, "the plain images")


def _embed_slide(run: _Run, tiled: TiledSlide, identity: SlideIdentity, counter: _Counter):
    """Embed a slide's tiles and write its shard; None if a tile cannot be read (OpenSlide
    refuses the rest of a slide after one failed read, so the whole slide is skipped)."""
    items = tiled.items(identity, run.options)
    sources = [item_source(run.source, item) for item in items]
    vectors = np.zeros((0, run.embedder.backend.dim), np.float32)
    if sources:
        embedded = run.embedder.embed_files(sources, counter.job())
        counter.advance(len(sources))
        close_slides()
        if embedded.failed:
            reason = why_unreadable(sources[embedded.failed[0]])
            close_slides()
            run.skip(tiled.file.relative, reason)
            return None
        vectors = embedded.embeddings
    written = write_shard(
        run.shards_dir,
        shard_name(tiled.file.relative),
        run.shard_info(len(items), tiled),
        items,
        vectors,
    )
    run.embedded += len(items)
    return run.written(written, f"slide {display_path(tiled.file.relative)}")


def _update_slides(
    run: _Run, slides: list[_Slide], tissue_progress: Progress | None
) -> tuple[dict[str, Shard], list[TiledSlide]]:
    """The stored shards that still fit their slides, by slide path, and the other slides'
    tissue tiles (found now; a slide that cannot be read is skipped)."""
    recipe = run.recipe()
    shards: dict[str, Shard] = {}
    pending = []
    for slide in slides:
        relative = slide.file.relative

        def fits(info: ShardInfo, slide: _Slide = slide) -> bool:
            return shard_fits(
                info, slide.file.relative, slide.size, slide.mtime_ns, recipe, run.options
            )

        stored = run.stored(shard_name(relative), fits, display_path(relative))
        if stored is None:
            pending.append(slide)
        else:
            shards[relative] = stored
            run.reused += len(stored.items)
    tiled = []
    unknown_mpp = 0
    for done, slide in enumerate(pending, 1):
        try:
            tiled.append(find_tissue(slide.file, slide.size, slide.mtime_ns, run.options))
        except SlideError as error:
            run.skip(slide.file.relative, _without_name(str(error), slide.file.path))
            unknown_mpp += isinstance(error, UnknownMppError)
        if tissue_progress is not None:
            tissue_progress(done, len(pending))
    if unknown_mpp:
        run.notify(
            f"{unknown_mpp} slide(s) record no microns per pixel, so they are skipped; "
            "pass --slide-mpp to give it"
        )
    return shards, tiled


def _without_name(message: str, path: Path) -> str:
    return message.removeprefix(f"{display_path(path)}: ")


def _dropped(
    plan: _ImagesPlan, images_shard: Shard | None, shards_dir: Path, kept: set[str]
) -> int:
    """Stored items the new index leaves out: plain images and slides (`kept`: the relative
    paths of the slides it holds) gone from the folder, or that could not be read this time."""
    held = {item.path for item in images_shard.items} if images_shard is not None else set()
    dropped = sum(1 for path in plan.rows if path not in held)
    present = {shard_name(relative) for relative in kept}
    for folder in shard_folders(shards_dir):
        if not holds_plain_images(folder.name) and folder.name not in present:
            try:
                dropped += read_shard_info(folder).items
            except ShardError:
                continue
    return dropped


def _write_skipped(path: Path, source: Path, skipped: list[SkippedFile]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(f"# {len(skipped)} file(s) under {display_path(source)} could not be indexed\n")
        for entry in skipped:
            out.write(f"{display_path(entry.path)}\t{entry.reason}\n")


@dataclass
class _Part:
    """Some rows of a shard, and the items they become in the index."""

    key: bytes
    shard: Shard
    rows: slice | int
    items: list[IndexItem]


def _parts(
    slide_shards: dict[str, Shard],
    identities: dict[str, SlideIdentity],
    images: Shard | None,
    group_regex,
) -> list[_Part]:
    """Every item of the index in order of path (a slide's tiles row by row), labelled as
    this run says: labels, groups and slide ids are never taken from a shard."""
    parts = []
    for relative, shard in slide_shards.items():
        who = identities[relative]
        items = [
            replace(item, label=who.label, group=who.group, slide_id=who.slide_id)
            for item in shard.items
        ]
        parts.append(_Part(os.fsencode(relative), shard, slice(0, len(items)), items))
    if images is not None:
        for row, item in enumerate(images.items):
            labelled = replace(
                item,
                label=PurePosixPath(item.path).parent.name,
                group=regex_group(group_regex, item.path),
            )
            parts.append(_Part(os.fsencode(item.path), images, row, [labelled]))
    return sorted(parts, key=lambda part: part.key)


def _write_index(
    index_dir: Path,
    manifest: Manifest,
    parts: list[_Part],
    skipped: list[SkippedFile],
    shards: list[Shard],
) -> None:
    """Write the served index over `parts` with `shards` linked in, and swap it in."""
    source = Path(manifest.source_dir)
    with atomic_dir(index_dir) as tmp:
        embeddings = np.lib.format.open_memmap(
            tmp / EMBEDDINGS_NAME,
            mode="w+",
            dtype=EMBEDDINGS_DTYPE,
            shape=(manifest.items, manifest.dim),
        )
        row = 0
        with open(tmp / ITEMS_NAME, "w", encoding="utf-8") as out:
            for part in parts:
                block = part.shard.embeddings[part.rows]
                embeddings[row : row + len(part.items)] = block
                row += len(part.items)
                out.writelines(item_json(item) + "\n" for item in part.items)
        embeddings.flush()
        _write_skipped(tmp / SKIPPED_NAME, source, skipped)
        build_annoy(embeddings, manifest.trees, manifest.seed, tmp / ANNOY_NAME)
        del embeddings
        for shard in shards:
            link_shard(shard.path, tmp / SHARDS_NAME / shard.path.name)
        write_manifest(tmp, manifest)


def check_index_request(
    source_dir: Path, index_dir: Path, group_regex: str | None, labels_csv: Path | None
) -> tuple[Path, re.Pattern[str] | None, list[LabelRow]]:
    """The checks an index run can make before its model is loaded: the folder exists, the
    output may be written there, the group regex compiles and the labels file reads; returns
    (the folder resolved, the compiled regex, the labels' rows)."""
    source = Path(source_dir)
    if not source.exists():
        raise HistoseekError(f"folder not found: {display_path(source)}")
    source = source.resolve()
    regex = compile_group_regex(group_regex)
    labels = read_labels_csv(labels_csv) if labels_csv is not None else []
    check_replaceable(Path(index_dir), keep=[source])
    return source, regex, labels


def build_index(
    source_dir: Path,
    index_dir: Path,
    embedder: ImageEmbedder,
    trees: int = DEFAULT_TREES,
    seed: int = DEFAULT_SEED,
    strict: bool = False,
    overwrite: bool = False,
    wait: bool = False,
    tiling: TilingOptions | None = None,
    group_regex: str | None = None,
    labels_csv: Path | None = None,
    progress: Progress | None = None,
    tissue_progress: Progress | None = None,
    notify: Notify = lambda message: None,
) -> BuildReport:
    """Index every slide and image below `source_dir` into `index_dir`, reusing what an
    earlier (or killed) run of it embedded.

    Slides become their tissue tiles (`tiling`: --mpp, --slide-mpp, --patch-size,
    --min-tissue); other images stay one item each. A slide whose files, the model and the
    tiling are unchanged keeps its shard; a changed one is embedded again alone; a plain image
    is reused while its path, size and mtime are. Slide ids, labels and groups come from the
    folder, `group_regex` and `labels_csv` (see labels.py). `tissue_progress(done, total)`
    counts slides as their tissue is found, then `progress(done, total)` the tiles and images
    embedded. One run at a time writes an index: a second refuses, or with `wait` waits.
    """
    started = time.perf_counter()
    options = tiling or TilingOptions()
    source, regex, labels = check_index_request(source_dir, index_dir, group_regex, labels_csv)
    index_dir = Path(index_dir)
    with dir_lock(index_dir, wait=wait, purpose="histoseek index run", notify=notify):
        recover_index(index_dir, notify)
        slides, images, skipped = _scan(source)
        if not slides and not images and not skipped:
            raise HistoseekError(f"no images found in {display_path(source)}")
        if strict and skipped:
            raise HistoseekError(
                f"--strict: {display_path(skipped[0].path)} cannot be indexed ({skipped[0].reason})"
            )
        _check_previous(index_dir, source, embedder, overwrite)
        files = [slide.file for slide in slides]
        if group_regex is not None and not labels:
            # Where --labels gives the groups, the regex may rightly match only some names.
            names = [image.key for image in images] + [file.name for file in files]
            group_ids_from_regex(names, group_regex, "paths below the folder", notify)
        identities, notes = identify_slides(files, group_regex, labels)
        for note in notes:
            notify(note)
        shards_dir = index_dir / SHARDS_NAME
        if os.path.lexists(shards_dir) and not shards_dir.is_dir():
            raise HistoseekError(
                f"{display_path(shards_dir)} is not a folder, so no embedding can be kept in "
                "it; remove it (index then embeds everything again)"
            )
        remove_temporaries(shards_dir)
        run = _Run(source, shards_dir, embedder, options, strict, notify, skipped)
        plan = _plan_images(run, images)
        slide_shards, tiled = _update_slides(run, slides, tissue_progress)
        slides_reused = len(slide_shards)
        for how, count in run.unfit.items():
            notify(f"{count} stored shard(s) were made {how}, so they are embedded again")
        tiles = sum(len(slide) for slide in tiled)
        counter = _Counter(progress, len(plan.to_embed) + tiles)
        if counter.total:
            work = [f"{len(plan.to_embed)} new or changed image(s)"] if plan.to_embed else []
            if tiled:
                work.append(f"{tiles} tile(s) of {len(tiled)} slide(s)")
            reusable = len(plan.reusable) + run.reused
            notify(f"embedding {' and '.join(work)}, reusing {reusable}, with {embedder.name}")
        images_shard = _embed_images(run, plan, images, regex, counter)
        for slide in tiled:
            relative = slide.file.relative
            shard = _embed_slide(run, slide, identities[relative], counter)
            if shard is not None:
                slide_shards[relative] = shard
        empty = sum(1 for shard in slide_shards.values() if not shard.items)
        if empty:
            notify(
                f"{empty} slide(s) have no tile of {options.patch_size} px at {options.mpp} "
                f"µm/px with at least {options.min_tissue:.0%} tissue"
            )
        dropped = _dropped(plan, images_shard, shards_dir, set(slide_shards))
        parts = _parts(slide_shards, identities, images_shard, regex)
        count = sum(len(part.items) for part in parts)
        if count == 0:
            if skipped:
                first = skipped[0]
                raise HistoseekError(
                    f"none of the {len(skipped)} image file(s) in {display_path(source)} "
                    f"could be read (first: {display_path(first.path)}: {first.reason})"
                )
            raise HistoseekError(
                f"no slide in {display_path(source)} has a tile with enough tissue, and it "
                "holds no other images; lower --min-tissue or --patch-size"
            )
        skipped.sort(key=lambda entry: os.fsencode(entry.path))
        shards = [*slide_shards.values(), *([images_shard] if images_shard else [])]
        backend = embedder.name if counter.total else "none (all embeddings reused)"
        manifest = Manifest(
            source_dir=str(source),
            model_reference=embedder.reference,
            model_fingerprint=embedder.fingerprint,
            model_config=embedder.config.to_dict(),
            backend=backend,
            dim=shards[0].info.dim,
            trees=trees,
            seed=seed,
            items=count,
            skipped=len(skipped),
            slides=len(slide_shards),
            mpp=options.mpp,
            patch_size=options.patch_size,
            min_tissue=options.min_tissue,
            slide_mpp=options.slide_mpp,
            tta=embedder.tta,
            precision=embedder.precision,
        )
        _write_index(index_dir, manifest, parts, skipped, shards)
    return BuildReport(
        index_dir=index_dir,
        items=count,
        embedded=run.embedded,
        reused=run.reused,
        dropped=dropped,
        skipped=skipped,
        backend=backend,
        seconds=time.perf_counter() - started,
        slides=len(slide_shards),
        slides_embedded=len(slide_shards) - slides_reused,
        slides_reused=slides_reused,
        tiles=sum(len(shard.items) for shard in slide_shards.values()),
    )
