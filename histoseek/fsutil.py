"""Safe writes: atomic files and folders, a lock per output folder, and recovery after a kill.

A run that dies midway never leaves a half-written file or folder at its target. A folder is
written beside its target and swapped in by renames; those temporary folders carry the
writer's pid in their names (`.NAME.<pid>-<random>.tmp|new|old`), so the next run holding the
folder's lock can finish or undo a swap that a kill cut short, and remove what killed runs
left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from histoseek.callbacks import Notify
from histoseek.data.folder import display_path
from histoseek.errors import HistoseekError

#: The errors that mean the disk (or the user's quota on it) is full, as the user should read them.
_FULL_DISK = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _default_mode(directory: bool) -> int:
    """The permissions a plain open()/mkdir() would give, which mkstemp/mkdtemp do not."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def _full_disk_is_one_line(shown: str) -> Iterator[None]:
    """Turn a full disk while writing into one line naming what was being written."""
    try:
        yield
    except OSError as error:
        if error.errno in _FULL_DISK:
            raise HistoseekError(f"{_FULL_DISK[error.errno]} while writing {shown}") from None
        raise


@contextlib.contextmanager
def _creating(shown: str) -> Iterator[None]:
    """Turn a failure to create the temporary file or folder beside a target (a folder that
    cannot be written, or cannot exist) into one line naming the target."""
    try:
        yield
    except OSError as error:
        if error.errno in _FULL_DISK:
            raise
        raise HistoseekError(f"cannot write {shown}: {error.strerror or error}") from None


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    shown = display_path(target)
    with _full_disk_is_one_line(shown):
        with _creating(shown):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
            )
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            os.chmod(tmp, _default_mode(directory=False))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def check_replaceable(target: Path, keep: Iterable[Path] = ()) -> None:
    """Refuse a folder that cannot be replaced as a whole: the working folder, one of its
    parents, a folder holding one of `keep` (say, the folder being read), or a symbolic link
    (the swap would replace the link, not its folder, and its lock would be another's)."""
    resolved = Path(target).resolve()
    shown = display_path(target)
    if os.path.islink(target):
        raise HistoseekError(
            f"{shown} is a symbolic link; give the folder it points to ({display_path(resolved)}) "
            "instead, so the link stays as it is"
        )
    working = Path.cwd().resolve()
    if resolved == working or resolved in working.parents:
        raise HistoseekError(
            f"{shown} is the current folder or holds it, so it cannot be replaced as a whole; "
            "choose an output folder of its own"
        )
    for path in keep:
        kept = Path(path).resolve()
        if resolved == kept or resolved in kept.parents:
            raise HistoseekError(
                f"{shown} is or holds {display_path(kept)}, so it cannot be replaced as a whole; "
                "choose an output folder of its own"
            )


def holds_own_output(target: Path, marker: str, command: str) -> bool:
    """Whether `target` holds an earlier output of `command`, known by its `marker` file.

    A file, or a folder holding anything without `marker`, is refused: `--overwrite` replaces
    a command's own output as a whole, never what a mistyped `-o` points at. So is what
    check_replaceable refuses, first, so that no message advises an `--overwrite` that would
    then be refused.
    """
    target = Path(target)
    check_replaceable(target)
    if not os.path.lexists(target):
        return False
    shown = display_path(target)
    if not target.is_dir():
        raise HistoseekError(f"{shown} exists and is not a folder; choose another output folder")
    if not any(target.iterdir()):
        return False
    if not (target / marker).is_file():
        raise HistoseekError(
            f"{shown} holds files that {command} did not write (it has no {marker}), so it "
            "will not replace it, --overwrite or not; choose another output folder"
        )
    return True


@dataclass(frozen=True)
class Leftover:
    """A temporary folder beside a target: `tmp` being written, `new` written and about to
    replace the target, `old` the target being replaced."""

    path: Path
    pid: int
    state: str


def _swap_name(target: Path, tag: str, state: str) -> Path:
    return target.parent / f".{target.name}.{tag}.{state}"


def leftovers(target: Path) -> list[Leftover]:
    """The temporary folders that atomic_dir runs have left beside `target`."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)-[a-z0-9_]+\.(tmp|new|old)")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return sorted(
        (
            Leftover(target.parent / name, int(match[1]), match[2])
            for name in names
            if (match := pattern.fullmatch(name))
        ),
        key=lambda leftover: leftover.path.name,
    )


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only if the block succeeds.

    All the slow work happens in the temporary folder; the swap is then three renames
    (.tmp → .new, target → .old, .new → target). A run killed between them leaves no folder
    at `target`, but a whole copy beside it that recover_dir restores.
    """
    target = Path(target)
    check_replaceable(target)
    shown = display_path(target)
    with _full_disk_is_one_line(shown):
        with _creating(shown):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(
                tempfile.mkdtemp(
                    prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent
                )
            )
        tag = tmp.name[len(target.name) + 2 : -len(".tmp")]
        new, old = _swap_name(target, tag, "new"), _swap_name(target, tag, "old")
        try:
            yield tmp
            os.chmod(tmp, _default_mode(directory=True))
            os.replace(tmp, new)
            replacing = os.path.lexists(target)
            if replacing:
                os.replace(target, old)
            try:
                os.replace(new, target)
            except BaseException:
                if replacing:
                    os.replace(old, target)
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.lexists(target):  # else recover_dir needs what is left
                _remove_entry(new)
                _remove_entry(old)


def _remove_entry(path: Path) -> None:
    """Remove what is at `path`, if anything: a folder with its contents, or a file or link
    (what `--overwrite` replaced need not have been a folder; rmtree leaves those behind)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def recover_dir(
    target: Path,
    accept: Callable[[Path], bool] = lambda path: True,
    notify: Notify = lambda message: None,
) -> None:
    """Finish or undo a replacement of `target` that a killed run cut short, then remove the
    temporary folders of killed runs.

    Call it holding `dir_lock(target)`: every writer holds that lock for its whole run, so all
    it finds belongs to runs that are gone. If `target` is missing, the newest finished copy
    that `accept` passes is restored, else the folder it was replacing.
    """
    target = Path(target)
    found = leftovers(target)
    if not found:
        return
    shown = display_path(target)
    if not os.path.lexists(target):
        newest_first = sorted(found, key=lambda left: left.path.stat().st_mtime_ns, reverse=True)
        candidates = [left for left in newest_first if left.state == "new" and accept(left.path)]
        candidates += [left for left in newest_first if left.state == "old"]
        if candidates:
            restored = candidates[0]
            os.replace(restored.path, target)
            found.remove(restored)
            what = "its update" if restored.state == "new" else "the previous copy"
            notify(
                f"restored {shown} from {what}, which a killed run (pid {restored.pid}) left "
                "beside it"
            )
    for left in found:
        _remove_entry(left.path)
    if found:
        pids = ", ".join(sorted({str(left.pid) for left in found}))
        notify(
            f"removed {len(found)} temporary folder(s) that killed runs (pid {pids}) left "
            f"beside {shown}"
        )


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


#: Lock files this process holds. A forked child (a decoding worker) closes its copies, so
#: the lock ends with the process that took it, not with its longest-lived child.
_held_locks: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _held_locks:
        os.close(fd)
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _holder(fd: int) -> str:
    """' (pid N)' for the process holding the lock file open as `fd`, if it says."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f" (pid {text})" if text.isdigit() else ""


def _try_lock(target: Path, wait: bool) -> tuple[int | None, str]:
    """(fd holding target's lock, "") or, when another process holds it and `wait` is False,
    (None, " (pid N)").

    A holder removes the lock file when done, so a file locked after its removal is no lock
    any more: then the new one is tried.
    """
    path = _lock_path(target)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            return None, holder
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                os.pwrite(fd, f"{os.getpid():<20}\n".encode(), 0)
                _held_locks.add(fd)
                return fd, ""
        os.close(fd)


def _release(target: Path, fd: int) -> None:
    _held_locks.discard(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_lock_path(target))  # before unlocking, so that a waiter sees it is stale
    os.close(fd)


@contextlib.contextmanager
def dir_lock(
    target: Path,
    wait: bool = False,
    purpose: str = "histoseek run",
    notify: Notify = lambda message: None,
    wait_flag: str | None = "--wait",
) -> Iterator[None]:
    """Hold the exclusive lock on writing `target` (`.NAME.lock` beside it) for the block.

    The lock goes with the process, however it ends. When another process holds it, refuse
    in one line naming that `purpose`, its pid and the command's `wait_flag` (if it has one),
    or with `wait` say so and wait.
    """
    target = Path(target)
    shown = display_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, holder = _try_lock(target, wait=False)
    except OSError as error:
        raise HistoseekError(
            f"cannot create the lock file {display_path(_lock_path(target))}: "
            f"{error.strerror or error}"
        ) from None
    if fd is None:
        if not wait:
            offer = f" or pass {wait_flag}" if wait_flag else ""
            raise HistoseekError(
                f"{shown} is being written by another {purpose}{holder}; wait for it{offer}"
            )
        notify(f"waiting for another {purpose}{holder} to finish writing {shown}")
        fd, _ = _try_lock(target, wait=True)
    try:
        yield
    finally:
        _release(target, fd)


@contextlib.contextmanager
def lock_if_free(target: Path) -> Iterator[bool]:
    """Hold `target`'s lock for the block if no other process holds it: yields whether it does.

    For readers that would tidy up after a killed writer but must never wait for a live one.
    """
    target = Path(target)
    try:
        fd, _ = _try_lock(target, wait=False)
    except OSError:  # a read-only folder: nothing can be tidied there anyway
        fd = None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            _release(target, fd)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read a block at a time (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def write_errors(target: Path) -> Iterator[None]:
    """Turn an OSError in the block, which writes `target`, into one clear HistoseekError line.

    A full disk is named as such; the atomic writers have already removed their partial file.
    """
    shown = display_path(target)
    try:
        with _full_disk_is_one_line(shown):
            yield
    except OSError as error:
        raise HistoseekError(f"cannot write {shown}: {error.strerror or error}") from None
