"""A model ready to embed image files: built once by a command, passed to index, query, evaluate.

It bundles what every embedding job needs (the backend chosen for the model, the model's
identity and preprocessing, batching and decoding workers) so library functions take one
object instead of a dozen options.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseek.callbacks import Notify, Progress
from histoseek.data.sources import ImageSource
from histoseek.inference import DEFAULT_BATCH_SIZE
from histoseek.inference.base import Embedder
from histoseek.inference.cpu import cpu_plan
from histoseek.inference.embed_files import EmbeddedFiles, embed_batch_tta, embed_files
from histoseek.inference.select import create_embedder, print_note
from histoseek.model.cgd import CGD, ModelConfig
from histoseek.model.checkpoint import BUILTIN_MODEL, load_model, model_fingerprint


@dataclass
class ImageEmbedder:
    """A loaded model on its backend, with the batching to embed files with."""

    backend: Embedder
    config: ModelConfig
    reference: str
    fingerprint: str
    class_names: list[str]
    batch_size: int
    #: Decoding worker processes (0 where the backend's batch threads decode).
    workers: int
    # Test-time augmentation: each image embedded as the mean over its 8 flips and rotations.
    tta: bool = False

    @property
    def name(self) -> str:
        """The backend's name as shown to users, e.g. 'onnxruntime (CPUExecutionProvider)'."""
        return self.backend.name

    @property
    def precision(self) -> str:
        """What the backend computes in: "fp32", "fp16" or "int8"."""
        return self.backend.precision

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint file the model came from (None for the built-in model)."""
        return None if self.reference == BUILTIN_MODEL else Path(self.reference)

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Embed a preprocessed NCHW batch as `embed_files` would (with TTA when it is on)."""
        if self.tta:
            return embed_batch_tta(self.backend, images)
        return self.backend.embed_batch(images)

    def embed_files(
        self, sources: Sequence[ImageSource], progress: Progress | None = None
    ) -> EmbeddedFiles:
        """Embed image files or slide tiles; unreadable ones are reported in `.failed`."""
        return embed_files(
            self.backend, self.config, sources, self.batch_size, self.workers, progress, self.tta
        )


def embedder_for_model(
    network: CGD,
    reference: str,
    class_names: Sequence[str] = (),
    backend: str = "auto",
    device: str = "auto",
    exported: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    notify: Notify = print_note,
    tta: bool = False,
    decoding_alongside: bool = False,
) -> ImageEmbedder:
    """Put an already loaded model on its backend (see histoseek.inference.select), with the
    decoding workers and inference threads of histoseek.inference.cpu; `tta` embeds every image
    as the mean over its 8 flips and rotations. `decoding_alongside`: other threads decode
    while the model runs (a service's requests), so its threads must not spin."""
    from histoseek.inference.onnx_backend import cpu_cores
    from histoseek.inference.torch_backend import resolve_device
    from histoseek_export.onnx_export import export_onnx

    checkpoint = None if reference == BUILTIN_MODEL else Path(reference)
    # Decided without raising: a --device cuda that cannot run is the backend's to refuse.
    on_cpu = backend == "onnx-int8" or device == "cpu" or resolve_device("auto").type == "cpu"
    plan = cpu_plan(cpu_cores(), workers, on_cpu, decoding_alongside)
    backend_embedder = create_embedder(
        network,
        backend,
        device,
        checkpoint,
        exported=exported,
        notify=notify,
        onnx_exporter=export_onnx,
        cpu=plan,
    )
    return ImageEmbedder(
        backend=backend_embedder,
        config=network.config,
        reference=reference,
        fingerprint=model_fingerprint(network),
        class_names=list(class_names),
        batch_size=batch_size,
        # A backend running batches side by side decodes in its own threads.
        workers=0 if backend_embedder.batch_threads > 1 else plan.decoding_workers,
        tta=tta,
    )


def load_image_embedder(
    model: str | Path | None,
    backend: str = "auto",
    device: str = "auto",
    exported: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    notify: Notify = print_note,
    tta: bool = False,
) -> ImageEmbedder:
    """Load a checkpoint (None or 'builtin': the built-in model) and put it on its backend."""
    network, class_names, reference = load_model(model)
    return embedder_for_model(
        network, reference, class_names, backend, device, exported, batch_size, workers, notify, tta
    )
