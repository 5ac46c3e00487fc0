"""FG-CLIP architecture configuration (frozen dataclasses) and its Hugging Face ``config.json`` form.

Released FG-CLIP checkpoints store a transformers ``CLIPConfig`` that lists only the values that
differ from transformers' defaults; :meth:`FGCLIPConfig.from_hf_dict` fills the defaults back in,
so one code path reads the released weights, the parity fixture and our own checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from fgsearch.errors import CheckpointError

# transformers' CLIP defaults (CLIPTextConfig / CLIPVisionConfig / CLIPConfig)
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
SUPPORTED_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def check_towers(text: Any, vision: Any) -> None:
    """Heads divide the width and the activation is one we implement, for both towers of any family."""
    for name, tower in (("text", text), ("vision", vision)):
        if tower.hidden_size % tower.num_attention_heads:
            raise CheckpointError(
                f"{name} hidden_size {tower.hidden_size} is not divisible by "
                f"num_attention_heads {tower.num_attention_heads}"
            )
        if tower.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise CheckpointError(
                f"{name} hidden_act {tower.hidden_act!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
            )


@dataclass(frozen=True)
class TextConfig:
    """Text tower. ``long_positions`` rows in the two long tables; the first ``long_keep`` come
    from ``position_embedding_ori`` and the rest from ``position_embedding_res`` (FG-CLIP v1)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    long_positions: int = 248
    long_keep: int = 20
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407


@dataclass(frozen=True)
class VisionConfig:
    """Vision tower. ``image_size`` is (height, width); the patch grid is ``image_size // patch_size``."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: tuple[int, int] = (224, 224)
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_positions(self) -> int:
        gh, gw = self.grid
        return gh * gw + 1


@dataclass(frozen=True)
class FGCLIPConfig:
    """The whole model: both towers, the shared projection size and the temperature init."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    def __post_init__(self) -> None:
        check_towers(self.text, self.vision)
        if min(self.vision.grid) < 1:
            raise CheckpointError(
                f"image size {self.vision.image_size} is smaller than the patch size {self.vision.patch_size}"
            )
        if not 0 < self.text.long_keep <= self.text.max_position_embeddings <= self.text.long_positions:
            raise CheckpointError(
                "text positions must satisfy 0 < long_keep <= max_position_embeddings <= long_positions, got "
                f"{self.text.long_keep}, {self.text.max_position_embeddings}, {self.text.long_positions}"
            )

    @classmethod
    def tiny(cls, image_size: int = 64, patch_size: int = 16, width: int = 64, layers: int = 2) -> FGCLIPConfig:
        """A few-MB random model for tests and demos (the parity fixture's shape by default)."""
        return cls(
            text=TextConfig(
                hidden_size=width,
                intermediate_size=2 * width,
                num_hidden_layers=layers,
                num_attention_heads=max(1, width // 16),
            ),
            vision=VisionConfig(
                hidden_size=width,
                intermediate_size=2 * width,
                num_hidden_layers=layers,
                num_attention_heads=max(1, width // 16),
                image_size=(image_size, image_size),
                patch_size=patch_size,
            ),
            projection_dim=width // 2,
        )

    @classmethod
    def base(cls) -> FGCLIPConfig:
        """The fg-clip-base architecture (ViT-B/16, 224 px, 512-d)."""
        return cls(
            vision=VisionConfig(patch_size=16, image_size=(224, 224)),
            text=TextConfig(),
            projection_dim=512,
        )

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> FGCLIPConfig:
        """Parse a transformers CLIP ``config.json`` dict, filling in transformers' defaults."""
        if not isinstance(d, dict):
            raise CheckpointError("config.json does not hold a JSON object")
        model_type = d.get("model_type", "clip")
        if model_type not in ("clip", "fgclip"):
            raise CheckpointError(f"config.json has model_type {model_type!r}; an FG-CLIP (CLIP) config is needed")
        tc = {**_TEXT_DEFAULTS, **(d.get("text_config") or {})}
        vc = {**_VISION_DEFAULTS, **(d.get("vision_config") or {})}
        size = vc["image_size"]
        image_size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        fg = d.get("fgsearch", {})  # our own extra keys (long-text table sizes), absent in released configs
        try:
            text_kw: dict[str, Any] = {f.name: tc[f.name] for f in fields(TextConfig) if f.name in tc}
            text_kw.update({k: int(v) for k, v in fg.items() if k in ("long_positions", "long_keep")})
            text = TextConfig(**text_kw)
            vision = VisionConfig(
                **{f.name: vc[f.name] for f in fields(VisionConfig) if f.name in vc and f.name != "image_size"},
                image_size=image_size,
            )
            return cls(
                text=text,
                vision=vision,
                projection_dim=int(d.get("projection_dim", 512)),
                logit_scale_init_value=float(d.get("logit_scale_init_value", 2.6592)),
            )
        except TypeError as e:
            raise CheckpointError(f"config.json has a malformed text or vision config: {e}") from e

    def to_hf_dict(self) -> dict[str, Any]:
        """The transformers-style ``config.json`` dict (full values, loadable by from_hf_dict)."""
        text = asdict(self.text)
        for k in ("long_positions", "long_keep"):
            text.pop(k)
        vision = asdict(self.vision)
        h, w = self.vision.image_size
        vision["image_size"] = h if h == w else [h, w]
        text["model_type"] = "clip_text_model"
        vision["model_type"] = "clip_vision_model"
        return {
            "architectures": ["FGCLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": text,
            "vision_config": vision,
            "fgsearch": {"long_positions": self.text.long_positions, "long_keep": self.text.long_keep},
        }

    def with_image_size(self, size: int | tuple[int, int]) -> FGCLIPConfig:
        """Copy with another input resolution (position table size follows)."""
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return replace(self, vision=replace(self.vision, image_size=hw))
