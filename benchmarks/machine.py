"""What a benchmark's figures were measured on, recorded the same way by every script."""

from __future__ import annotations

import platform
from typing import Any

from histoseek.inference.cpu import cpu_name
from histoseek.inference.onnx_backend import cpu_cores


def machine_record(**extra: Any) -> dict[str, Any]:
    """The CPU, cores, torch threads, Python, torch and GPU of this run, plus `extra`."""
    # Imported here, not at the top: wsi.py defers its heavy imports until they are used, and
    # importing this module must not load torch for it.
    import torch

    return {
        "cpu": cpu_name(),
        "cpu_cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        **extra,
    }
