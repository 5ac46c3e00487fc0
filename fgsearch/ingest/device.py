"""Decode and preprocess on the model's device: JPEGs in batches (nvjpeg on CUDA), others on the CPU.

Reading ``1024x768`` JPEGs, hashing, decoding and resizing them costs ~9.5 ms per image on one CPU
core, so a GPU that embeds thousands of images a second would need tens of decode cores. Here the
prepare workers only read, hash and parse the header (:class:`DevicePreparer`): the format, the
size and the EXIF orientation, with the same guards as a full decode (a decompression bomb is
refused from its header, before any pixel is decoded; an image under ``--min-side`` is refused).
A baseline or progressive RGB/grey JPEG is handed on as its bytes (:class:`DeviceJpeg`); every
other file is decoded on the CPU exactly as without this module.

:class:`DeviceStager` turns a batch into the model's input on the device: the JPEGs are decoded
together (``torchvision.io.decode_jpeg(list, device=...)``: nvjpeg on CUDA, libjpeg-turbo on the
CPU), turned upright, resized (bicubic, antialiased, aspect not kept: the reference's
``resize((S, S))``) and normalised there; the CPU-decoded items go through one pinned host buffer
with an asynchronous copy. On CUDA everything runs on a side stream, so the copy and decode of
batch n+1 overlap the forward pass of batch n (see :mod:`fgsearch.ingest.pipeline`). A JPEG the
device decoder refuses (nvjpeg does not take every JPEG: CMYK, some 4:1:1 or arithmetic-coded
files) is decoded again alone, then on the CPU with every guard of :func:`fgsearch.decode.load_image`;
only a file no decoder reads fails, with the CPU decoder's reason.

Pixels differ slightly from the CPU path (torch's bicubic antialiasing vs Pillow's); the agreement
of the vectors is measured by ``bench/bench_gpu.py`` and checked by the tests on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.errors import FgsearchError, ImageError
from fgsearch.ingest.prepare import Prepared, Preparer

if TYPE_CHECKING:
    import torch

    from fgsearch.model.batch import ImageBatch

logger = logging.getLogger(__name__)

DEVICE_MODES = frozenset({"RGB", "L"})  # JPEG colour modes nvjpeg decodes (not CMYK/YCCK)
DECODE_PIXELS_PER_CALL = 400_000_000  # full-size pixels decoded on the device at once (~1.2 GB)

# decode(list of uint8 CPU tensors holding JPEG files, device) -> list of uint8 [3, H, W] tensors on
# the device; the named injection point for tests (an nvjpeg refusal) and for another decoder.
DecodeFn = Callable[[list[Any], Any], list[Any]]


@dataclass
class DeviceJpeg:
    """A JPEG whose pixels the device decodes: its bytes and its EXIF orientation (1-8)."""

    data: bytes
    orientation: int = 1


def device_decode_supported(device: Any) -> str | None:
    """Why JPEGs cannot be decoded on ``device`` (None: they can)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed"
    return None if str(device).split(":")[0] in ("cuda", "cpu") else f"no JPEG decoder on {device}"


def read_jpeg_header(data: bytes, max_megapixels: float, min_side: int) -> tuple[DeviceJpeg | None, int, int, Any]:
    """The guards of a full decode, from the header alone: ``(jpeg or None, width, height,
    captured_at)`` with the displayed (EXIF-oriented) size. ``None``: not a JPEG the device
    decodes (the caller decodes it on the CPU). Raises :class:`ImageError` for a bomb or an
    image under ``min_side``, with the same reasons as :func:`fgsearch.decode.load_image`."""
    from PIL import Image

    from fgsearch.decode import _captured_at, _orientation

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            w, h = img.size
            mode = img.mode
            orientation = _orientation(img)
            captured = _captured_at(img)
    except Exception:  # not a JPEG (or a header Pillow cannot parse): the CPU path says why
        return None, 0, 0, None
    if w * h > max_megapixels * 1e6:
        raise ImageError(
            f"image is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the {max_megapixels:g} megapixel limit "
            "(possible decompression bomb); raise it with --max-megapixels"
        )
    width, height = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    if min(width, height) < min_side:
        raise ImageError(f"image is too small ({width}x{height} px; minimum {min_side} px, see --min-side)")
    if mode not in DEVICE_MODES:
        return None, width, height, captured
    return DeviceJpeg(data, orientation), width, height, captured


class DevicePreparer(Preparer):
    """The prepare stage when the device decodes JPEGs: read, hash and check the header; other
    files are decoded and preprocessed here as by :class:`Preparer`."""

    def _decode(self, source: bytes | Any, base: Prepared, root: str | None) -> Prepared:
        if not isinstance(source, (bytes, bytearray)):  # a file over 64 MiB: streamed, decoded here
            return super()._decode(source, base, root)
        try:
            jpeg, width, height, captured = read_jpeg_header(
                bytes(source), self.opts.max_megapixels, self.opts.min_side
            )
            if jpeg is None:
                return super()._decode(source, base, root)
            base.pixels, base.width, base.height, base.captured_at = jpeg, width, height, captured
            if not self.proposer.uses_dense:
                base.boxes = self.proposer.before(base.path, root, width, height)
        except FgsearchError as e:  # a bomb, too small, or a sidecar's DataError
            base.reason = str(e)
            return base
        base.kind = "new"
        return base


def _nvjpeg(data: list[Any], device: Any) -> list[Any]:
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image I/O for TorchCodec (docs/gpu.md)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return list(out) if isinstance(out, (list, tuple)) else [out]


class DeviceStager:
    """Prepared items -> the model's input batch on ``device`` (see the module docstring).

    ``decode``: how a list of JPEG files becomes images on the device (default: torchvision's
    ``decode_jpeg``); ``pixels_per_call`` bounds the full-size pixels decoded at once."""

    def __init__(
        self,
        transform: Any,
        device: Any,
        *,
        decode: DecodeFn | None = None,
        pixels_per_call: int = DECODE_PIXELS_PER_CALL,
        max_megapixels: float = 100.0,
    ) -> None:
        import torch

        if getattr(transform, "image_size", None) is None:
            raise ValueError("device decoding needs a fixed-size image transform (FG-CLIP); NaFlex decodes on the CPU")
        self.transform = transform
        self.device = torch.device(device)
        self.decode = decode or _nvjpeg
        self.pixels_per_call = pixels_per_call
        self.max_megapixels = max_megapixels
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        h, w = transform.image_size
        self.size = (int(h), int(w))
        self.mean = torch.tensor(transform.mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(transform.std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.device_decoded = 0  # JPEGs the device decoded
        self.fallbacks = 0  # JPEGs the device refused and the CPU decoded

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        import torch

        if self.stream is None:
            yield
        else:
            with torch.cuda.stream(self.stream):
                yield

    def stage(self, batch: Sequence[Prepared]) -> tuple[ImageBatch, list[int], Any]:
        """The batch's model input on the device, the indexes of items no decoder could read
        (their ``reason`` is set; they are left out of the input), and an event the forward
        pass waits for (None on the CPU)."""
        import torch

        from fgsearch.model.batch import ImageBatch

        pixels: list[torch.Tensor | None] = [None] * len(batch)
        with self._on_stream():
            jpegs = [i for i, p in enumerate(batch) if isinstance(p.pixels, DeviceJpeg)]
            for i, img in self._decode_jpegs([batch[i] for i in jpegs], jpegs):
                pixels[i] = img
            host = [i for i, p in enumerate(batch) if pixels[i] is None and p.reason == "" and p.pixels is not None]
            if host:
                stacked = torch.from_numpy(np.stack([_array(batch[i].pixels) for i in host]))
                if self.cuda:
                    stacked = stacked.pin_memory()
                on_device = stacked.to(self.device, non_blocking=True)
                for k, i in enumerate(host):
                    pixels[i] = on_device[k]
            failed = [i for i, p in enumerate(pixels) if p is None]
            kept = [p for p in pixels if p is not None]
            h, w = self.size
            stacked_all = torch.stack(kept) if kept else torch.zeros((0, 3, h, w), device=self.device)
            event = self.stream.record_event() if self.stream is not None else None
        shapes = np.tile(np.asarray(self.transform.grid, np.int64), (len(kept), 1))
        return ImageBatch(pixels=stacked_all, shapes=shapes), failed, event

    def _decode_jpegs(self, items: Sequence[Prepared], where: list[int]) -> Iterator[tuple[int, Any]]:
        """(index, normalised [3, H, W] float32 on the device) per JPEG; items no decoder reads
        get their ``reason`` and are not yielded."""
        group: list[int] = []
        pixels = 0
        for k, p in enumerate(items):
            n = p.width * p.height
            if group and pixels + n > self.pixels_per_call:
                yield from self._decode_group(items, where, group)
                group, pixels = [], 0
            group.append(k)
            pixels += n
        if group:
            yield from self._decode_group(items, where, group)

    def _decode_group(self, items: Sequence[Prepared], where: list[int], group: list[int]) -> Iterator[tuple[int, Any]]:
        import torch

        data = [torch.frombuffer(bytearray(items[k].pixels.data), dtype=torch.uint8) for k in group]
        try:
            decoded = self.decode(data, self.device)
        except Exception as e:  # one bad file fails nvjpeg's whole batch: decode them one by one
            logger.debug("batched device decode failed (%s); decoding one by one", e)
            decoded = [self._decode_one(d) for d in data]
        for k, img in zip(group, decoded, strict=True):
            p = items[k]
            if img is None:
                img = self._cpu_fallback(p)
                if img is None:
                    continue
            else:
                self.device_decoded += 1
            yield where[k], self._model_input(_upright(img, p.pixels.orientation))

    def _decode_one(self, data: Any) -> Any:
        try:
            return self.decode([data], self.device)[0]
        except Exception as e:
            logger.debug("device decoder refused a JPEG (%s); decoding it on the CPU", e)
            return None

    def _cpu_fallback(self, p: Prepared) -> Any:
        """The refused JPEG decoded by Pillow with every guard (already oriented: orientation 1)."""
        import torch

        from fgsearch.decode import load_image

        try:
            loaded = load_image(p.pixels.data, max_megapixels=self.max_megapixels, min_side=1)
        except ImageError as e:
            p.reason = str(e)
            return None
        self.fallbacks += 1
        p.pixels.orientation = 1
        arr = np.asarray(loaded.image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()).to(self.device, non_blocking=True)

    def _model_input(self, img: Any) -> Any:
        """uint8 ``[3, h, w]`` -> normalised float32 ``[3, H, W]`` (bicubic, antialiased)."""
        import torch

        x = img.unsqueeze(0).float()
        if tuple(x.shape[-2:]) != self.size:
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0, 255).round_().div_(255.0)[0]  # round like Pillow's 8-bit result
        return (x - self.mean) / self.std

    def wait(self, event: Any, tensor: Any) -> None:
        """Make the current stream wait for ``event`` before using ``tensor`` (CUDA only)."""
        import torch

        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
            tensor.record_stream(torch.cuda.current_stream(self.device))


def _array(item: Any) -> np.ndarray:
    return np.asarray(getattr(item, "pixels", item), np.float32)


def _upright(img: Any, orientation: int) -> Any:
    """EXIF orientation 2-8 applied to a ``[3, h, w]`` tensor (as ``ImageOps.exif_transpose``)."""
    import torch

    if orientation == 2:
        return torch.flip(img, (2,))
    if orientation == 3:
        return torch.rot90(img, 2, (1, 2))
    if orientation == 4:
        return torch.flip(img, (1,))
    if orientation == 5:
        return img.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(img, -1, (1, 2))
    if orientation == 7:
        return img.transpose(1, 2).flip(1).flip(2)  # transverse: about the anti-diagonal
    if orientation == 8:
        return torch.rot90(img, 1, (1, 2))
    return img
