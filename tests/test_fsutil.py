"""Atomic files and folders, the per-folder lock, and recovery of a cut-short folder swap."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from histoseek.errors import HistoseekError
from histoseek.fsutil import (
    atomic_dir,
    atomic_file,
    check_replaceable,
    dir_lock,
    holds_own_output,
    leftovers,
    lock_if_free,
    recover_dir,
)


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "data.txt").write_text(text)
    return path


def test_atomic_dir_replaces_a_folder_and_leaves_nothing_beside_it(tmp_path):
    target = _folder(tmp_path / "out", "old")
    with atomic_dir(target) as tmp:
        assert leftovers(target)[0].path == tmp and leftovers(target)[0].pid == os.getpid()
        (tmp / "data.txt").write_text("new")
    assert (target / "data.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]

    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "data.txt").write_text("never")
        raise RuntimeError
    assert (target / "data.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_replacing_a_file_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with atomic_dir(target) as tmp:
        (tmp / "data.txt").write_text("new")
    assert (target / "data.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_symbolic_link_is_not_replaced_but_refused_naming_its_folder(tmp_path):
    # Swapped, the link became a folder of its own, and its lock was not its folder's.
    folder = _folder(tmp_path / "elsewhere", "kept")
    (tmp_path / "out").symlink_to(folder, target_is_directory=True)
    with (
        pytest.raises(
            HistoseekError, match=f"is a symbolic link; give the folder it points to \\({folder}\\)"
        ),
        atomic_dir(tmp_path / "out"),
    ):
        pass
    assert (tmp_path / "out").is_symlink() and (folder / "data.txt").read_text() == "kept"


@pytest.mark.parametrize("context", [atomic_file, atomic_dir])
def test_a_full_disk_is_one_line_naming_the_target(context, tmp_path):
    target = tmp_path / "out"
    with pytest.raises(HistoseekError) as raised, context(target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(raised.value) == f"no space left on device while writing {target}"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("context", [atomic_file, atomic_dir])
def test_a_target_that_cannot_be_created_is_one_line_and_the_blocks_errors_pass(context, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / "a-file" / "out"
    with pytest.raises(HistoseekError) as raised, context(target):
        pass
    assert str(raised.value).startswith(f"cannot write {target}: ")
    # What the caller's own work raises is its own error, not one about writing.
    with pytest.raises(PermissionError), context(tmp_path / "out"):
        raise PermissionError(errno.EACCES, "a source file")


def test_recover_restores_a_whole_update_else_the_previous_folder(tmp_path):
    target = tmp_path / "out"
    _folder(tmp_path / ".out.4242-abc.old", "previous")
    _folder(tmp_path / ".out.4242-abc.new", "update")
    _folder(tmp_path / ".out.4343-xyz.tmp", "half")
    notes: list[str] = []
    recover_dir(target, accept=lambda path: False, notify=notes.append)
    assert (target / "data.txt").read_text() == "previous"
    assert os.listdir(tmp_path) == ["out"]
    assert notes == [
        f"restored {target} from the previous copy, which a killed run (pid 4242) left beside it",
        f"removed 2 temporary folder(s) that killed runs (pid 4242, 4343) left beside {target}",
    ]

    os.rename(target, tmp_path / ".out.4242-abc.old")
    _folder(tmp_path / ".out.4242-abc.new", "update")
    recover_dir(target)
    assert (target / "data.txt").read_text() == "update"
    assert os.listdir(tmp_path) == ["out"]


def test_the_lock_is_exclusive_and_leaves_no_file(tmp_path):
    target = tmp_path / "out"
    with dir_lock(target, purpose="test run"):
        assert (tmp_path / ".out.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(HistoseekError) as raised, dir_lock(target, purpose="test run"):
            pass
        assert str(raised.value) == (
            f"{target} is being written by another test run (pid {os.getpid()}); "
            "wait for it or pass --wait"
        )
        with lock_if_free(target) as free:
            assert not free
    assert os.listdir(tmp_path) == []
    with lock_if_free(target) as free:
        assert free


def test_the_lock_ends_with_a_killed_holder_though_its_forked_child_lives_on(tmp_path):
    target = tmp_path / "out"
    read_end, write_end = os.pipe()
    started_read, started_write = os.pipe()
    holder = os.fork()
    if holder == 0:
        try:
            with dir_lock(target):
                if os.fork() == 0:  # a decoding worker, say, that outlives the holder
                    os.close(write_end)
                    os.write(started_write, b"1")  # its fork handlers have run by now
                    os.read(read_end, 1)
                    os._exit(0)
                # Without this wait the holder could exit before the worker had dropped its
                # copy of the lock, and the test would fail for a reason not under test.
                os.read(started_read, 1)
                os._exit(0)  # dies holding the lock, as if killed: nothing released or removed
        finally:
            os._exit(1)  # never back into pytest
    os.close(read_end)
    os.close(started_read)
    os.close(started_write)
    try:
        assert os.waitpid(holder, 0)[1] == 0
        assert (tmp_path / ".out.lock").exists()
        with lock_if_free(target) as free:
            assert free
    finally:
        os.close(write_end)  # lets the worker end


def test_the_working_folder_and_what_holds_the_source_cannot_be_replaced(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    for target in (".", "..", tmp_path):
        with pytest.raises(HistoseekError, match="is the current folder or holds it"):
            check_replaceable(Path(target))
    monkeypatch.chdir("/")
    with pytest.raises(HistoseekError, match="is or holds"):
        check_replaceable(tmp_path, keep=[tmp_path / "src"])
    check_replaceable(tmp_path / "out", keep=[tmp_path / "src"])


def test_own_output_is_known_by_its_marker_and_anything_else_is_refused(tmp_path):
    assert not holds_own_output(tmp_path / "missing", "MARK", "histoseek x")
    (tmp_path / "empty").mkdir()
    assert not holds_own_output(tmp_path / "empty", "MARK", "histoseek x")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "MARK").write_text("")
    assert holds_own_output(tmp_path / "own", "MARK", "histoseek x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "letter.txt").write_text("")
    with pytest.raises(
        HistoseekError, match="files that histoseek x did not write .it has no MARK"
    ):
        holds_own_output(tmp_path / "other", "MARK", "histoseek x")
    (tmp_path / "file").write_text("")
    with pytest.raises(
        HistoseekError, match="exists and is not a folder; choose another output folder"
    ):
        holds_own_output(tmp_path / "file", "MARK", "histoseek x")
    # A folder named like the marker is not the marker.
    (tmp_path / "odd" / "MARK").mkdir(parents=True)
    with pytest.raises(HistoseekError, match="did not write"):
        holds_own_output(tmp_path / "odd", "MARK", "histoseek x")
    # What could not be replaced as a whole is refused before anything else is said of it.
    (tmp_path / "link").symlink_to(tmp_path / "own")
    with pytest.raises(HistoseekError, match="is a symbolic link"):
        holds_own_output(tmp_path / "link", "MARK", "histoseek x")
