"""What the rest of fgsearch sees of a model, whatever runs it: the encoder protocol and its values.

Family-neutral and free of torch, so ingest, search, the server and a non-torch encoder runtime
(ONNX, a remote service, a numpy toy in the tests) all code against this module only.

* :class:`TextPath`: the text walk (position table + projection) that encodes a text.
* :class:`EncodedImages`: unit-length global vectors and per-image region vectors.
* :class:`ScoreCalibration`: a family's own probability for a cosine.
* :class:`ImagePreprocessor`: ``item(image)`` in a worker thread, ``collate(items)`` per batch.
* :class:`Encoder`: what an encoder runtime provides (see :mod:`fgsearch.model.runtime`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from fgsearch.model.registry import ModelSpec


class TextPath(str, enum.Enum):
    """Which text position table and projection encode a text.

    ``SHORT``: at most 77 tokens, ``position_embedding`` + ``text_projection`` (CLIP's own path;
    FG-CLIP uses it for short captions and region texts). ``LONG``: at most 248 tokens, rows
    0-19 of ``position_embedding_ori`` and 20-247 of ``position_embedding_res`` +
    ``text_filip_projection`` (FG-CLIP's long-caption path). ``BOX``: FG-CLIP 2's walk for region
    expressions; a family that has no such walk rejects it.
    """

    SHORT = "short"
    LONG = "long"
    BOX = "box"  # FG-CLIP 2 only: region ("box") expressions, its own head over the short positions


@dataclass
class EncodedImages:
    """Per image: a global vector ``image[i]`` and a ``[K_i, P]`` array of region vectors."""

    image: np.ndarray
    regions: list[np.ndarray]


@dataclass(frozen=True)
class ScoreCalibration:
    """How a family turns a cosine into its own probability: ``sigmoid(cos * scale + bias)``."""

    kind: str  # "sigmoid"
    scale: float
    bias: float

    def probability(self, cosine: np.ndarray | float) -> np.ndarray:
        z = np.asarray(cosine, np.float64) * self.scale + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scale": self.scale, "bias": self.bias}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ScoreCalibration | None:
        if not d:
            return None
        return cls(kind=str(d["kind"]), scale=float(d["scale"]), bias=float(d["bias"]))


@runtime_checkable
class ImagePreprocessor(Protocol):
    """A model's image preparation: ``item`` per image (worker threads), ``collate`` per batch."""

    @property
    def image_size(self) -> tuple[int, int] | None: ...  # None: each image keeps its own shape

    def item(self, image: Image.Image) -> Any: ...

    def collate(self, items: Sequence[Any]) -> Any: ...


DenseProposer = Callable[[list[np.ndarray]], list[np.ndarray]]
# the same on the device: dense-map tensors where the model ran -> box tensors there
DeviceDenseProposer = Callable[[list[Any]], list[Any]]


@runtime_checkable
class Encoder(Protocol):
    """A loaded model ready for inference, whatever runs it (:func:`~fgsearch.model.load_encoder`).

    Every vector returned is float32 and unit length; boxes are normalised ``x1, y1, x2, y2``."""

    @property
    def dim(self) -> int: ...

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def family_name(self) -> str: ...

    @property
    def walks(self) -> tuple[str, ...]: ...  # the TextPath values this model has

    @property
    def calibration(self) -> ScoreCalibration | None: ...

    @property
    def transform(self) -> ImagePreprocessor: ...

    @property
    def on_accelerator(self) -> bool: ...  # a GPU-class device: bigger batches pay

    @property
    def device_name(self) -> str: ...  # for reports: "cpu", "cuda:0", "remote", ...

    @property
    def precision(self) -> str: ...  # for reports: "fp32", "bf16", ...

    def encode_pixels(self, pixels: Any, boxes: Sequence[np.ndarray] | None) -> EncodedImages:
        """A collated batch -> global vectors and, per image, one vector per box (none: no regions)."""
        ...

    def encode_proposed(self, pixels: Any, propose: DenseProposer) -> tuple[EncodedImages, list[np.ndarray]]:
        """One pass where ``propose`` turns the images' dense maps (numpy float32 ``[h, w, D]``)
        into boxes per image; returns the vectors and the boxes used."""
        ...

    def encode_images(
        self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray] | None = None, batch_size: int = 32
    ) -> EncodedImages:
        """Pillow images (any mode) -> vectors, ``batch_size`` images per forward pass."""
        ...

    def text_path(self, text: str) -> TextPath:
        """The walk a text takes by the family's rule."""
        ...

    def region_walk(self, text: str) -> TextPath:
        """The walk for matching a text against regions."""
        ...

    def encode_texts(
        self, texts: Sequence[str], path: TextPath | str | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """Texts -> ``[N, D]``; ``path=None`` applies the rule per text, otherwise forced."""
        ...
