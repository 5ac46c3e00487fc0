"""Model registry: a name maps to its family, where the weights live AND how inputs are prepared.

Architecture comes from the checkpoint's ``config.json``; the registry adds the family
(:mod:`fgsearch.model.families`), the weight source (hub id + revision) and the preprocessing the
authors used (FG-CLIP: square resize to the checkpoint's image size, OpenAI CLIP mean/std, 77/248
text tokens; FG-CLIP 2: NaFlex patches with the dynamic budget, mean/std 0.5, 64/196 tokens). A
local directory or ``hf-hub:ORG/NAME`` works too; its family and preprocessing are read from the
checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fgsearch.model.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights come from and how its inputs are prepared."""

    name: str
    family: str | None = None  # None: from the checkpoint's config.json model_type
    hub_id: str | None = None  # Hugging Face repo id, or None for a local directory
    revision: str | None = None  # branch, tag or commit; None = the repo's default branch
    local_dir: str | None = None
    image_size: tuple[int, int] | None = None  # None: from the checkpoint's config
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    short_length: int = 77
    long_length: int = 248
    patch_size: int | None = None  # from the checkpoint
    max_patches: int = 256  # FG-CLIP 2: the NaFlex budget when the dynamic budget is off
    dynamic_patches: bool = True  # FG-CLIP 2: the reference's per-image budget buckets (128..1024)
    description: str = ""
    fingerprint: str | None = None  # set when loaded: identity of the checkpoint files

    @property
    def source(self) -> str:
        if self.local_dir:
            return self.local_dir
        return f"hf-hub:{self.hub_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def transform(self) -> ImageTransform:
        if self.image_size is None:
            raise ValueError(f"model spec {self.name} has no image size yet; load the checkpoint first")
        return ImageTransform(self.image_size, self.mean, self.std, self.patch_size)

    def resolved(self, **changes: object) -> ModelSpec:
        return replace(self, **changes)  # type: ignore[arg-type]


REGISTRY: dict[str, ModelSpec] = {
    "fg-clip-base": ModelSpec(
        name="fg-clip-base",
        family="fgclip",
        hub_id="qihoo360/fg-clip-base",
        image_size=(224, 224),
        description="FG-CLIP ViT-B/16, 224 px, 512-d (released weights, ~600 MB)",
    ),
    "fg-clip-large": ModelSpec(
        name="fg-clip-large",
        family="fgclip",
        hub_id="qihoo360/fg-clip-large",
        image_size=(336, 336),
        description="FG-CLIP ViT-L/14, 336 px, 768-d (released weights, ~1.7 GB)",
    ),
    "fg-clip2-base": ModelSpec(
        name="fg-clip2-base",
        family="fgclip2",
        hub_id="qihoo360/fg-clip2-base",
        short_length=64,
        long_length=196,
        description="FG-CLIP 2 base (SigLIP 2 B/16 NaFlex), 768-d, English + Chinese (released weights)",
    ),
    "fg-clip2-large": ModelSpec(
        name="fg-clip2-large",
        family="fgclip2",
        hub_id="qihoo360/fg-clip2-large",
        short_length=64,
        long_length=196,
        description="FG-CLIP 2 large (SigLIP 2 L/16 NaFlex), English + Chinese (released weights)",
    ),
    "fg-clip2-so400m": ModelSpec(
        name="fg-clip2-so400m",
        family="fgclip2",
        hub_id="qihoo360/fg-clip2-so400m",
        short_length=64,
        long_length=196,
        description="FG-CLIP 2 so400m (SigLIP 2 So400m/16 NaFlex), 1152-d, English + Chinese (released weights)",
    ),
    "demo": ModelSpec(
        name="demo",
        family="fgclip",
        local_dir=str(ASSETS / "demo-model"),
        description="small model trained on FineShapes, shipped in the package (offline demo)",
    ),
}
