"""The torch encoder runtime: device choice, batching, mixed precision and L2-normalised numpy outputs.

:class:`TorchEncoder` implements :class:`~fgsearch.model.protocol.Encoder`, the protocol indexing,
query and evaluation use; it is registered as the built-in runtime ``"torch"``
(:mod:`fgsearch.model.runtime`). It talks to the model through its family
(:mod:`fgsearch.model.families`) only, so FG-CLIP and FG-CLIP 2 go through the same code. The model is
put in eval mode and run under ``torch.inference_mode``; on CUDA the towers run in bf16 autocast
(the authors saw fp16 NaNs). On the CPU, ``bf16`` casts the towers' weights to bfloat16 instead:
CPU autocast copies ``nn.MultiheadAttention``'s broadcast weights per layer and ran 4x SLOWER than
fp32 at batch 8 here, the module cast 3x faster (docs/runtimes.md). ``bf16`` on a CPU without
native bf16 instructions (:mod:`fgsearch.model.cpu`) is refused, never emulated. Region pooling
always runs in float32.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.errors import InputError
from fgsearch.model.batch import ImageBatch
from fgsearch.model.families import get_family
from fgsearch.model.protocol import DenseProposer, DeviceDenseProposer, EncodedImages, ScoreCalibration, TextPath

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from fgsearch.model.registry import ModelSpec

logger = logging.getLogger(__name__)


def resolve_device(device: str | Any = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda was requested but no CUDA GPU is available; use {device} cpu", field="device")
    return dev


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32, copy=False)


class TorchEncoder:
    """A loaded torch model ready for inference. ``TorchEncoder.load("fg-clip-base")`` (or
    ``load_encoder("fg-clip-base")``) downloads on first use."""

    def __init__(
        self, model: torch.nn.Module, spec: ModelSpec, device: str | Any = "auto", precision: str = "auto"
    ) -> None:
        import torch

        self.device = resolve_device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.spec = spec
        self.family = get_family(spec.family or "fgclip")
        self.transform: Any = self.family.transform(spec)  # an ImagePreprocessor with prepare/as_batch too
        self.tokenizer = self.family.tokenizer(spec)
        if precision == "auto":  # ungated: the library's gate (fgsearch.model.gate) decides CPU bf16
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("bf16", "fp32"):
            raise InputError(f"precision must be auto, bf16 or fp32 for the torch runtime, got {precision!r}")
        # CPU bf16: the weights themselves in bfloat16 (a copy: the caller's module stays float32)
        self._cast = precision == "bf16" and self.device.type == "cpu"
        self._calibration: ScoreCalibration | None = None
        if self._cast:
            from fgsearch.model.cpu import native_bf16

            if not native_bf16():
                raise InputError(
                    "precision bf16: this CPU has no native bf16 instructions (AVX512_BF16 or AMX), so bf16 "
                    "would be emulated and slower than fp32; use --precision fp32 (or auto)"
                )
            # the family's score calibration (FG-CLIP 2: exp(logit_scale), logit_bias) stays float32
            self._calibration = self.family.calibration(self.model)
            self.model = copy.deepcopy(self.model).to(torch.bfloat16)
        self.precision = precision
        self._torch = torch

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] = "fg-clip-base",
        device: str | Any = "auto",
        precision: str = "auto",
        download: bool = True,
    ) -> TorchEncoder:
        from fgsearch.model.loading import load_model

        net, spec = load_model(model, device="cpu", download=download)
        return cls(net, spec, device=device, precision=precision)

    @property
    def dim(self) -> int:
        return self.family.embed_dim(self.model)

    @property
    def family_name(self) -> str:
        return self.family.name

    @property
    def walks(self) -> tuple[str, ...]:
        return tuple(self.family.walks)

    @property
    def on_accelerator(self) -> bool:
        return bool(self.device.type == "cuda")

    @property
    def device_name(self) -> str:
        return str(self.device)

    @property
    def calibration(self) -> ScoreCalibration | None:
        """The family's own probability for a cosine (FG-CLIP 2: sigmoid with its learned bias)."""
        if self._cast:  # read from the float32 weights: bf16 would round exp(logit_scale)
            return self._calibration
        return self.family.calibration(self.model)

    @contextlib.contextmanager
    def _ctx(self) -> Iterator[None]:
        torch = self._torch
        with torch.inference_mode():
            if self.precision == "bf16" and not self._cast:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    yield
            else:
                yield

    # ---- images ----------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> ImageBatch | np.ndarray:
        """Images -> what :meth:`encode_pixels` takes: FG-CLIP ``[B, 3, H, W]``; FG-CLIP 2 an
        :class:`ImageBatch` where each image is prepared on its own (its own patch budget)."""
        return self.transform.prepare(images)

    def _batch(self, pixel_values: ImageBatch | np.ndarray | torch.Tensor) -> ImageBatch:
        batch = pixel_values if isinstance(pixel_values, ImageBatch) else self.transform.as_batch(pixel_values)
        return batch.to(self.device)

    def encode_pixels(
        self,
        pixel_values: ImageBatch | np.ndarray | torch.Tensor,
        boxes: Sequence[np.ndarray] | None = None,
        normalize: bool = True,
    ) -> EncodedImages:
        """A preprocessed batch (FG-CLIP also takes ``[B, 3, H, W]``) -> global + region vectors
        from one forward pass. ``boxes[i]``: normalised ``x1, y1, x2, y2`` rows for image i."""
        batch = self._batch(pixel_values)
        if boxes is not None and len(boxes) != len(batch):
            raise InputError(f"got box lists for {len(boxes)} images but {len(batch)} images")
        if boxes is None:
            with self._ctx():
                image = self.family.encode_image(self.model, batch).float()
            return self._result(self._to_host(image)[0], None, [0] * len(batch), normalize)
        image, maps = self._image_and_maps(batch)
        return self._with_regions(image, maps, list(boxes), normalize)[0]

    def encode_proposed(
        self,
        pixel_values: ImageBatch | np.ndarray | torch.Tensor,
        propose: DenseProposer,
        normalize: bool = True,
    ) -> tuple[EncodedImages, list[np.ndarray]]:
        """One forward pass where the boxes come from the images' own dense maps.

        ``propose(maps)`` gets every image's dense map as a numpy float32 ``[h_i, w_i, P]`` array
        (FG-CLIP 2: shapes differ) and returns each image's boxes ``[K_i, 4]`` (normalised x1, y1,
        x2, y2). Returns the vectors and the boxes used.
        """
        image, maps = self._image_and_maps(self._batch(pixel_values))
        got = propose([m.cpu().numpy() for m in maps])
        if len(got) != len(maps):
            raise InputError(f"the proposer returned box lists for {len(got)} images, not {len(maps)}")
        return self._with_regions(image, maps, list(got), normalize)

    def encode_proposed_on_device(
        self,
        pixel_values: ImageBatch | np.ndarray | torch.Tensor,
        propose: DeviceDenseProposer,
        normalize: bool = True,
    ) -> tuple[EncodedImages, list[np.ndarray]]:
        """:meth:`encode_proposed` with the proposals where the model runs: ``propose(maps)`` gets
        the dense maps as float32 ``[h_i, w_i, P]`` tensors on the model's device and returns the
        boxes as tensors there (:func:`fgsearch.regions.auto_torch.auto_boxes_torch`). The maps
        never leave the device; RoIAlign runs there, and only the vectors and boxes are copied to
        the host, together, at the end."""
        image, maps = self._image_and_maps(self._batch(pixel_values))
        got = propose(maps)
        if len(got) != len(maps):
            raise InputError(f"the proposer returned box lists for {len(got)} images, not {len(maps)}")
        return self._with_regions(image, maps, list(got), normalize)

    def _image_and_maps(self, batch: ImageBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Global vectors and float32 dense maps ``[h_i, w_i, P]`` from one pass."""
        with self._ctx():
            image, maps = self.family.encode_image_and_dense(self.model, batch)
        return image.float(), [m.float() for m in maps]

    def _with_regions(
        self, image: torch.Tensor, maps: list[torch.Tensor], boxes: list[Any], normalize: bool
    ) -> tuple[EncodedImages, list[np.ndarray]]:
        torch = self._torch
        with torch.inference_mode():
            tb = self._boxes_on_device(boxes)
            regions = self.family.encode_regions(self.model, maps, tb)
        counts = [len(b) for b in tb]
        flat = torch.cat(tb) if tb else torch.zeros((0, 4), device=self.device)
        img, reg, host_boxes = self._to_host(image, regions, flat)
        out = list(np.split(host_boxes, np.cumsum(counts)[:-1])) if counts else []
        return self._result(img, reg, counts, normalize), out

    def _boxes_on_device(self, boxes: list[Any]) -> list[torch.Tensor]:
        """Box lists as float32 ``[K_i, 4]`` tensors on the device: tensors already there stay;
        numpy lists go over in one (pinned, asynchronous) copy, not one per image."""
        torch = self._torch
        if all(isinstance(b, torch.Tensor) and b.device.type == self.device.type for b in boxes):
            return [b.to(self.device, torch.float32).reshape(-1, 4) for b in boxes]  # "cuda" is "cuda:0": no copy
        host = [np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b, np.float32).reshape(-1, 4) for b in boxes]
        flat = torch.from_numpy(np.concatenate(host) if host else np.zeros((0, 4), np.float32))
        if self.device.type == "cuda":
            flat = flat.pin_memory()
        return list(flat.to(self.device, non_blocking=True).split([len(b) for b in host]))

    def _to_host(self, *tensors: torch.Tensor) -> list[np.ndarray]:
        """Device results -> numpy: on CUDA, asynchronous copies into pinned memory and one wait."""
        torch = self._torch
        if self.device.type != "cuda":
            return [t.detach().cpu().numpy() for t in tensors]
        copies = [t.detach().to("cpu", non_blocking=True) for t in tensors]
        torch.cuda.current_stream(self.device).synchronize()
        return [c.numpy() for c in copies]

    def _result(self, img: np.ndarray, reg: np.ndarray | None, counts: list[int], normalize: bool) -> EncodedImages:
        if reg is None or not sum(counts):
            reg = np.zeros((0, img.shape[-1]), np.float32)
        if normalize:
            img, reg = _normalize(img), _normalize(reg)
        return EncodedImages(image=img, regions=list(np.split(reg, np.cumsum(counts)[:-1])) if counts else [])

    def encode_images(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[np.ndarray] | None = None,
        batch_size: int = 32,
        normalize: bool = True,
    ) -> EncodedImages:
        """Pillow images (any mode) -> normalised global vectors and per-image region vectors."""
        if boxes is not None and len(boxes) != len(images):
            raise InputError(f"got box lists for {len(boxes)} images but {len(images)} images")
        imgs: list[np.ndarray] = []
        regs: list[np.ndarray] = []
        for s in range(0, len(images), batch_size):
            pv = self.preprocess(images[s : s + batch_size])
            out = self.encode_pixels(pv, None if boxes is None else boxes[s : s + batch_size], normalize)
            imgs.append(out.image)
            regs.extend(out.regions)
        image = np.concatenate(imgs) if imgs else np.zeros((0, self.dim), np.float32)
        return EncodedImages(image=image, regions=regs)

    # ---- text ------------------------------------------------------------------------------
    def text_path(self, text: str) -> TextPath:
        """The documented short/long rule (see the family's tokenizer ``choose_path``)."""
        return self.tokenizer.choose_path(text)

    def region_walk(self, text: str) -> TextPath:
        """The walk for matching a text against REGIONS (FG-CLIP 2: the box walk for short texts)."""
        return self.family.region_walk(self.tokenizer, text)

    def encode_texts(
        self, texts: Sequence[str], path: TextPath | str | None = None, batch_size: int = 64, normalize: bool = True
    ) -> np.ndarray:
        """Texts -> ``[N, P]`` vectors. ``path=None`` applies the rule per text; otherwise forced."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        paths = [TextPath(path) if path is not None else self.text_path(t) for t in texts]
        for bad in {p for p in paths if p.value not in self.family.walks}:
            raise InputError(
                f"the {self.family.name} family has no {bad.value!r} text walk ({', '.join(self.family.walks)})"
            )
        for p in (TextPath.SHORT, TextPath.BOX, TextPath.LONG):
            idx = [i for i, q in enumerate(paths) if q is p]
            if not idx:
                continue
            # similar lengths together: each batch runs only up to its longest text
            idx.sort(key=lambda i: self.tokenizer.count(texts[i]))
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                ids = self.tokenizer([texts[i] for i in chunk], p).to(self.device)
                with self._ctx():
                    feats = self.family.encode_text(self.model, ids, p).float().cpu().numpy()
                out[chunk] = feats
        return _normalize(out) if normalize else out


def load_torch_encoder(model: str, *, device: str = "auto", precision: str = "auto") -> TorchEncoder:
    """The ``torch`` runtime's loader (see :func:`fgsearch.model.runtime.load_encoder`)."""
    return TorchEncoder.load(model, device=device, precision=precision)
