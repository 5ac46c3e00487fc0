"""The model layer: the encoder protocol and its runtimes, families (FG-CLIP, FG-CLIP 2),
checkpoints, tokenizers, preprocessing.

Names are imported on first use, so ``fgsearch.model.protocol`` (and a runtime that needs no
torch) can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fgsearch.model.batch import ImageBatch, ImageItem
    from fgsearch.model.config import FGCLIPConfig, TextConfig, VisionConfig
    from fgsearch.model.convert import stretch_positions
    from fgsearch.model.encoder import TorchEncoder, resolve_device
    from fgsearch.model.families import ModelFamily, family_for_config, family_names, get_family, register_family
    from fgsearch.model.fgclip import FGCLIP, ImageFeatures
    from fgsearch.model.fgclip2 import FGCLIP2, FGCLIP2Config, stretch_short_positions
    from fgsearch.model.loading import (
        checkpoint_fingerprint,
        convert_openai_clip,
        is_cached,
        load_model,
        resolve_spec,
        save_model,
    )
    from fgsearch.model.naflex import NaFlexTransform
    from fgsearch.model.preprocess import ImageTransform, to_rgb
    from fgsearch.model.protocol import EncodedImages, Encoder, ImagePreprocessor, ScoreCalibration, TextPath
    from fgsearch.model.registry import REGISTRY, ModelSpec
    from fgsearch.model.runtime import load_encoder, register_runtime, runtime_names
    from fgsearch.model.tokenizer import TextTruncatedWarning, Tokenizer

_WHERE = {
    "EncodedImages": "fgsearch.model.protocol",
    "Encoder": "fgsearch.model.protocol",
    "FGCLIP": "fgsearch.model.fgclip",
    "FGCLIP2": "fgsearch.model.fgclip2",
    "FGCLIP2Config": "fgsearch.model.fgclip2",
    "FGCLIPConfig": "fgsearch.model.config",
    "ImageBatch": "fgsearch.model.batch",
    "ImageFeatures": "fgsearch.model.fgclip",
    "ImageItem": "fgsearch.model.batch",
    "ImagePreprocessor": "fgsearch.model.protocol",
    "ImageTransform": "fgsearch.model.preprocess",
    "ModelFamily": "fgsearch.model.families",
    "ModelSpec": "fgsearch.model.registry",
    "NaFlexTransform": "fgsearch.model.naflex",
    "REGISTRY": "fgsearch.model.registry",
    "ScoreCalibration": "fgsearch.model.protocol",
    "TextConfig": "fgsearch.model.config",
    "TextPath": "fgsearch.model.protocol",
    "TextTruncatedWarning": "fgsearch.model.tokenizer",
    "Tokenizer": "fgsearch.model.tokenizer",
    "TorchEncoder": "fgsearch.model.encoder",
    "VisionConfig": "fgsearch.model.config",
    "checkpoint_fingerprint": "fgsearch.model.loading",
    "convert_openai_clip": "fgsearch.model.loading",
    "is_cached": "fgsearch.model.loading",
    "load_model": "fgsearch.model.loading",
    "resolve_spec": "fgsearch.model.loading",
    "save_model": "fgsearch.model.loading",
    "family_for_config": "fgsearch.model.families",
    "family_names": "fgsearch.model.families",
    "get_family": "fgsearch.model.families",
    "load_encoder": "fgsearch.model.runtime",
    "register_family": "fgsearch.model.families",
    "register_runtime": "fgsearch.model.runtime",
    "resolve_device": "fgsearch.model.encoder",
    "runtime_names": "fgsearch.model.runtime",
    "stretch_positions": "fgsearch.model.convert",
    "stretch_short_positions": "fgsearch.model.fgclip2",
    "to_rgb": "fgsearch.model.preprocess",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'fgsearch.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "FGCLIP",
    "FGCLIP2",
    "REGISTRY",
    "EncodedImages",
    "Encoder",
    "FGCLIP2Config",
    "FGCLIPConfig",
    "ImageBatch",
    "ImageFeatures",
    "ImageItem",
    "ImagePreprocessor",
    "ImageTransform",
    "ModelFamily",
    "ModelSpec",
    "NaFlexTransform",
    "ScoreCalibration",
    "TextConfig",
    "TextPath",
    "TextTruncatedWarning",
    "Tokenizer",
    "TorchEncoder",
    "VisionConfig",
    "checkpoint_fingerprint",
    "convert_openai_clip",
    "family_for_config",
    "family_names",
    "get_family",
    "is_cached",
    "load_encoder",
    "load_model",
    "register_family",
    "register_runtime",
    "resolve_device",
    "resolve_spec",
    "runtime_names",
    "save_model",
    "stretch_positions",
    "stretch_short_positions",
    "to_rgb",
]
