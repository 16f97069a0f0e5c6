"""Training a CGD model: one loop for a laptop, a workstation GPU or `torchrun` (DDP).

`train` composes the parts in `loop`: `setup_run`, `train_one_epoch`,
`validate_and_checkpoint` and `finish_run`. `resume_config` says how a run resumes.
"""

from histoseek.train.loop import (
    TrainingRun,
    finish_run,
    setup_run,
    train,
    train_one_epoch,
    validate_and_checkpoint,
)
from histoseek.train.optim import freeze_stages, make_optimizer, make_scheduler
from histoseek.train.run_folder import resume_config
from histoseek.train.splits import Splits, prepare_splits
from histoseek.train.validation import EpochValidation

__all__ = [
    "EpochValidation",
    "Splits",
    "TrainingRun",
    "finish_run",
    "freeze_stages",
    "make_optimizer",
    "make_scheduler",
    "prepare_splits",
    "resume_config",
    "setup_run",
    "train",
    "train_one_epoch",
    "validate_and_checkpoint",
]
