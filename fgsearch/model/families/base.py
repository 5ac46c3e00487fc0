"""The model-family interface: everything that differs between architectures ("families as data").

A family owns reading its ``config.json``, building its modules, its preprocessing (a transform
with ``item(image)`` / ``collate(items)`` / ``batch(images)`` returning an
:class:`~fgsearch.model.batch.ImageBatch`), its tokenizer and text walks, the forward paths
(global, dense, regions, text) and its score calibration. The torch encoder runtime, loading and
the trainer talk to this interface only; each family is one module under
:mod:`fgsearch.model.families` plus one registration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fgsearch.model.protocol import ScoreCalibration, TextPath

if TYPE_CHECKING:
    import torch

    from fgsearch.model.batch import ImageBatch
    from fgsearch.model.registry import ModelSpec


class ModelFamily(ABC):
    """What a model architecture provides to fgsearch."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.json ``model_type`` values of this family
    walks: ClassVar[tuple[str, ...]]  # text walks (TextPath values) this family has
    description: ClassVar[str]

    # ---- checkpoints ---------------------------------------------------------------------
    @abstractmethod
    def read_config(self, raw: dict[str, Any]) -> Any:
        """``config.json`` dict -> the family's frozen config (missing keys get the reference defaults)."""

    @abstractmethod
    def build(self, cfg: Any) -> torch.nn.Module:
        """Modules for a config (random init; loading assigns the checkpoint's tensors)."""

    @abstractmethod
    def resolve_spec(self, path: Path, spec: ModelSpec, cfg: Any) -> ModelSpec:
        """Fill the spec's preprocessing and text lengths from the checkpoint directory."""

    def save_files(self, spec: ModelSpec | None, out: Path) -> None:  # noqa: B027 (optional hook)
        """Write the files besides config + weights that loading needs again (tokenizer, processor)."""

    @abstractmethod
    def sizes(self, cfg: Any) -> str:
        """A one-line architecture summary (for ``fgsearch models`` and reports)."""

    # ---- inputs --------------------------------------------------------------------------
    @abstractmethod
    def transform(self, spec: ModelSpec) -> Any:
        """The image transform (``item`` / ``collate`` / ``batch``) for a resolved spec."""

    @abstractmethod
    def tokenizer(self, spec: ModelSpec) -> Any:
        """The tokenizer (``__call__(texts, walk)``, ``count``, ``choose_path``) for a resolved spec."""

    def region_walk(self, tokenizer: Any, text: str) -> TextPath:
        """The walk that encodes a text matched against REGIONS (default: the text rule)."""
        return tokenizer.choose_path(text)

    # ---- forward paths -------------------------------------------------------------------
    @abstractmethod
    def embed_dim(self, model: torch.nn.Module) -> int: ...

    @abstractmethod
    def encode_image(self, model: torch.nn.Module, batch: ImageBatch) -> torch.Tensor:
        """Global vectors ``[B, P]`` (not normalised)."""

    @abstractmethod
    def encode_image_and_dense(self, model: torch.nn.Module, batch: ImageBatch) -> tuple[torch.Tensor, list[Any]]:
        """Global ``[B, P]`` and every image's dense map ``[h_i, w_i, P]`` from one pass."""

    def encode_regions(self, model: torch.nn.Module, maps: Sequence[Any], boxes: Sequence[Any]) -> torch.Tensor:
        """Region vectors ``[sum K_i, P]`` from dense maps and NORMALISED ``x1, y1, x2, y2`` boxes."""
        from fgsearch.model.roi import roi_pool

        return roi_pool(maps, boxes)

    def encode_text(self, model: torch.nn.Module, ids: torch.Tensor, walk: TextPath) -> torch.Tensor:
        m: Any = model
        return m.encode_text(ids, walk)

    def calibration(self, model: torch.nn.Module) -> ScoreCalibration | None:
        """The family's own score (None: cosine only)."""
        return None
