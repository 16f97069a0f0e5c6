"""Choosing an embedding backend for a model: `--backend auto|torch|onnx|tensorrt`.

`auto` tries TensorRT, then ONNX Runtime on CUDA, then ONNX Runtime on CPU, then PyTorch, and
takes the first that is installed, usable on the device (`--device auto` is CUDA when PyTorch
sees a GPU: a GPU run never falls back to a CPU runtime while PyTorch could use the GPU) and has
an export made from the same weights. Exports are found beside the checkpoint (`model.onnx`,
`model.engine` next to `model.pt`) or named with `exported`. Where `auto` finds no usable
export and the caller passes an `onnx_exporter`, it exports the model to ONNX on the fly into
the cache, as ONNX Runtime embeds several times faster than PyTorch on CPUs. The exporter is
passed in (by histoseek.embedder) so that this layer never imports the export package, which
itself builds on this one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from histoseek.callbacks import Notify
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_file
from histoseek.inference import BACKENDS, DEVICES
from histoseek.inference.base import Embedder
from histoseek.inference.exported import (
    ENGINE_SUFFIX,
    ONNX_SUFFIX,
    cached_onnx_path,
    export_kind,
    exports_beside,
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
) -> Embedder:
    """Create the embedder for `model` on the requested backend ('auto': the fastest usable).

    `checkpoint` is where `model` was loaded from (None for the built-in model); `exported`
    names an ONNX file or TensorRT engine instead of looking beside the checkpoint. `notify`
    receives a line for every export that `auto` finds but cannot use, and for a first
    on-the-fly export. `onnx_exporter` lets `auto` (and `onnx` for the built-in model) export
    into the cache. The embedder's `.name` says which backend was picked.
    """
    if backend not in BACKENDS:
        raise HistoseekError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise HistoseekError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if backend == "torch":
        return TorchEmbedder(model, device=device)
    exported = Path(exported) if exported else None
    finder = _ExportFinder(model, checkpoint, exported, onnx_exporter, notify)
    if backend == "onnx":
        return _onnx_embedder(finder, device)
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
    ):
        self.model = model
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.exported = exported
        self.onnx_exporter = onnx_exporter
        self.notify = notify
        self.fingerprint = model_fingerprint(model)
        if exported is not None:
            export_kind(exported)
            if not exported.is_file():
                raise HistoseekError(f"exported model not found: {exported}")

    def find(self, kind: str) -> Path | None:
        """The named export if it is of `kind`, else the one beside the checkpoint, if any."""
        if self.exported is not None:
            return self.exported if export_kind(self.exported) == kind else None
        if self.checkpoint is None:
            return None
        onnx_path, engine_path = exports_beside(self.checkpoint)
        path = onnx_path if kind == "onnx" else engine_path
        return path if path.is_file() else None

    def require(self, kind: str) -> Path:
        """Like `find`, but a missing export is an error that says how to make one."""
        found = self.find(kind)
        if found is not None:
            return found
        what = "an ONNX model" if kind == "onnx" else "a TensorRT engine"
        trt_flag = " --trt" if kind == "tensorrt" else ""
        if self.exported is not None:
            raise HistoseekError(f"--backend {kind} needs {what}, but {self.exported} is not one")
        if self.checkpoint is None:
            suffix = ONNX_SUFFIX if kind == "onnx" else ENGINE_SUFFIX
            flag = "--onnx" if kind == "onnx" else "--trt"
            raise HistoseekError(
                f"the built-in model needs {what} for --backend {kind}; make one with "
                f"`histoseek export {flag} builtin{suffix}`, then pass --exported builtin{suffix}"
            )
        beside = exports_beside(self.checkpoint)[0 if kind == "onnx" else 1]
        raise HistoseekError(
            f"--backend {kind} needs {what} of {self.checkpoint}, and there is none at {beside}; "
            f"make one: histoseek export --model {self.checkpoint}{trt_flag}"
        )

    def cached_onnx(self) -> Path:
        """An ONNX export of the model in the user cache, made now if it is not there yet."""
        path = cached_onnx_path(self.fingerprint, self.model.config.image_size)
        if not path.is_file():
            if self.onnx_exporter is None:
                raise HistoseekError("no ONNX export of these weights is cached")
            self.notify(
                "exporting the model to ONNX once for fast CPU inference (about 10 s); "
                f"cached at {path} (see `histoseek cache`)"
            )
            with atomic_file(path) as tmp:
                self.onnx_exporter(self.model, tmp)
        return path


def _ort_device(device: str) -> str:
    from histoseek.inference.onnx_backend import ort_has_cuda

    if device == "auto":
        return "cuda" if resolve_device("auto").type == "cuda" and ort_has_cuda() else "cpu"
    return device


def _onnx_embedder(finder: _ExportFinder, device: str) -> Embedder:
    from histoseek.inference.onnx_backend import OnnxEmbedder

    import_onnxruntime()
    builtin = finder.checkpoint is None and finder.exported is None
    cached = builtin and finder.onnx_exporter is not None
    path = finder.cached_onnx() if cached else finder.require("onnx")
    return OnnxEmbedder(path, device=_ort_device(device), fingerprint=finder.fingerprint)


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
    embedder = _auto_onnx_embedder(finder, on_gpu)
    if embedder is not None:
        return embedder
    return TorchEmbedder(finder.model, device=device)


def _auto_onnx_embedder(finder: _ExportFinder, on_gpu: bool) -> Embedder | None:
    from histoseek.inference.onnx_backend import OnnxEmbedder, ort_has_cuda

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

    def embedder_for(onnx_path: Path) -> Embedder | None:
        return _attempt(
            lambda: OnnxEmbedder(onnx_path, device=ort_device, fingerprint=finder.fingerprint),
            onnx_path,
            notify,
        )

    embedder = embedder_for(path) if path is not None else None
    if embedder is not None or finder.exported is not None or finder.onnx_exporter is None:
        return embedder
    # No usable export of these weights: ONNX Runtime is still several times faster than
    # torch on CPUs, so export once into the cache (keyed by the weights' fingerprint).
    cached = _attempt(finder.cached_onnx, "an on-the-fly ONNX export", notify)
    return embedder_for(cached) if cached is not None else None


def _attempt(factory: Callable, subject: Path | str, notify: Notify):
    """Run `factory`; on a user-fixable failure, say why `subject` is skipped and return None."""
    try:
        return factory()
    except HistoseekError as error:
        notify(f"not using {subject}: {error}")
        return None
