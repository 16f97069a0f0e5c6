"""The run folder: what a killed `train --overwrite` leaves, and recovering from it."""

import contextlib
import os

import pytest

from histoseek.errors import HistoseekError
from histoseek.train import run_folder
from histoseek.train.run_folder import (
    RUN_FILES,
    TRAIN_CONFIG,
    TRAIN_LOG,
    TRAIN_STATE,
    PreviousRun,
    hold_run_folder,
    recover_previous_run,
    set_aside_runs,
)


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the code under test may catch it."""


def write_run(run_dir, tag, names=RUN_FILES):
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (run_dir / name).write_text(f"{tag} {name}")


def contents(run_dir):
    return {path.name: path.read_text() for path in run_dir.iterdir() if path.is_file()}


def start_new_run(run_dir, names=(TRAIN_CONFIG, TRAIN_LOG)):
    """What a new run writes before its first checkpoint."""
    write_run(run_dir, "new", names)


def kill_after(monkeypatch, renames):
    """Make os.replace in run_folder die (as a kill would) after `renames` successful calls."""
    real = os.replace
    done = []

    def replace(source, target):
        if len(done) == renames:
            raise Killed
        real(source, target)
        done.append(target)

    monkeypatch.setattr(run_folder.os, "replace", replace)


@pytest.mark.parametrize("renames", range(len(RUN_FILES) + 1))
def test_a_kill_while_setting_the_previous_run_aside_is_undone(tmp_path, monkeypatch, renames):
    run_dir = tmp_path / "run"
    write_run(run_dir, "old")
    before = contents(run_dir)
    kill_after(monkeypatch, renames)
    try:
        PreviousRun.set_aside(run_dir)
    except Killed:
        pass
    else:
        start_new_run(run_dir)  # the set-aside finished, so the new run began
    monkeypatch.undo()
    recover_previous_run(run_dir)
    assert contents(run_dir) == before
    assert set_aside_runs(run_dir) == []


@pytest.mark.parametrize("renames", range(len(RUN_FILES) + 1))
def test_a_kill_while_restoring_the_previous_run_is_finished(tmp_path, monkeypatch, renames):
    run_dir = tmp_path / "run"
    write_run(run_dir, "old")
    before = contents(run_dir)
    previous = PreviousRun.set_aside(run_dir)
    start_new_run(run_dir, (TRAIN_CONFIG, TRAIN_LOG, "model.pt"))
    kill_after(monkeypatch, renames)
    with contextlib.suppress(Killed):
        previous.restore()
    monkeypatch.undo()
    recover_previous_run(run_dir)
    assert contents(run_dir) == before
    assert set_aside_runs(run_dir) == []


def test_a_killed_new_run_is_replaced_by_the_previous_one_with_a_note(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, "old", (TRAIN_STATE, TRAIN_CONFIG, TRAIN_LOG))  # no model.pt
    before = contents(run_dir)
    aside = PreviousRun.set_aside(run_dir).aside
    start_new_run(run_dir, (TRAIN_CONFIG, TRAIN_LOG, "model.pt"))
    notes = []
    recover_previous_run(run_dir, notes.append)
    assert contents(run_dir) == before  # the new run's model.pt is gone too
    assert notes == [
        f"restored the run in {run_dir} that a killed `train --overwrite` had set aside in "
        f"{aside.name}"
    ]


@pytest.mark.parametrize("discarded", [[], [TRAIN_STATE], [TRAIN_STATE, "model.pt", TRAIN_CONFIG]])
def test_a_new_run_that_reached_its_checkpoint_is_kept(tmp_path, discarded):
    run_dir = tmp_path / "run"
    write_run(run_dir, "old")
    aside = PreviousRun.set_aside(run_dir).aside
    write_run(run_dir, "new")
    for name in discarded:  # a kill part-way through discarding the previous run
        (aside / name).unlink()
    notes = []
    recover_previous_run(run_dir, notes.append)
    assert contents(run_dir) == {name: f"new {name}" for name in RUN_FILES}
    assert set_aside_runs(run_dir) == []
    assert notes == [
        f"removed {aside}: the run a killed `train --overwrite` was replacing, which the new "
        "run's first checkpoint had already superseded"
    ]


def test_nothing_to_recover_leaves_the_folder_alone(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, "old")
    (run_dir / "notes.txt").write_text("mine")
    notes = []
    recover_previous_run(run_dir, notes.append)
    recover_previous_run(tmp_path / "absent", notes.append)
    assert contents(run_dir)["notes.txt"] == "mine"
    assert len(contents(run_dir)) == len(RUN_FILES) + 1
    assert notes == []


def test_two_set_aside_runs_are_refused_untouched(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, "old")
    first = PreviousRun.set_aside(run_dir).aside
    write_run(run_dir, "newer")
    second = PreviousRun.set_aside(run_dir).aside
    with pytest.raises(HistoseekError) as raised:
        recover_previous_run(run_dir)
    names = ", ".join(sorted([first.name, second.name]))
    assert str(raised.value) == (
        f"{run_dir} holds 2 runs that killed `train --overwrite` runs set aside ({names}): "
        "move the files of the one to keep back into it and delete the others"
    )
    assert contents(first) == {name: f"old {name}" for name in RUN_FILES}
    assert contents(second) == {name: f"newer {name}" for name in RUN_FILES}


def test_holding_a_run_folder_recovers_it_and_shuts_out_a_second_run(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, "old")
    PreviousRun.set_aside(run_dir)
    start_new_run(run_dir)
    notes = []
    with hold_run_folder(run_dir, notify=notes.append):
        assert contents(run_dir) == {name: f"old {name}" for name in RUN_FILES}
        with pytest.raises(HistoseekError) as raised, hold_run_folder(run_dir):
            pass
    assert str(raised.value) == (
        f"{run_dir} is being written by another histoseek train run (pid {os.getpid()}); "
        "wait for it"
    )
    assert len(notes) == 1
    assert sorted(os.listdir(tmp_path)) == ["run"]  # the lock file goes with the run


def test_under_torchrun_a_set_aside_run_is_refused_on_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, "old")
    aside = PreviousRun.set_aside(run_dir).aside
    start_new_run(run_dir)
    for rank in (0, 1):
        with pytest.raises(HistoseekError) as raised, hold_run_folder(run_dir, 2, rank):
            pass
        assert str(raised.value) == (
            f"{aside} holds the run that a killed `train --overwrite` was replacing: move its "
            f"files back into {run_dir} (replacing the killed run's), or delete it"
        )
    assert contents(aside) == {name: f"old {name}" for name in RUN_FILES}


def test_a_run_folder_not_there_yet_is_not_created_by_holding_it(tmp_path):
    with hold_run_folder(tmp_path / "new" / "run"):
        pass
    assert os.listdir(tmp_path) == []
