"""Model families: the one seam between fgsearch and a model architecture ("families as data").

A family owns everything that differs between architectures: reading its ``config.json``, building
its modules, its preprocessing (a transform with ``item(image)`` / ``collate(items)`` /
``batch(images)`` returning an :class:`~fgsearch.model.batch.ImageBatch`), its tokenizer and text
walks, the forward paths (global, dense, regions, text) and its score calibration. The encoder,
loading, ingest, search, eval and trainer talk to this interface only.

Families are registered by name in :data:`FAMILIES` (``module:Class``, imported on first use); an
unknown name is an error, never a default. A checkpoint's family comes from the registry entry
(:class:`~fgsearch.model.registry.ModelSpec.family`) or else from its config's ``model_type``.

| family    | model_type      | preprocessing                     | walks             | scores            |
|-----------|-----------------|-----------------------------------|-------------------|-------------------|
| `fgclip`  | `clip`,`fgclip` | square bicubic resize, CLIP mean  | short, long       | cosine            |
| `fgclip2` | `fgclip2`       | NaFlex (aspect kept, patch budget)| short, box, long  | sigmoid(s*cos+b)  |
"""

from __future__ import annotations

import importlib
import json
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fgsearch.errors import CheckpointError, ModelNotFoundError
from fgsearch.model.batch import ImageBatch

if TYPE_CHECKING:
    import torch

    from fgsearch.model.fgclip import TextPath
    from fgsearch.model.registry import ModelSpec


def read_json(file: Path, required: bool = True) -> dict[str, Any]:
    """A checkpoint's JSON file (``{}`` for a missing optional one); errors name the file."""
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as e:
        if not required:
            return {}
        raise CheckpointError(f"{file} is missing") from e
    except ValueError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e


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


# ---------------------------------------------------------------------------------------------
class FGCLIPFamily(ModelFamily):
    """FG-CLIP (v1): CLIP ViT towers, fixed square input, short (77) and long (248) text paths."""

    name = "fgclip"
    model_types = ("clip", "fgclip")
    walks = ("short", "long")
    description = "FG-CLIP (CLIP ViT, fixed square input, 77/248 tokens, English)"

    def read_config(self, raw: dict[str, Any]) -> Any:
        from fgsearch.model.config import FGCLIPConfig

        return FGCLIPConfig.from_hf_dict(raw)

    def build(self, cfg: Any) -> torch.nn.Module:
        from fgsearch.model.fgclip import FGCLIP

        return FGCLIP(cfg)

    def resolve_spec(self, path: Path, spec: ModelSpec, cfg: Any) -> ModelSpec:
        from fgsearch.model.loading import clip_preprocessing

        return clip_preprocessing(path, spec, cfg)

    def sizes(self, cfg: Any) -> str:
        v, t = cfg.vision, cfg.text
        return (
            f"ViT {v.num_hidden_layers}x{v.hidden_size} /{v.patch_size} at {v.image_size[0]}x{v.image_size[1]}, "
            f"text {t.num_hidden_layers}x{t.hidden_size}, {cfg.projection_dim}-d"
        )

    def transform(self, spec: ModelSpec) -> Any:
        return spec.transform

    def tokenizer(self, spec: ModelSpec) -> Any:
        from fgsearch.model.tokenizer import Tokenizer

        return Tokenizer(short_length=spec.short_length, long_length=spec.long_length)

    def embed_dim(self, model: torch.nn.Module) -> int:
        m: Any = model
        return int(m.config.projection_dim)

    def encode_image(self, model: torch.nn.Module, batch: ImageBatch) -> torch.Tensor:
        m: Any = model
        return m.encode_image(batch.pixels)

    def encode_image_and_dense(self, model: torch.nn.Module, batch: ImageBatch) -> tuple[torch.Tensor, list[Any]]:
        m: Any = model
        cls, dense = m.vision_model.last_layer(m.vision_model.trunk(batch.pixels), True, True)
        return m.visual_projection(cls), list(m._dense_grid(m.visual_projection(dense)))


class FGCLIP2Family(ModelFamily):
    """FG-CLIP 2: SigLIP 2 NaFlex towers, variable resolution, short/box/long walks, sigmoid scores."""

    name = "fgclip2"
    model_types = ("fgclip2",)
    walks = ("short", "box", "long")
    description = "FG-CLIP 2 (SigLIP 2 NaFlex, aspect kept, 64/196 tokens, English + Chinese)"

    def read_config(self, raw: dict[str, Any]) -> Any:
        from fgsearch.model.fgclip2 import FGCLIP2Config

        return FGCLIP2Config.from_hf_dict(raw)

    def build(self, cfg: Any) -> torch.nn.Module:
        from fgsearch.model.fgclip2 import FGCLIP2

        return FGCLIP2(cfg)

    def resolve_spec(self, path: Path, spec: ModelSpec, cfg: Any) -> ModelSpec:
        file = path / "preprocessor_config.json"
        proc = read_json(file, required=False)
        patch = int(proc.get("patch_size", cfg.vision.patch_size))
        if patch != cfg.vision.patch_size:
            raise CheckpointError(
                f"{file} has patch_size {patch} but config.json's vision patch_size is {cfg.vision.patch_size}"
            )
        if int(proc.get("resample", 2)) != 2:
            raise CheckpointError(f"{file}: resample {proc['resample']} is not supported (FG-CLIP 2 uses 2, bilinear)")
        changes: dict[str, Any] = {
            "patch_size": patch,
            "max_patches": int(proc.get("max_num_patches", 256)),
            "dynamic_patches": bool(proc.get("dynamic_max_patches", True)),
            "short_length": cfg.text.max_position_embeddings,
            "long_length": cfg.text.longtext_len,
            "image_size": None,
        }
        if "image_mean" in proc and "image_std" in proc:
            changes["mean"] = tuple(float(x) for x in proc["image_mean"])
            changes["std"] = tuple(float(x) for x in proc["image_std"])
        else:
            changes["mean"], changes["std"] = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        if not (path / "tokenizer.json").exists():
            raise CheckpointError(f"no tokenizer.json in {path}; FG-CLIP 2 checkpoints ship their tokenizer with it")
        return spec.resolved(**changes)

    def save_files(self, spec: ModelSpec | None, out: Path) -> None:
        from fgsearch.model.hf_tokenizer import TOKENIZER_FILES

        if spec is None or not spec.local_dir:
            raise CheckpointError("saving an FG-CLIP 2 model needs the spec it was loaded with (its tokenizer files)")
        src = Path(spec.local_dir)
        for name in TOKENIZER_FILES:
            if (src / name).exists() and (src / name).resolve() != (out / name).resolve():
                shutil.copyfile(src / name, out / name)
        proc = {
            "image_processor_type": "Fgclip2ImageProcessor",
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(spec.mean),
            "image_std": list(spec.std),
            "resample": 2,
            "patch_size": spec.patch_size,
            "max_num_patches": spec.max_patches,
            "dynamic_max_patches": spec.dynamic_patches,
        }
        (out / "preprocessor_config.json").write_text(json.dumps(proc, indent=2, sort_keys=True) + "\n")

    def sizes(self, cfg: Any) -> str:
        v, t = cfg.vision, cfg.text
        return (
            f"NaFlex ViT {v.num_hidden_layers}x{v.hidden_size} /{v.patch_size} (grid {v.grid}x{v.grid}), "
            f"text {t.num_hidden_layers}x{t.hidden_size} ({t.max_position_embeddings}/{t.longtext_len} tokens), "
            f"{cfg.embed_dim}-d"
        )

    def transform(self, spec: ModelSpec) -> Any:
        from fgsearch.model.naflex import NaFlexTransform

        if spec.patch_size is None:
            raise ModelNotFoundError(f"model {spec.name}: load the checkpoint first (the patch size comes from it)")
        return NaFlexTransform(
            patch_size=spec.patch_size,
            max_patches=spec.max_patches,
            dynamic=spec.dynamic_patches,
            mean=spec.mean,
            std=spec.std,
        )

    def tokenizer(self, spec: ModelSpec) -> Any:
        from fgsearch.model.hf_tokenizer import HFTokenizer

        if not spec.local_dir:
            raise ModelNotFoundError(f"model {spec.name}: load the checkpoint first (the tokenizer lives in it)")
        return HFTokenizer(spec.local_dir, spec.short_length, spec.long_length)

    def region_walk(self, tokenizer: Any, text: str) -> TextPath:
        return tokenizer.region_walk(text)

    def embed_dim(self, model: torch.nn.Module) -> int:
        m: Any = model
        return int(m.config.embed_dim)

    def encode_image(self, model: torch.nn.Module, batch: ImageBatch) -> torch.Tensor:
        m: Any = model
        return m.encode_image(batch.pixels, batch.mask, batch.shapes)

    def encode_image_and_dense(self, model: torch.nn.Module, batch: ImageBatch) -> tuple[torch.Tensor, list[Any]]:
        m: Any = model
        return m.encode_image_and_dense(batch.pixels, batch.mask, batch.shapes)

    def calibration(self, model: torch.nn.Module) -> ScoreCalibration | None:
        m: Any = model
        return ScoreCalibration("sigmoid", float(m.logit_scale.detach().float().exp()), float(m.logit_bias.detach()))


# ---------------------------------------------------------------------------------------------
FAMILIES: dict[str, str] = {
    "fgclip": "fgsearch.model.family:FGCLIPFamily",
    "fgclip2": "fgsearch.model.family:FGCLIP2Family",
}
_LOADED: dict[str, ModelFamily] = {}


def get_family(name: str) -> ModelFamily:
    """The family registered under ``name``; unknown names are an error naming the known ones."""
    if name not in FAMILIES:
        raise CheckpointError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}")
    if name not in _LOADED:
        module, _, cls = FAMILIES[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]


def family_for_config(raw: dict[str, Any], where: str = "config.json") -> ModelFamily:
    """The family whose ``model_types`` include the config's ``model_type`` (absent: CLIP)."""
    model_type = raw.get("model_type", "clip") if isinstance(raw, dict) else None
    for name in FAMILIES:
        fam = get_family(name)
        if model_type in fam.model_types:
            return fam
    known = ", ".join(f"{t} ({n})" for n in FAMILIES for t in get_family(n).model_types)
    raise CheckpointError(f"{where} has model_type {model_type!r}; supported: {known}")
