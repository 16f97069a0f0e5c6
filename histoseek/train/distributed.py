"""Running under `torchrun`: joining the process group and keeping every rank in step."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist

from histoseek.errors import HistoseekError


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process validates, writes the run folder and reports."""
        return self.rank == 0


def setup_distributed(device_type: str) -> Distributed:
    """Join the process group that `torchrun` describes through environment variables."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Distributed(world_size, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


def raise_main_error(ddp: Distributed, error: str | None) -> None:
    """Raise the main process's error (None: no error) on every rank; also waits for it.

    The main process alone validates and writes files; without this, a refusal there would
    leave the other ranks waiting for it forever.
    """
    if ddp.world_size > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise HistoseekError(error)


def gather_strings(ddp: Distributed, values: set[str]) -> set[str]:
    """The union of every rank's `values`."""
    if ddp.world_size == 1:
        return set(values)
    gathered: list[list[str] | None] = [None] * ddp.world_size
    dist.all_gather_object(gathered, sorted(values))
    return {value for part in gathered for value in part or []}


def agree_on(ddp: Distributed, value: str) -> bool:
    """Whether every rank holds the same `value` (every rank gets the same answer)."""
    return len(gather_strings(ddp, {value})) == 1


def leave_distributed(ddp: Distributed) -> None:
    """Leave the process group at the end of a run."""
    if ddp.world_size > 1 and dist.is_initialized():
        # Every process arrives before any closes its connections: the main process writes the
        # run's files after the others are done, and a gloo peer that had already torn down
        # aborted it once at exit (SIGABRT, "terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
