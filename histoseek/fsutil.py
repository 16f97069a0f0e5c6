"""Atomic writes: a run that dies midway never leaves a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from histoseek.errors import HistoseekError


def _default_mode(directory: bool) -> int:
    """The permissions a plain open()/mkdir() would give, which mkstemp/mkdtemp do not."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=False))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only if the block succeeds.

    All the slow work happens in the temporary folder; the swap itself is two renames, so a run
    killed while writing leaves the previous folder untouched at `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=True))
        if target.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, old / "previous")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def write_errors(target: Path) -> Iterator[None]:
    """Turn an OSError in the block, which writes `target`, into one clear HistoseekError line.

    A full disk is named as such; the atomic writers have already removed their partial file.
    """
    try:
        yield
    except OSError as error:
        from histoseek.data.folder import display_path

        shown = display_path(target)
        if error.errno == errno.ENOSPC:
            raise HistoseekError(f"no space left on device while writing {shown}") from None
        raise HistoseekError(f"cannot write {shown}: {error.strerror or error}") from None
