"""What a run folder holds, and the rules for starting, replacing and resuming a run in it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path

from histoseek.callbacks import Notify
from histoseek.data.folder import display_path
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file, dir_lock
from histoseek.inference import DEVICES
from histoseek.model.defaults import BACKBONE_NAMES
from histoseek.train_config import TRAIN_BOUNDS, TrainConfig

TRAIN_STATE = "last.pt"
BEST_MODEL = "model.pt"
METRICS = "metrics.json"
TRAIN_LOG = "train.log"
TRAIN_CONFIG = "train_config.json"
#: The files a run writes; replacing a run replaces these and leaves anything else alone.
RUN_FILES = (TRAIN_STATE, BEST_MODEL, METRICS, TRAIN_LOG, TRAIN_CONFIG)

#: Options that may differ when a run resumes: how long, where and how fast it runs, and
#: where its data now is. Every other option is part of what the run is.
RESUMABLE_OPTIONS = frozenset({"data_dir", "epochs", "device", "workers"})
_FLAGS = {"data_dir": "DATA_DIR", "run_dir": "-o"}
#: The values of the options that are a choice, as the CLI offers them.
_CHOICES = {"backbone": BACKBONE_NAMES, "device": DEVICES}


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start over an existing run (without `overwrite`) or to resume nothing."""
    run_dir = Path(run_dir)
    if resume:
        if overwrite:
            raise HistoseekError("--overwrite starts a new run; it cannot go with --resume")
        if not (run_dir / TRAIN_STATE).is_file():
            raise HistoseekError(f"nothing to resume: {run_dir / TRAIN_STATE} does not exist")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise HistoseekError(f"{display_path(run_dir)} is a file, not a run folder")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise HistoseekError(
            f"{run_dir} already holds a run; pass --overwrite to replace it or --resume to continue"
        )


def load_train_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig a run was started with."""
    run_dir = Path(run_dir)
    if not (run_dir / TRAIN_STATE).is_file():
        raise HistoseekError(f"nothing to resume: {run_dir / TRAIN_STATE} does not exist")
    path = run_dir / TRAIN_CONFIG
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        hints = typing.get_type_hints(TrainConfig)
        for name, value in data.items():
            _check_field(name, value, hints)
        return TrainConfig(**data)
    except (OSError, ValueError, TypeError) as error:
        raise HistoseekError(f"cannot read the run's configuration {path}: {error}") from None


def _check_field(name: str, value: object, hints: Mapping[str, object]) -> None:
    """Refuse a value that is not of its TrainConfig field's type (`hints`; floats also
    finite) or that its option would refuse (TRAIN_BOUNDS, _CHOICES), so a damaged or
    hand-edited config fails here in one line, not deep in training."""
    if name not in hints:
        raise ValueError(f"{name} is not a training option")
    kind = hints[name]
    if not _fits(value, kind):
        raise ValueError(f"{name} is {value!r}, not {getattr(kind, '__name__', kind)}")
    bounds = TRAIN_BOUNDS.get(name)
    if bounds is not None and value is not None and value not in bounds:
        raise ValueError(f"{name} is {value!r}, not {bounds}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"{name} is {value!r}, not one of {', '.join(_CHOICES[name])}")


def _fits(value: object, kind: object) -> bool:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_fits(entry, item) for entry in value)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value)
    return isinstance(value, kind)


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def _same(name: str, given: object, configured: object) -> bool:
    if name == "val_dir" and given is not None and configured is not None:
        return Path(str(given)).resolve() == Path(str(configured)).resolve()
    return _plain(given) == configured


def resume_config(run_dir: Path | str, given: Mapping[str, object]) -> TrainConfig:
    """The configuration that resumes the run in `run_dir`, with the options the user gave.

    `given` holds only the options the user actually gave, by TrainConfig field name. Those in
    RESUMABLE_OPTIONS replace the run's own values. Any other continues the run as configured,
    so it is refused unless it repeats the run's own value.
    """
    run_dir = Path(run_dir)
    config = load_train_config(run_dir)
    unknown = set(given) - {field.name for field in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"not training options: {', '.join(sorted(unknown))}")
    if "run_dir" in given and Path(str(given["run_dir"])).resolve() != run_dir.resolve():
        raise HistoseekError("--resume continues a run in its own folder; drop -o")
    fixed = [
        name
        for name, value in given.items()
        if name not in RESUMABLE_OPTIONS | {"run_dir"}
        and not _same(name, value, getattr(config, name))
    ]
    if fixed:
        raise HistoseekError(
            "--resume continues the run as configured; these options cannot change on resume: "
            + ", ".join(_flag(name) for name in fixed)
        )
    changes = {name: _plain(value) for name, value in given.items() if name in RESUMABLE_OPTIONS}
    return replace(config, **changes, run_dir=str(run_dir))


def write_train_config(run_dir: Path, config: TrainConfig) -> None:
    """Save the configuration with the run, so `--resume` continues it exactly."""
    with atomic_file(Path(run_dir) / TRAIN_CONFIG) as tmp:
        tmp.write_text(json.dumps(asdict(config), indent=2))


class RunLog:
    """Appends time-stamped lines to RUN_DIR/train.log and passes each one to `notify`."""

    def __init__(self, path: Path, notify: Notify | None = None):
        self.path, self.notify = Path(path), notify

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")
        if self.notify is not None:
            self.notify(message)


#: The hidden folder in RUN_DIR that holds the run `--overwrite` is replacing.
PREVIOUS_RUN_PREFIX = ".previous-run-"


def _move_back(run_dir: Path, aside: Path, drop_new: bool) -> None:
    """Move the set-aside run files back into `run_dir`; with `drop_new`, first delete the
    new run's files that have no set-aside counterpart.

    set_aside moves last.pt first and train_config.json last; moving back in the reverse
    order keeps that invariant (a non-empty aside beside a last.pt means the new run's
    checkpoint; an aside without train_config.json, a set-aside cut short), so a kill at any
    point here leaves a state that recover_previous_run finishes.
    """
    held = [name for name in RUN_FILES if (aside / name).exists()]
    if drop_new:
        for name in RUN_FILES:
            if name not in held:
                (run_dir / name).unlink(missing_ok=True)
    for name in reversed(held):
        os.replace(aside / name, run_dir / name)
    shutil.rmtree(aside, ignore_errors=True)


class PreviousRun:
    """The files of a run being replaced, kept aside until the new run has a checkpoint.

    So `--overwrite` never loses a working model to a new run that then fails; if the process
    is killed instead, recover_previous_run puts them back before the next run in the folder.
    """

    def __init__(self, run_dir: Path, aside: Path):
        self.run_dir, self.aside = run_dir, aside

    @classmethod
    def set_aside(cls, run_dir: Path) -> PreviousRun | None:
        """Move the run files in `run_dir` into a hidden folder there (None: there are none)."""
        run_dir = Path(run_dir)
        present = [name for name in RUN_FILES if (run_dir / name).exists()]
        if not present:
            return None
        aside = Path(tempfile.mkdtemp(prefix=PREVIOUS_RUN_PREFIX, dir=run_dir))
        try:
            for name in present:
                os.replace(run_dir / name, aside / name)
        except OSError as error:
            _move_back(run_dir, aside, drop_new=False)
            raise HistoseekError(
                f"cannot set the previous run in {run_dir} aside: {error}"
            ) from None
        return cls(run_dir, aside)

    def discard(self) -> None:
        """The new run has a checkpoint: delete the previous run's files."""
        shutil.rmtree(self.aside, ignore_errors=True)

    def restore(self) -> None:
        """The new run failed: delete its files and put the previous run's back."""
        _move_back(self.run_dir, self.aside, drop_new=True)


def set_aside_runs(run_dir: Path) -> list[Path]:
    """The folders in `run_dir` holding runs that `train --overwrite` set aside."""
    try:
        entries = list(Path(run_dir).iterdir())
    except OSError:  # no folder yet, or not a folder: check_run_folder says which
        return []
    return sorted(
        path for path in entries if path.name.startswith(PREVIOUS_RUN_PREFIX) and path.is_dir()
    )


def recover_previous_run(run_dir: Path, notify: Notify = lambda message: None) -> None:
    """Finish what a killed `train --overwrite` left: put the run it was replacing back, or,
    if the new run had reached its first checkpoint, delete the replaced run's files.

    Call it holding the run folder's lock (hold_run_folder), so that no live run is in it.
    """
    run_dir = Path(run_dir)
    asides = set_aside_runs(run_dir)
    if not asides:
        return
    if len(asides) > 1:
        names = ", ".join(path.name for path in asides)
        raise HistoseekError(
            f"{display_path(run_dir)} holds {len(asides)} runs that killed `train --overwrite` "
            f"runs set aside ({names}): move the files of the one to keep back into it and "
            "delete the others"
        )
    aside = asides[0]
    held = [name for name in RUN_FILES if (aside / name).exists()]
    if held and (run_dir / TRAIN_STATE).is_file():
        shutil.rmtree(aside, ignore_errors=True)
        notify(
            f"removed {display_path(aside)}: the run a killed `train --overwrite` was "
            "replacing, which the new run's first checkpoint had already superseded"
        )
        return
    # Without train_config.json (moved last) the set-aside was cut short: the files still in
    # run_dir are the replaced run's own, and stay.
    _move_back(run_dir, aside, drop_new=TRAIN_CONFIG in held)
    if held:
        notify(
            f"restored the run in {display_path(run_dir)} that a killed `train --overwrite` "
            f"had set aside in {aside.name}"
        )


@contextlib.contextmanager
def hold_run_folder(
    run_dir: Path, processes: int = 1, rank: int = 0, notify: Notify = lambda message: None
) -> Iterator[None]:
    """Hold `run_dir`'s lock for a training run (its main process does) and first recover what
    a killed `--overwrite` left there.

    Under torchrun (`processes` > 1) every rank would race over that recovery, so a
    set-aside run is refused in one line instead.
    """
    run_dir = Path(run_dir)
    if processes > 1:
        asides = set_aside_runs(run_dir)
        if asides:
            raise HistoseekError(
                f"{display_path(asides[0])} holds the run that a killed `train --overwrite` was "
                f"replacing: move its files back into {display_path(run_dir)} (replacing the "
                "killed run's), or delete it"
            )
    # Only the main process writes the folder. One not there yet has nothing to recover,
    # and its lock would create its parents before the run's checks have passed.
    if rank != 0 or not run_dir.parent.is_dir():
        yield
        return
    with dir_lock(run_dir, purpose="histoseek train run", wait_flag=None):
        if processes == 1:
            recover_previous_run(run_dir, notify)
        yield
