"""The OpenVINO encoder runtime (``--runtime openvino``, extra ``fgsearch[openvino]``).

Both towers run as OpenVINO models behind the :class:`~fgsearch.model.protocol.Encoder` protocol:
the image graph returns the global vectors AND the dense map (region vectors are RoIAlign over the
dense map in float32, as in the torch runtime); one text graph per text walk (its fixed length).

* ``fp32``: ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO otherwise picks bf16 by itself on a CPU
  with AVX512_BF16, so an unhinted "fp32" would not be one).
* ``bf16``: the same graphs with the bf16 hint (needs native bf16, never emulated).
* ``int8``: static quantisation (NNCF post-training, transformer preset) calibrated on a sample of
  the user's own images (a few hundred, :func:`ensure_int8`) and the calibration captions; the
  int8 graphs are cached with the exported model, calibrated once per model and machine user.

FG-CLIP 2's NaFlex inputs (each image its own patch grid) run through ONE graph with dynamic batch
and patch count: the position rows for each grid are computed outside the graph
(:func:`fgsearch.model.fgclip2.naflex_positions`) and passed in with the padding mask.

Exported graphs live in ``$FGSEARCH_CACHE/openvino/<family>-<weights fingerprint>/`` (default: the
user cache directory); exporting (a torch trace + ``ov.convert_model``) happens on first use.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.errors import FgsearchError, InputError
from fgsearch.model.batch import ImageBatch
from fgsearch.model.protocol import DenseProposer, EncodedImages, ScoreCalibration, TextPath

if TYPE_CHECKING:
    from PIL import Image

    from fgsearch.model.registry import ModelSpec

logger = logging.getLogger(__name__)

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}  # None: OpenVINO's own choice for non-int8 ops
_EXPORT_LOCK = threading.Lock()


def _ov() -> Any:
    try:
        import openvino as ov
    except ImportError as e:
        raise FgsearchError(
            "the openvino runtime needs OpenVINO: pip install 'fgsearch[openvino]' (or use --runtime torch)"
        ) from e
    return ov


def cache_root() -> Path:
    """``$FGSEARCH_CACHE/openvino``, else the user cache directory's."""
    env = os.environ.get("FGSEARCH_CACHE")
    if env:
        return Path(env).expanduser() / "openvino"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fgsearch")) / "openvino"


def load_spec(model: str) -> ModelSpec:
    """The resolved spec of a model without building its torch modules (config + fingerprint)."""
    from fgsearch.model.loading import checkpoint_dir, checkpoint_fingerprint, read_family_config, resolve_spec

    spec = resolve_spec(model)
    path = checkpoint_dir(spec)
    family, cfg, _ = read_family_config(path, spec)
    return family.resolve_spec(path, spec, cfg).resolved(
        family=family.name, local_dir=spec.local_dir or str(path), fingerprint=checkpoint_fingerprint(path)
    )


def export_dir(spec: ModelSpec) -> Path:
    return cache_root() / f"{spec.family}-{spec.fingerprint}"


# ---- graphs: what each family exports ------------------------------------------------------------
def _graphs(family: str) -> Any:
    if family not in ("fgclip", "fgclip2"):
        raise InputError(
            f"the openvino runtime knows the fgclip and fgclip2 families, not {family!r}; use --runtime torch"
        )
    return family


def _image_module(family_name: str, model: Any) -> tuple[Any, tuple[Any, ...]]:
    """A torch module (numpy-friendly inputs) -> (global, dense), and an example input."""
    import torch

    if family_name == "fgclip":

        class Image1(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                # the family's encode_image_and_dense, with the dense map as one [B, h, w, P] tensor
                m = self.model
                cls, dense = m.vision_model.last_layer(m.vision_model.trunk(pixels), True, True)
                return m.visual_projection(cls), m._dense_grid(m.visual_projection(dense))

        size = model.config.vision.image_size
        h, w = (size, size) if isinstance(size, int) else size
        return Image1().eval(), (torch.zeros(2, 3, h, w),)

    from fgsearch.model.fgclip2 import key_mask

    class Image2(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, pixels: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            vm = self.model.vision_model
            x = vm.embeddings.patch_embedding(pixels) + positions
            km = key_mask(mask)
            for layer in vm.encoder.layers:
                x = layer(x, mask=km)
            tokens = vm.post_layernorm(x)
            return self.model._global(tokens, mask), self.model._dense(tokens, mask)

    cfg = model.config.vision
    row, d = cfg.num_channels * cfg.patch_size**2, cfg.hidden_size
    mask = torch.ones(2, 16, dtype=torch.int32)
    mask[1, 12:] = 0  # padded: the traced graph keeps the masked attention
    return Image2().eval(), (torch.randn(2, 16, row), torch.randn(2, 16, d), mask)


def _text_module(family_name: str, model: Any, walk: TextPath, length: int) -> tuple[Any, tuple[Any, ...]]:
    import torch

    from fgsearch.model.families import get_family

    fam = get_family(family_name)

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return fam.encode_text(self.model, ids, walk)

    return Text().eval(), (torch.ones(2, length, dtype=torch.long),)


def _convert(module: Any, example: tuple[Any, ...]) -> Any:
    """torch module -> ov.Model (traced first without the trace check: attention code paths vary)."""
    import warnings

    import torch

    ov = _ov()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks that are constant per graph
        traced = torch.jit.trace(module, example, check_trace=False)
        return ov.convert_model(traced, example_input=example)


def export(model: str) -> Path:
    """Export a model's graphs (fp32) once; returns the folder holding them."""
    spec = load_spec(model)
    out = export_dir(spec)
    with _EXPORT_LOCK:
        if (out / "fp32" / "done.json").exists():
            return out
        from fgsearch.model.loading import load_model

        ov = _ov()
        net, spec = load_model(model, device="cpu")
        family = _graphs(spec.family or "fgclip")
        tmp = out / "fp32.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        mod, ex = _image_module(family, net)
        ov.save_model(_convert(mod, ex), tmp / "image.xml", compress_to_fp16=False)
        from fgsearch.model.families import get_family

        fam = get_family(family)
        tok = fam.tokenizer(spec)
        for walk in fam.walks:
            mod, ex = _text_module(family, net, TextPath(walk), tok.length(walk))
            ov.save_model(_convert(mod, ex), tmp / f"text-{walk}.xml", compress_to_fp16=False)
        if family == "fgclip2":
            emb: Any = getattr(net, "vision_model").embeddings  # noqa: B009 (an FGCLIP2 module)
            np.save(tmp / "positions.npy", emb.position_embedding.weight.detach().float().numpy())
        cal = fam.calibration(net)
        meta = {"dim": fam.embed_dim(net), "calibration": cal.to_dict() if cal else None, "model": spec.name}
        (tmp / "done.json").write_text(json.dumps(meta))
        final = out / "fp32"
        if final.exists():
            import shutil

            shutil.rmtree(final)
        os.replace(tmp, final)
        return out


def ensure_int8(model: str, images: Callable[[], Sequence[Image.Image]]) -> Path:
    """The model's int8 graphs, quantised once (NNCF static, calibrated on ``images()``: the
    library's own images, a few hundred) and cached beside the fp32 export."""
    out = export(model)
    if (out / "int8" / "done.json").exists():
        return out
    with _EXPORT_LOCK:
        if (out / "int8" / "done.json").exists():
            return out
        sample = list(images())
        if not sample:
            raise InputError("int8 needs images to calibrate on: index some images first (or use --precision fp32)")
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: never into a --json stdout
            _quantize(model, out, sample)
    return out


def _quantize(model: str, out: Path, sample: Sequence[Image.Image]) -> None:
    import nncf

    from fgsearch.library.settings import CALIBRATION_CAPTIONS

    nncf.set_log_level(logging.ERROR)

    ov = _ov()
    core = ov.Core()
    enc = OpenVINOEncoder(model, "fp32", folder=out / "fp32")
    tmp = out / "int8.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    items = [enc.graph_inputs(enc.transform.prepare([im])) for im in sample]
    q = nncf.quantize(
        core.read_model(out / "fp32" / "image.xml"),
        nncf.Dataset(items),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(items),
    )
    ov.save_model(q, tmp / "image.xml", compress_to_fp16=False)
    for walk in enc.walks:
        ids = [enc.token_ids([t], TextPath(walk)) for t in CALIBRATION_CAPTIONS]
        q = nncf.quantize(
            core.read_model(out / "fp32" / f"text-{walk}.xml"),
            nncf.Dataset(ids),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(ids),
        )
        ov.save_model(q, tmp / f"text-{walk}.xml", compress_to_fp16=False)
    for name in ("positions.npy",):
        if (out / "fp32" / name).exists():
            (tmp / name).write_bytes((out / "fp32" / name).read_bytes())
    meta = json.loads((out / "fp32" / "done.json").read_text())
    meta["calibration_images"] = len(sample)
    (tmp / "done.json").write_text(json.dumps(meta))
    os.replace(tmp, out / "int8")


# ---- the encoder -------------------------------------------------------------------------------
class OpenVINOEncoder:
    """Compiled OpenVINO graphs of one model behind the encoder protocol (compiled on first use)."""

    def __init__(self, model: str, precision: str = "fp32", *, folder: Path | None = None) -> None:
        if precision not in HINTS:
            raise InputError(f"the openvino runtime takes --precision fp32, bf16 or int8, got {precision!r}")
        if precision == "bf16":
            from fgsearch.model.cpu import native_bf16

            if not native_bf16():
                raise InputError("precision bf16: this CPU has no native bf16 instructions; use fp32 or int8")
        from fgsearch.model.families import get_family

        self.spec = load_spec(model)
        self.family = get_family(self.spec.family or "fgclip")
        _graphs(self.family.name)
        self.precision = precision
        if folder is None:
            root = export(model)
            folder = root / ("int8" if precision == "int8" else "fp32")
            if not (folder / "done.json").exists():
                raise InputError(
                    f"no int8 model of {self.spec.name} yet: it is calibrated on your images by "
                    "`fgsearch index --runtime openvino --precision int8` (or fgsearch.model.openvino.ensure_int8)"
                )
        self.folder = folder
        self._meta = json.loads((folder / "done.json").read_text())
        self.transform: Any = self.family.transform(self.spec)
        self.tokenizer = self.family.tokenizer(self.spec)
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._positions: np.ndarray | None = None

    # ---- protocol properties ---------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._meta["dim"])

    @property
    def family_name(self) -> str:
        return self.family.name

    @property
    def walks(self) -> tuple[str, ...]:
        return tuple(self.family.walks)

    @property
    def calibration(self) -> ScoreCalibration | None:
        return ScoreCalibration.from_dict(self._meta.get("calibration"))

    @property
    def on_accelerator(self) -> bool:
        return False

    @property
    def device_name(self) -> str:
        return "cpu (openvino)"

    def _graph(self, name: str) -> Any:
        with self._lock:
            if name not in self._compiled:
                ov = _ov()
                hint = HINTS[self.precision]
                config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
                self._compiled[name] = ov.Core().compile_model(self.folder / f"{name}.xml", "CPU", config)
            return self._compiled[name]

    # ---- images ----------------------------------------------------------------------------
    def graph_inputs(self, batch: ImageBatch | np.ndarray) -> list[np.ndarray]:
        """A preprocessed batch -> the image graph's inputs (numpy)."""
        b = batch if isinstance(batch, ImageBatch) else self.transform.as_batch(batch)
        pixels = np.asarray(b.pixels, np.float32)
        if self.family.name == "fgclip":
            return [pixels]
        import torch

        from fgsearch.model.fgclip2 import naflex_positions

        if self._positions is None:
            self._positions = np.load(self.folder / "positions.npy")
        grid = round(len(self._positions) ** 0.5)
        shapes = [(int(h), int(w)) for h, w in np.asarray(b.shapes).tolist()]
        pos = naflex_positions(torch.from_numpy(self._positions), grid, shapes, pixels.shape[1], torch.float32)
        mask = np.ones(pixels.shape[:2], np.int32) if b.mask is None else np.asarray(b.mask, np.int32)
        return [pixels, pos.numpy(), mask]

    def _run_image(self, pixel_values: Any) -> tuple[np.ndarray, list[np.ndarray]]:
        b = pixel_values if isinstance(pixel_values, ImageBatch) else self.transform.as_batch(pixel_values)
        res = self._graph("image")(self.graph_inputs(b))
        g, dense = np.asarray(res[0], np.float32), np.asarray(res[1], np.float32)
        if self.family.name == "fgclip":
            return g, list(dense)
        shapes = np.asarray(b.shapes).tolist()
        return g, [dense[i, : h * w].reshape(h, w, -1) for i, (h, w) in enumerate(shapes)]

    def encode_pixels(self, pixels: Any, boxes: Sequence[np.ndarray] | None = None) -> EncodedImages:
        if boxes is None:
            g, _ = self._run_image(pixels)  # the dense output is computed anyway; one graph is simpler
            return EncodedImages(image=_normalize(g), regions=[])
        g, maps = self._run_image(pixels)
        if len(boxes) != len(maps):
            raise InputError(f"got box lists for {len(boxes)} images but {len(maps)} images")
        return self._with_regions(g, maps, list(boxes))[0]

    def encode_proposed(self, pixels: Any, propose: DenseProposer) -> tuple[EncodedImages, list[np.ndarray]]:
        g, maps = self._run_image(pixels)
        got = propose(maps)
        if len(got) != len(maps):
            raise InputError(f"the proposer returned box lists for {len(got)} images, not {len(maps)}")
        return self._with_regions(g, maps, list(got))

    def _with_regions(
        self, g: np.ndarray, maps: list[np.ndarray], boxes: list[Any]
    ) -> tuple[EncodedImages, list[np.ndarray]]:
        import torch

        from fgsearch.model.roi import roi_pool

        tb = [torch.as_tensor(np.asarray(b, np.float32)).reshape(-1, 4) for b in boxes]
        reg = roi_pool([torch.from_numpy(m) for m in maps], tb).numpy()
        counts = [len(b) for b in tb]
        reg = _normalize(reg) if len(reg) else np.zeros((0, g.shape[-1]), np.float32)
        regions = list(np.split(reg, np.cumsum(counts)[:-1])) if counts else []
        return EncodedImages(image=_normalize(g), regions=regions), [b.numpy() for b in tb]

    def encode_images(
        self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray] | None = None, batch_size: int = 32
    ) -> EncodedImages:
        if boxes is not None and len(boxes) != len(images):
            raise InputError(f"got box lists for {len(boxes)} images but {len(images)} images")
        imgs: list[np.ndarray] = []
        regs: list[np.ndarray] = []
        for s in range(0, len(images), batch_size):
            out = self.encode_pixels(
                self.transform.prepare(images[s : s + batch_size]), None if boxes is None else boxes[s : s + batch_size]
            )
            imgs.append(out.image)
            regs.extend(out.regions)
        return EncodedImages(image=np.concatenate(imgs) if imgs else np.zeros((0, self.dim), np.float32), regions=regs)

    # ---- text ------------------------------------------------------------------------------
    def text_path(self, text: str) -> TextPath:
        return self.tokenizer.choose_path(text)

    def region_walk(self, text: str) -> TextPath:
        return self.family.region_walk(self.tokenizer, text)

    def token_ids(self, texts: Sequence[str], walk: TextPath) -> np.ndarray:
        """Padded id rows for the walk's graph, without torch (a query needs none), warning on
        truncation as the torch runtime does."""

        from fgsearch.model.tokenizer import warn_dropped

        tok, texts = self.tokenizer, list(texts)
        if hasattr(tok, "tokenize_rows"):  # FG-CLIP's BPE
            t = tok.tokenize_rows(texts, walk)
            rows, dropped = t.ids, t.dropped
        else:  # FG-CLIP 2's Hugging Face tokenizer
            rows, dropped = tok.rows(texts, walk)
        warn_dropped(texts, dropped, tok.length(walk), f"{walk.value} walk", stacklevel=3)
        return np.asarray(rows, np.int64).reshape(len(texts), tok.length(walk))

    def encode_texts(
        self, texts: Sequence[str], path: TextPath | str | None = None, batch_size: int = 64
    ) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        paths = [TextPath(path) if path is not None else self.text_path(t) for t in texts]
        for bad in {p for p in paths if p.value not in self.walks}:
            raise InputError(f"the {self.family.name} family has no {bad.value!r} text walk ({', '.join(self.walks)})")
        out = np.zeros((len(texts), self.dim), np.float32)
        for p in dict.fromkeys(paths):
            idx = [i for i, q in enumerate(paths) if q is p]
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                res = self._graph(f"text-{p.value}")([self.token_ids([texts[i] for i in chunk], p)])
                out[chunk] = np.asarray(res[0], np.float32)
        return _normalize(out)


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32, copy=False)


def load_openvino_encoder(model: str, *, device: str = "auto", precision: str = "auto") -> OpenVINOEncoder:
    """The ``openvino`` runtime's loader (CPU only; ``auto``: int8 when calibrated, else fp32)."""
    if device not in ("auto", "cpu"):
        raise InputError(f"the openvino runtime runs on the CPU; use --device cpu (or --runtime torch for {device})")
    if precision == "auto":
        spec = load_spec(model)
        precision = "int8" if (export_dir(spec) / "int8" / "done.json").exists() else "fp32"
    return OpenVINOEncoder(model, precision)
