"""The index manifest: what built an index, and the checks that an index can still be used."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from histoseek import __version__
from histoseek.data.folder import display_path
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file
from histoseek.index.defaults import DEFAULT_INDEX_DIR

INDEX_FORMAT = "histoseek-index"
FORMAT_VERSION = 1

MANIFEST_NAME = "manifest.json"
ANNOY_NAME = "annoy.ann"
EMBEDDINGS_NAME = "embeddings.npy"
ITEMS_NAME = "items.jsonl"
SKIPPED_NAME = "skipped.txt"
METRIC = "angular"


@dataclass
class Manifest:
    """Everything needed to reuse an index, and to tell whether it still matches its model."""

    source_dir: str
    model_reference: str
    model_fingerprint: str
    model_config: dict
    backend: str
    dim: int
    trees: int
    seed: int
    items: int
    skipped: int
    metric: str = METRIC
    embeddings_dtype: str = "float32"
    format_version: int = FORMAT_VERSION
    histoseek_version: str = __version__
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    def to_dict(self) -> dict:
        """The manifest as written to manifest.json."""
        return {"format": INDEX_FORMAT, **asdict(self)}


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    """Write manifest.json into `index_dir` atomically."""
    with atomic_file(Path(index_dir) / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")


def read_manifest(index_dir: Path) -> Manifest:
    """Read and validate an index's manifest; any problem is one clear HistoseekError."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST_NAME
    shown = display_path(index_dir)
    if not path.is_file():
        raise HistoseekError(f"{shown} is not a histoseek index (it has no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HistoseekError(f"cannot read {display_path(path)}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise HistoseekError(f"{shown} is not a histoseek index (unknown manifest format)")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise HistoseekError(
            f"{shown} has index format version {version}, but this histoseek "
            f"({__version__}) reads version {FORMAT_VERSION}; rebuild it with "
            f"`histoseek index DIR -o {shown} --overwrite`"
        )
    known = {k: v for k, v in data.items() if k in Manifest.__dataclass_fields__}
    try:
        return Manifest(**known)
    except TypeError as error:
        raise HistoseekError(f"{display_path(path)} is incomplete: {error}") from None


def locate_index(index_dir: Path | None) -> Path:
    """The index folder to query: `index_dir`, or the default one; says what to run if absent."""
    if index_dir is None:
        if not (DEFAULT_INDEX_DIR / MANIFEST_NAME).is_file():
            raise HistoseekError(
                f"no index at ./{DEFAULT_INDEX_DIR}; "
                "run `histoseek index DIR` first or pass --index"
            )
        return DEFAULT_INDEX_DIR
    if not Path(index_dir).exists():
        shown = display_path(index_dir)
        raise HistoseekError(
            f"no index at {shown}; run `histoseek index DIR -o {shown}` first or pass --index"
        )
    return Path(index_dir)
