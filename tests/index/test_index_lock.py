"""One `index` run at a time per index folder: a second one refuses or, with --wait, waits.

Each test starts a real run in another process that holds the lock until the test lets it go.
"""

from __future__ import annotations

import signal

from index_helpers import (
    HOLD_BEFORE_EMBEDDING,
    error_line,
    finish,
    index_args,
    leftovers_beside,
    read_until,
    run_cli,
    start_run,
    stop,
)

from histoseek.index.store import load_index


def test_a_second_run_refuses_while_the_first_writes(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    first = start_run(index_args(tiles, checkpoint, "-o", index_dir), HOLD_BEFORE_EMBEDDING)
    try:
        read_until(first, "HOLDING")
        line = error_line(run_cli(*index_args(tiles, checkpoint, "-o", index_dir)))
        assert line == (
            f"Error: {index_dir} is being written by another histoseek index run "
            f"(pid {first.pid}); wait for it or pass --wait"
        )
        code, stderr = finish(first)
    finally:
        stop(first)
    assert code == 0, stderr
    assert "indexed 8 image(s)" in stderr
    assert len(load_index(index_dir).items) == 8
    assert leftovers_beside(index_dir) == []


def test_wait_waits_for_the_first_run_and_then_reuses_its_work(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    first = start_run(index_args(tiles, checkpoint, "-o", index_dir), HOLD_BEFORE_EMBEDDING)
    try:
        read_until(first, "HOLDING")
        second = start_run(index_args(tiles, checkpoint, "-o", index_dir, "--wait"))
        waiting = read_until(second, "waiting for")
        assert (
            f"waiting for another histoseek index run (pid {first.pid}) to finish writing "
            f"{index_dir}" in waiting
        )
        assert second.poll() is None
        first_code, first_stderr = finish(first)
        second_code, second_stderr = finish(second)
    finally:
        stop(first)
        if "second" in locals():
            stop(second)
    assert first_code == 0, first_stderr
    assert "8 embedded, 0 reused" in first_stderr
    assert second_code == 0, second_stderr
    assert "0 embedded, 8 reused" in second_stderr
    assert leftovers_beside(index_dir) == []


def test_the_lock_dies_with_a_killed_run(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    first = start_run(index_args(tiles, checkpoint, "-o", index_dir), HOLD_BEFORE_EMBEDDING)
    try:
        read_until(first, "HOLDING")
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
    finally:
        stop(first)
    assert leftovers_beside(index_dir) == [".idx.lock"]  # stale: nobody holds it
    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    assert "8 embedded, 0 reused" in result.stderr
    assert leftovers_beside(index_dir) == []
