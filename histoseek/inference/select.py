"""Choosing an embedding backend for a model: `--backend auto|torch|onnx|onnx-int8|tensorrt`.

`auto` tries TensorRT, then ONNX Runtime on CUDA, then (on the CPU) an INT8 export, then ONNX
Runtime FP32 on CPU, then PyTorch, and takes the first that is installed, usable on the device
(`--device auto` is CUDA when PyTorch sees a GPU: a GPU run never falls back to a CPU runtime
while PyTorch could use the GPU, and never runs INT8) and has an export made from the same
weights. Exports are found beside the checkpoint (`model.onnx`, `model.int8.onnx`,
`model.engine` next to `model.pt`), named with `exported`, or, for the built-in model's INT8
export, in the cache. An INT8 export is used by `auto` only if it records a passed parity
check. Where `auto` finds no usable
export and the caller passes an `onnx_exporter`, it exports the model to ONNX on the fly into
the cache, as ONNX Runtime embeds several times faster than PyTorch on CPUs. The exporter is
passed in (by histoseek.embedder) so that this layer never imports the export package, which
itself builds on this one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from histoseek.callbacks import Notify
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file, write_errors
from histoseek.inference import BACKENDS, DEVICES
from histoseek.inference.base import Embedder
from histoseek.inference.cpu import CpuPlan
from histoseek.inference.exported import (
    EXPORT_SUFFIXES,
    META_PARITY,
    UnusableExportError,
    cached_onnx_path,
    export_beside,
    export_kind,
    import_onnxruntime,
    import_tensorrt,
)
from histoseek.inference.torch_backend import TorchEmbedder, resolve_device
from histoseek.model.cgd import CGD
from histoseek.model.checkpoint import model_fingerprint

#: Writes an ONNX export of a model to a path (histoseek_export.onnx_export.export_onnx).
OnnxExporter = Callable[[CGD, Path], None]


def print_note(message: str) -> None:
    """Default `notify`: one line on stderr, so notes never mix with a command's output."""
    print(f"note: {message}", file=sys.stderr)


def create_embedder(
    model: CGD,
    backend: str = "auto",
    device: str = "auto",
    checkpoint: Path | None = None,
    exported: Path | None = None,
    notify: Notify = print_note,
    onnx_exporter: OnnxExporter | None = None,
    cpu: CpuPlan | None = None,
) -> Embedder:
    """Create the embedder for `model` on the requested backend ('auto': the fastest usable).

    `checkpoint` is where `model` was loaded from (None for the built-in model); `exported`
    names an ONNX file or TensorRT engine instead of looking beside the checkpoint. `notify`
    receives a line for every export that `auto` finds but cannot use, for the INT8 export it
    picks, and for a first on-the-fly export. `onnx_exporter` lets `auto` (and `onnx` for the
    built-in model) export into the cache. `cpu` sizes ONNX Runtime's CPU threads (default:
    every core, spinning). The embedder's `.name` says which backend was picked.
    """
    if backend not in BACKENDS:
        raise HistoseekError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise HistoseekError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if backend == "torch":
        if exported:
            raise HistoseekError(
                f"--exported {exported} is run by ONNX Runtime or TensorRT, and --backend "
                "torch runs the model itself: drop one"
            )
        return TorchEmbedder(model, device=device)
    exported = Path(exported) if exported else None
    finder = _ExportFinder(model, checkpoint, exported, onnx_exporter, notify, cpu)
    if backend == "onnx":
        return _onnx_embedder(finder, device)
    if backend == "onnx-int8":
        return _int8_embedder(finder, device)
    if backend == "tensorrt":
        return _tensorrt_embedder(finder, device)
    return _auto_embedder(finder, device)


class _ExportFinder:
    """Locates the exports that belong to one model."""

    def __init__(
        self,
        model: CGD,
        checkpoint: Path | None,
        exported: Path | None,
        onnx_exporter: OnnxExporter | None,
        notify: Notify,
        cpu: CpuPlan | None = None,
    ):
        self.model = model
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.exported = exported
        self.onnx_exporter = onnx_exporter
        self.notify = notify
        self.cpu = cpu
        self.fingerprint = model_fingerprint(model)
        if exported is not None:
            export_kind(exported)
            if not exported.is_file():
                raise HistoseekError(f"exported model not found: {exported}")

    def find(self, kind: str) -> Path | None:
        """The named export if it is of `kind`, else the one beside the checkpoint, if any (for
        the built-in model: its INT8 export in the cache)."""
        if self.exported is not None:
            return self.exported if export_kind(self.exported) == kind else None
        if self.checkpoint is not None:
            path = export_beside(self.checkpoint, kind)
        elif kind == "onnx-int8":
            path = cached_onnx_path(self.fingerprint, self.model.config.image_size, int8=True)
        else:
            return None
        return path if path.is_file() else None

    def require(self, kind: str) -> Path:
        """Like `find`, but a missing export is an error that says how to make one."""
        found = self.find(kind)
        if found is not None:
            return found
        what, flag = {
            "onnx": ("an ONNX model", "--onnx"),
            "onnx-int8": ("an INT8 ONNX model", "--int8"),
            "tensorrt": ("a TensorRT engine", "--trt"),
        }[kind]
        if self.exported is not None:
            raise HistoseekError(
                f"--backend {kind} needs {what} (*{EXPORT_SUFFIXES[kind]}), but {self.exported} "
                "is not one"
            )
        if self.checkpoint is None:
            if kind == "onnx-int8":
                raise HistoseekError(
                    f"the built-in model needs {what} for --backend {kind}; make one with "
                    "`histoseek export --int8` (it goes to the cache)"
                )
            suffix = EXPORT_SUFFIXES[kind]
            raise HistoseekError(
                f"the built-in model needs {what} for --backend {kind}; make one with "
                f"`histoseek export {flag} builtin{suffix}`, then pass --exported builtin{suffix}"
            )
        beside = export_beside(self.checkpoint, kind)
        extra_flag = "" if kind == "onnx" else f" {flag}"
        raise HistoseekError(
            f"--backend {kind} needs {what} of {self.checkpoint}, and there is none at {beside}; "
            f"make one: histoseek export --model {self.checkpoint}{extra_flag}"
        )

    def onnx_embedder(self, path: Path, device: str, precision: str) -> Embedder:
        """ONNX Runtime on `path`, checked against the model's weights and `precision`."""
        from histoseek.inference.onnx_backend import OnnxEmbedder

        threads = {}
        if self.cpu is not None and device == "cpu":
            threads = {
                "threads": self.cpu.inference_threads,
                "spinning": self.cpu.spinning,
                "batch_threads": self.cpu.batch_threads,
            }
        return OnnxEmbedder(
            path, device=device, fingerprint=self.fingerprint, precision=precision, **threads
        )

    def cached_onnx_embedder(self, device: str, exporter: OnnxExporter) -> Embedder:
        """ONNX Runtime on `device` running the model's export in the user cache, which
        `exporter` makes now if it is not there yet.

        The cache is histoseek's own, so an export there that does not load or fit (a truncated
        file, say) is made again rather than skipped on every run. atomic_file swaps it in
        whole: a concurrent run loads either export, never a half-written one.
        """
        path = cached_onnx_path(self.fingerprint, self.model.config.image_size)
        if path.is_file():
            try:
                return self.onnx_embedder(path, device, "fp32")
            except UnusableExportError as error:
                self.notify(
                    f"exporting the model to ONNX again, as its cached export is damaged: {error}"
                )
        else:
            self.notify(
                "exporting the model to ONNX once for fast CPU inference (about 10 s); "
                f"cached at {path} (see `histoseek cache`)"
            )
        # An unwritable cache is one line (and, for --backend auto, a fall-back to torch).
        with write_errors(path), atomic_file(path) as tmp:
            exporter(self.model, tmp)
        return self.onnx_embedder(path, device, "fp32")


def _ort_device(device: str) -> str:
    from histoseek.inference.onnx_backend import ort_has_cuda

    if device == "auto":
        return "cuda" if resolve_device("auto").type == "cuda" and ort_has_cuda() else "cpu"
    return device


def _onnx_embedder(finder: _ExportFinder, device: str) -> Embedder:
    import_onnxruntime()
    builtin = finder.checkpoint is None and finder.exported is None
    if builtin and finder.onnx_exporter is not None:
        return finder.cached_onnx_embedder(_ort_device(device), finder.onnx_exporter)
    return finder.onnx_embedder(finder.require("onnx"), _ort_device(device), "fp32")


def _int8_embedder(finder: _ExportFinder, device: str) -> Embedder:
    import_onnxruntime("the onnx-int8 backend")
    if device == "cuda":
        raise HistoseekError("--backend onnx-int8 runs on the CPU; drop --device cuda")
    return finder.onnx_embedder(finder.require("onnx-int8"), "cpu", "int8")


def _passed_parity(embedder: Embedder) -> str:
    """The parity figures an INT8 export records, or an error if it records no pass."""
    recorded = embedder.metadata.get(META_PARITY)
    try:
        parity = json.loads(recorded) if recorded else {}
        passed = parity.get("passed") is True
        figures = (
            f"cosine ≥ {float(parity['min_cosine']):.4f}, top-10 neighbour overlap "
            f"{float(parity['neighbour_overlap']):.3f} on {int(parity['images'])} images"
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        passed = False
    if not passed:
        raise HistoseekError(
            "it records no passed parity check; make it with histoseek export --int8"
        )
    return figures


def _tensorrt_embedder(finder: _ExportFinder, device: str) -> Embedder:
    from histoseek.inference.tensorrt_backend import TensorRTEmbedder, require_cuda

    import_tensorrt()
    if device == "cpu":
        raise HistoseekError("--backend tensorrt runs on CUDA GPUs only; drop --device cpu")
    require_cuda("the tensorrt backend")
    return TensorRTEmbedder.load(finder.require("tensorrt"), fingerprint=finder.fingerprint)


def _auto_embedder(finder: _ExportFinder, device: str) -> Embedder:
    notify = finder.notify
    on_gpu = resolve_device(device).type == "cuda"
    engine_path = finder.find("tensorrt")
    if engine_path is not None:
        if on_gpu:
            embedder = _attempt(lambda: _tensorrt_embedder(finder, device), engine_path, notify)
            if embedder is not None:
                return embedder
        else:
            notify(f"not using {engine_path}: TensorRT engines need a CUDA GPU")
    int8_path = finder.find("onnx-int8")
    if int8_path is not None:
        if on_gpu:
            notify(f"not using {int8_path}: INT8 exports run on the CPU, and this run uses CUDA")
        else:
            embedder = _auto_int8_embedder(finder, int8_path)
            if embedder is not None:
                return embedder
    embedder = _auto_onnx_embedder(finder, on_gpu)
    if embedder is not None:
        return embedder
    return TorchEmbedder(finder.model, device=device)


def _auto_int8_embedder(finder: _ExportFinder, path: Path) -> Embedder | None:
    """The INT8 export at `path` if it runs here and passed its parity check, saying so."""

    def checked() -> tuple[Embedder, str]:
        import_onnxruntime("the onnx-int8 backend")
        embedder = finder.onnx_embedder(path, "cpu", "int8")
        return embedder, _passed_parity(embedder)

    found = _attempt(checked, path, finder.notify)
    if found is None:
        return None
    embedder, figures = found
    finder.notify(f"using the INT8 export {path} (parity at export: {figures})")
    return embedder


def _auto_onnx_embedder(finder: _ExportFinder, on_gpu: bool) -> Embedder | None:
    from histoseek.inference.onnx_backend import ort_has_cuda

    notify = finder.notify

    path = finder.find("onnx")
    try:
        import_onnxruntime()
    except HistoseekError as error:
        if path is not None:
            notify(f"not using {path}: {error}")
        return None
    if on_gpu and not ort_has_cuda():
        if path is not None:
            notify(f"not using {path}: the installed onnxruntime has no CUDA support")
        return None
    ort_device = "cuda" if on_gpu else "cpu"

    embedder = None
    if path is not None:
        embedder = _attempt(lambda: finder.onnx_embedder(path, ort_device, "fp32"), path, notify)
    exporter = finder.onnx_exporter
    if embedder is not None or finder.exported is not None or exporter is None:
        return embedder
    # No usable export of these weights: ONNX Runtime is still several times faster than
    # torch on CPUs, so export once into the cache (keyed by the weights' fingerprint).
    return _attempt(
        lambda: finder.cached_onnx_embedder(ort_device, exporter),
        "an on-the-fly ONNX export",
        notify,
    )


def _attempt(factory: Callable, subject: Path | str, notify: Notify):
    """Run `factory`; on a user-fixable failure, say why `subject` is skipped and return None."""
    try:
        return factory()
    except HistoseekError as error:
        notify(f"not using {subject}: {error}")
        return None
