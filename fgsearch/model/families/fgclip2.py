"""FG-CLIP 2: SigLIP 2 NaFlex towers, variable resolution (aspect kept, patch budget), short/box/long
text walks, sigmoid scores. Modules: :mod:`fgsearch.model.fgclip2`; preprocessing:
:mod:`fgsearch.model.naflex`; tokenizer: :mod:`fgsearch.model.hf_tokenizer`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgsearch.errors import CheckpointError, ModelNotFoundError
from fgsearch.model.families.base import ModelFamily
from fgsearch.model.files import read_json
from fgsearch.model.protocol import ScoreCalibration, TextPath

if TYPE_CHECKING:
    import torch

    from fgsearch.model.batch import ImageBatch
    from fgsearch.model.registry import ModelSpec


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
