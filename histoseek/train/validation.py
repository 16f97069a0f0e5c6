"""Each epoch's validation: the held-out images query the training images, as users search."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from histoseek.data.folder import LabelledImages
from histoseek.errors import HistoseekError
from histoseek.inference.base import Embedder
from histoseek.inference.embed_files import EmbeddedFiles, embed_files
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.metrics import exact_neighbours, retrieval_metrics, selection_score
from histoseek.metrics_defaults import DEFAULT_VOTE_K
from histoseek.model.backbones import get_backbone_spec
from histoseek.model.cgd import CGD
from histoseek.train.splits import MIN_VALIDATION_IMAGES

#: The frozen stages' output is kept between epochs only up to this size (Lite0's at 224 px
#: takes 63 KB an image; a ResNet's, after its first block at stride 4, 3.2 MB).
MAX_KEPT_BYTES = 1 << 30


class _StagesEmbedder:
    """Runs the first stages of a trunk; what it 'embeds' is their output, flattened."""

    name = "frozen stages"
    batch_threads = 1
    precision = "fp32"

    def __init__(self, stages: nn.Module, shape: tuple[int, ...], device: torch.device):
        self.stages, self.shape, self.device = stages, shape, device
        self.dim = int(np.prod(shape))

    @torch.inference_mode()
    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images))
        batch = batch.to(self.device, memory_format=torch.channels_last)
        return self.stages(batch).float().cpu().reshape(len(images), -1).numpy()


class EpochValidation:
    """Scores the model after an epoch: R@1 and mMV@k of the validation images as queries
    against `gallery` (training images), and their `selection_score`, which picks the best
    epoch.

    Queries search the training images, as a user's search an archive, rather than each other:
    validation images held out by patient (or colour cluster) find their own group within
    themselves from the first epoch on, which says little about the archive's neighbours.

    Frozen stages keep their weights and BatchNorm statistics, and validation's preprocessing
    is fixed, so what they make of these images never changes: that is computed at the first
    call and kept (up to MAX_KEPT_BYTES), and later epochs run only the stages that train.
    Each call leaves the model in eval mode: each epoch sets the training modes again.
    """

    def __init__(
        self,
        val: LabelledImages,
        gallery: LabelledImages,
        frozen_stages: int,
        batch_size: int,
        workers: int,
    ):
        self.val, self.gallery = val, gallery
        self.frozen_stages = frozen_stages
        self.batch_size, self.workers = batch_size, workers
        # Per image list (val, gallery): (the frozen stages' output, which images it is of).
        self._kept: list[tuple[torch.Tensor, np.ndarray]] | None = None
        self._keep = frozen_stages > 0

    def __call__(self, model: CGD, device: torch.device) -> dict[str, float]:
        model.eval()
        (queries, query_rows), (archive, archive_rows) = self._embed(model, device)
        if len(queries) < MIN_VALIDATION_IMAGES:
            raise HistoseekError(
                f"only {len(queries)} of the {len(self.val)} validation images can be read; "
                f"validation needs at least {MIN_VALIDATION_IMAGES}"
            )
        if not len(archive):
            raise HistoseekError("none of the training images validation searches can be read")
        metrics = retrieval_metrics(
            exact_neighbours(queries, archive, k=DEFAULT_VOTE_K),
            np.asarray(self.val.labels)[query_rows],
            np.asarray(self.gallery.labels)[archive_rows],
            recall_ks=(1,),
        )
        votes = f"mmv@{DEFAULT_VOTE_K}"
        return {
            "val_recall@1": metrics["recall@1"],
            f"val_{votes}": metrics[votes],
            "val_score": selection_score(metrics),
        }

    def _embed(self, model: CGD, device: torch.device) -> list[tuple[np.ndarray, np.ndarray]]:
        """(embeddings, which images they are of) of the validation and gallery images."""
        stages = get_backbone_spec(model.config.backbone).stages(model.trunk)
        frozen = nn.Sequential(*stages[: self.frozen_stages])
        if self._keep and self._kept is None:
            self._kept = self._frozen_output(model, frozen, device)
            self._keep = self._kept is not None
        if self._kept is None:
            embedder = TorchEmbedder(model, str(device))
            found = [
                self._embed_files(embedder, model, images) for images in (self.val, self.gallery)
            ]
            return [(files.embeddings, files.indices) for files in found]
        trained = nn.Sequential(*stages[self.frozen_stages :])
        return [(self._finish(model, trained, kept, device), rows) for kept, rows in self._kept]

    def _embed_files(self, embedder: Embedder, model: CGD, images: LabelledImages) -> EmbeddedFiles:
        return embed_files(embedder, model.config, images.paths, self.batch_size, self.workers)

    def _frozen_output(
        self, model: CGD, frozen: nn.Module, device: torch.device
    ) -> list[tuple[torch.Tensor, np.ndarray]] | None:
        """The frozen stages' output for every readable image, or None where it is too big."""
        side = model.config.image_size
        with torch.inference_mode():
            shape = tuple(frozen(torch.zeros(1, 3, side, side, device=device)).shape[1:])
        count = len(self.val) + len(self.gallery)
        if count * int(np.prod(shape)) * 4 > MAX_KEPT_BYTES:
            return None
        embedder = _StagesEmbedder(frozen, shape, device)
        kept = []
        for images in (self.val, self.gallery):
            files = self._embed_files(embedder, model, images)
            kept.append((torch.from_numpy(files.embeddings).reshape(-1, *shape), files.indices))
        return kept

    @torch.inference_mode()
    def _finish(
        self, model: CGD, trained: nn.Module, kept: torch.Tensor, device: torch.device
    ) -> np.ndarray:
        """Embeddings from the frozen stages' kept output: the other stages, then the head."""
        parts = [np.zeros((0, model.config.dim), np.float32)]
        for start in range(0, len(kept), self.batch_size):
            batch = kept[start : start + self.batch_size]
            batch = batch.to(device, memory_format=torch.channels_last)
            parts.append(model.describe(trained(batch))[0].float().cpu().numpy())
        return np.concatenate(parts)
