"""FG-CLIP 2 as pure PyTorch modules, with parameter names that load the released checkpoints.

FG-CLIP 2 (arXiv 2510.10921) is a SigLIP 2 NaFlex model: images keep their aspect ratio and become
a variable number of patches (``pixel_values [B, M, 3*p*p]``, a padding mask and each image's patch
grid ``(h, w)``); the learned ``g x g`` position table is resized to every grid with antialiased
bilinear interpolation. What this module computes (conventions verified against the reference):

* ``encode_image``: attention pooling over the post-LN patch tokens with the learned ``probe`` as the
  query (padding keys masked), then ``a + mlp(layernorm(a))``.
* ``encode_dense``: the same block with the separate ``dense_feature_head`` weights and EVERY token
  as a query: one vector per patch (rows of padding patches are meaningless).
* ``encode_regions``: RoIAlign over each image's real ``(h, w)`` dense map (:func:`roi_pool`).
* ``encode_text``: no causal mask; the pooled state is the LAST position (usually padding), so ids
  are padded to the walk's exact length. ``short``: ``position_embedding`` + ``text_model.head``;
  ``box``: the same positions + ``boxtext_head`` (``text_model.head`` not applied); ``long``:
  ``position_embedding_ori`` for the first ``keep_len`` positions, ``position_embedding_res`` for
  the rest, + ``longtext_head``.
* scores: ``sigmoid(cos * exp(logit_scale) + logit_bias)``.

No output is L2-normalised here; callers normalise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgsearch.errors import CheckpointError, InputError
from fgsearch.model.config import check_towers
from fgsearch.model.fgclip import MLP, LayerStack, TextEmbeddings
from fgsearch.model.protocol import TextPath
from fgsearch.model.roi import roi_pool

# The reference's defaults (configuration_fgclip2.py) for keys a config.json may leave out.
_TOWER_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
_TEXT_DEFAULTS: dict[str, Any] = {
    **_TOWER_DEFAULTS,
    "vocab_size": 32000,
    "max_position_embeddings": 64,
    "keep_len": 20,
    "longtext_len": 196,
    "projection_size": None,  # None: hidden_size
}
_VISION_DEFAULTS: dict[str, Any] = {**_TOWER_DEFAULTS, "num_channels": 3, "num_patches": 256, "patch_size": 16}


@dataclass(frozen=True)
class Text2Config:
    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 64  # the short and box walks' exact length
    keep_len: int = 20  # long walk: positions < keep_len from position_embedding_ori
    longtext_len: int = 196  # the long walk's exact length
    projection_size: int = 768
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class Vision2Config:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    num_patches: int = 256  # rows of the position table, a square grid
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @property
    def grid(self) -> int:
        """Side of the learned position grid."""
        return math.isqrt(self.num_patches)


@dataclass(frozen=True)
class FGCLIP2Config:
    text: Text2Config = field(default_factory=Text2Config)
    vision: Vision2Config = field(default_factory=Vision2Config)

    def __post_init__(self) -> None:
        check_towers(self.text, self.vision)
        if self.vision.grid**2 != self.vision.num_patches:
            raise CheckpointError(f"vision num_patches {self.vision.num_patches} is not a square grid")
        if self.vision.hidden_size != self.text.hidden_size:
            raise CheckpointError(
                f"vision width {self.vision.hidden_size} != text width {self.text.hidden_size}; "
                "FG-CLIP 2 compares them directly"
            )
        if self.text.projection_size != self.text.hidden_size:
            raise CheckpointError(
                f"text projection_size {self.text.projection_size} != hidden_size {self.text.hidden_size}; "
                "the box and long heads keep the width, so the walks would not be comparable"
            )
        if not 0 < self.text.keep_len <= self.text.longtext_len:
            raise CheckpointError(
                f"text keep_len {self.text.keep_len} must be in (0, longtext_len={self.text.longtext_len}]"
            )

    @property
    def embed_dim(self) -> int:
        return self.text.projection_size

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> FGCLIP2Config:
        """Parse the reference's ``config.json``, filling the reference's defaults for missing keys."""
        if not isinstance(d, dict):
            raise CheckpointError("config.json does not hold a JSON object")
        tc = {**_TEXT_DEFAULTS, **(d.get("text_config") or {})}
        vc = {**_VISION_DEFAULTS, **(d.get("vision_config") or {})}
        if tc["projection_size"] is None:
            tc["projection_size"] = tc["hidden_size"]
        try:
            text = Text2Config(**{f.name: tc[f.name] for f in fields(Text2Config)})
            vision = Vision2Config(**{f.name: vc[f.name] for f in fields(Vision2Config)})
        except TypeError as e:
            raise CheckpointError(f"config.json has a malformed text or vision config: {e}") from e
        return cls(text=text, vision=vision)

    def to_hf_dict(self) -> dict[str, Any]:
        """The reference-style ``config.json`` dict (loadable by the reference and by from_hf_dict)."""
        return {
            "architectures": ["FG_CLIP2_Model"],
            "model_type": "fgclip2",
            "text_config": {**asdict(self.text), "model_type": "fgclip2_text_model"},
            "vision_config": {**asdict(self.vision), "model_type": "fgclip2_vision_model"},
        }

    @classmethod
    def tiny(
        cls,
        width: int = 64,
        layers: int = 2,
        patch_size: int = 16,
        grid: int = 8,
        vocab_size: int = 1000,
        text_length: int = 64,
        long_length: int = 196,
        keep_len: int = 20,
    ) -> FGCLIP2Config:
        """A few-MB random model for tests (the parity fixture's shape by default)."""
        tower: dict[str, Any] = {
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": max(1, width // 16),
        }
        return cls(
            text=Text2Config(
                **tower,
                vocab_size=vocab_size,
                max_position_embeddings=text_length,
                longtext_len=long_length,
                keep_len=keep_len,
                projection_size=width,
            ),
            vision=Vision2Config(**tower, num_patches=grid * grid, patch_size=patch_size),
        )

    @classmethod
    def base(cls) -> FGCLIP2Config:
        """The fg-clip2-base architecture (SigLIP 2 base-patch16-naflex: width 768, 12 layers, vocab 256000)."""
        return cls(text=Text2Config(vocab_size=256000), vision=Vision2Config())

    def with_text(self, **changes: Any) -> FGCLIP2Config:
        return replace(self, text=replace(self.text, **changes))


Shapes = Tensor | Sequence[Sequence[int]] | np.ndarray  # every image's patch grid (h, w)


# The reference's ``resize_postion_embeding()`` (SigLIP 2 -> FG-CLIP 2 starting point) copies the first
# 20 rows of the short table and stretches the rest 4x, giving 4L - 60 rows for an L-row table. The 20
# is a literal in that function, NOT the config's ``keep_len`` (which only splits the long walk between
# ``position_embedding_ori`` and ``position_embedding_res``): we follow the reference, so a checkpoint
# made here matches one made there, and warn once when the config says otherwise.
STRETCH_KEEP = 20
STRETCH_FACTOR = 4
_stretch_warned: set[int] = set()


def stretch_short_positions(table: Tensor, keep_len: int = STRETCH_KEEP) -> Tensor:
    """The reference's short -> long position stretch: ``[L, D]`` -> ``[4L - 60, D]``.

    Keeps :data:`STRETCH_KEEP` rows whatever ``keep_len`` (the config's) says; warns once per
    differing ``keep_len`` (the long walk then reads stretched rows where the config expects copied
    ones, exactly as in the reference)."""
    from fgsearch.model.convert import stretch_positions

    if keep_len != STRETCH_KEEP and keep_len not in _stretch_warned:
        _stretch_warned.add(keep_len)
        warnings.warn(
            f"the config's keep_len is {keep_len} but FG-CLIP 2's reference stretches the short position "
            f"table keeping {STRETCH_KEEP} rows (hard-coded); following the reference",
            stacklevel=2,
        )
    return stretch_positions(table, keep=STRETCH_KEEP, factor=STRETCH_FACTOR)


def key_mask(mask: Tensor | None) -> Tensor | None:
    """``[B, N]`` 1/0 padding mask -> boolean ``[B, 1, 1, N]`` for SDPA; None when nothing is padded
    (the same result, and SDPA's fastest kernels take no mask)."""
    if mask is None or bool(mask.all()):
        return None
    return mask.to(torch.bool)[:, None, None, :]


class AttentionPoolingHead(nn.Module):
    """SigLIP's multi-head attention pooling; key names follow ``nn.MultiheadAttention``."""

    def __init__(self, cfg: Vision2Config) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.probe = nn.Parameter(torch.randn(1, 1, cfg.hidden_size))
        self.attention = nn.MultiheadAttention(cfg.hidden_size, cfg.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, queries: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
        """``queries [B, T, D]`` attend over ``x [B, S, D]`` (``mask``: SDPA key mask) -> ``[B, T, D]``."""
        att = self.attention
        d = x.shape[-1]
        w, b = att.in_proj_weight, att.in_proj_bias
        q = F.linear(queries, w[:d], b[:d])
        k, v = F.linear(x, w[d:], b[d:]).chunk(2, dim=-1)

        def split(t: Tensor) -> Tensor:
            return t.view(t.shape[0], t.shape[1], self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        a = att.out_proj(out.transpose(1, 2).reshape(queries.shape[0], queries.shape[1], d))
        return a + self.mlp(self.layernorm(a))


def naflex_positions(
    weight: Tensor, grid: int, shapes: Sequence[tuple[int, int]], length: int, dtype: torch.dtype
) -> Tensor:
    """``[grid*grid, D]`` position table -> ``[B, length, D]`` rows resized to each ``(h, w)``
    (bilinear, antialiased); padding rows get row 0. A function so that a runtime outside torch
    (the OpenVINO graph takes positions as an input) computes exactly the same rows."""
    d = weight.shape[-1]
    table = weight.reshape(grid, grid, d).permute(2, 0, 1)[None].float()
    out = table.new_empty((len(shapes), length, d), dtype=dtype)
    done: dict[tuple[int, int], Tensor] = {}
    for i, (h, w) in enumerate(shapes):
        if (h, w) not in done:
            r = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            done[(h, w)] = r.reshape(d, h * w).t().to(dtype)
        r = done[(h, w)]
        out[i, : h * w] = r
        out[i, h * w :] = r[0]
    return out


class VisionEmbeddings2(nn.Module):
    def __init__(self, cfg: Vision2Config) -> None:
        super().__init__()
        self.grid = cfg.grid
        self.patch_embedding = nn.Linear(cfg.num_channels * cfg.patch_size**2, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.num_patches, cfg.hidden_size)

    def positions(self, shapes: Sequence[tuple[int, int]], length: int, dtype: torch.dtype) -> Tensor:
        """The ``[B, length, D]`` position rows: the grid resized to each ``(h, w)``; padding gets row 0."""
        return naflex_positions(self.position_embedding.weight, self.grid, shapes, length, dtype)

    def forward(self, pixel_values: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        return x + self.positions(shapes, x.shape[1], x.dtype)


class VisionTransformer2(nn.Module):
    def __init__(self, cfg: Vision2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings2(cfg)
        self.encoder = LayerStack(cfg)  # type: ignore[arg-type]
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.head = AttentionPoolingHead(cfg)

    def forward(self, pixel_values: Tensor, mask: Tensor | None, shapes: Shapes) -> Tensor:
        """Post-LN tokens ``[B, M, D]``."""
        hw = _shapes(shapes, pixel_values)
        x = self.embeddings(pixel_values, hw)
        m = key_mask(mask)
        for layer in self.encoder.layers:
            x = layer(x, mask=m)
        return self.post_layernorm(x)


def grids(shapes: Shapes) -> list[tuple[int, int]]:
    """Spatial shapes as a list of ``(h, w)`` ints."""
    return [(int(h), int(w)) for h, w in (shapes.tolist() if isinstance(shapes, (Tensor, np.ndarray)) else shapes)]


def _shapes(shapes: Shapes, pixel_values: Tensor) -> list[tuple[int, int]]:
    hw = grids(shapes)
    if pixel_values.ndim != 3 or len(hw) != pixel_values.shape[0]:
        raise InputError(
            f"pixel_values must be [B, M, 3*p*p] with one (h, w) per image, got {list(pixel_values.shape)} "
            f"and {len(hw)} shapes; preprocess images with the model's NaFlex transform"
        )
    for h, w in hw:
        if h < 1 or w < 1 or h * w > pixel_values.shape[1]:
            raise InputError(f"spatial shape ({h}, {w}) does not fit {pixel_values.shape[1]} patch rows")
    return hw


class TextTransformer2(nn.Module):
    def __init__(self, cfg: Text2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = TextEmbeddings(
            cfg.vocab_size, cfg.hidden_size, cfg.max_position_embeddings, cfg.longtext_len, cfg.keep_len
        )
        self.encoder = LayerStack(cfg)  # type: ignore[arg-type]
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.projection_size)

    def forward(self, input_ids: Tensor, walk: TextPath, attention_mask: Tensor | None = None) -> Tensor:
        """Token ids ``[B, L]`` -> the final-LN state at the LAST position ``[B, D]`` (no head)."""
        n = input_ids.shape[1]
        x = self.embeddings.token_embedding(input_ids) + self.embeddings.positions(n, walk)
        return self.pool_embedded(x, attention_mask)

    def pool_embedded(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Embedded tokens ``[B, L, D]`` (token + position rows) -> the pooled state ``[B, D]``: the
        transformer after the embedding lookup (the fast text tower exports this part alone)."""
        m = key_mask(attention_mask)
        *first, last_layer = self.encoder.layers
        last: Any = last_layer
        for layer in first:
            x = layer(x, mask=m)
        # only the last position is pooled: the last layer needs it as the only query (keys: all)
        h = last.layer_norm1(x)
        y = x[:, -1:] + last.self_attn.attend(h[:, -1:], h, mask=m)
        y = y + last.mlp(last.layer_norm2(y))
        return self.final_layer_norm(y[:, 0])


class FGCLIP2(nn.Module):
    """FG-CLIP 2. Parameter names match the reference's checkpoints (``FG_CLIP2_Model``)."""

    def __init__(self, config: FGCLIP2Config) -> None:
        super().__init__()
        self.config = config
        d = config.text.hidden_size
        self.text_model = TextTransformer2(config.text)
        self.vision_model = VisionTransformer2(config.vision)
        self.longtext_head = nn.Linear(d, d)
        self.boxtext_head = nn.Linear(d, d)
        self.dense_feature_head = AttentionPoolingHead(config.vision)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.normal_(m.in_proj_weight, std=0.02)
            nn.init.zeros_(m.in_proj_bias)

    # ---- image ---------------------------------------------------------------------------
    def _global(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        head = self.vision_model.head
        probe = head.probe.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        return head(probe, tokens, key_mask(mask))[:, 0]

    def _dense(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        return self.dense_feature_head(tokens, tokens, key_mask(mask))

    def encode_image(self, pixel_values: Tensor, mask: Tensor | None, shapes: Shapes) -> Tensor:
        """Global image vectors ``[B, D]``."""
        return self._global(self.vision_model(pixel_values, mask, shapes), mask)

    def encode_dense(self, pixel_values: Tensor, mask: Tensor | None, shapes: Shapes) -> Tensor:
        """Dense vectors ``[B, M, D]``, one per patch row (padding rows are meaningless)."""
        return self._dense(self.vision_model(pixel_values, mask, shapes), mask)

    def encode_image_and_dense(
        self, pixel_values: Tensor, mask: Tensor | None, shapes: Shapes
    ) -> tuple[Tensor, list[Tensor]]:
        """Global ``[B, D]`` and each image's dense map ``[h_i, w_i, D]`` from one pass through the tower."""
        tokens = self.vision_model(pixel_values, mask, shapes)
        return self._global(tokens, mask), dense_maps(self._dense(tokens, mask), shapes)

    def encode_regions(self, maps: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Region vectors ``[sum K_i, D]``; ``boxes[i]`` normalised ``x1, y1, x2, y2`` of image i."""
        return roi_pool(maps, boxes)

    # ---- text ----------------------------------------------------------------------------
    def text_length(self, walk: TextPath | str) -> int:
        t = self.config.text
        return t.longtext_len if TextPath(walk) is TextPath.LONG else t.max_position_embeddings

    def encode_text(self, input_ids: Tensor, walk: TextPath | str, attention_mask: Tensor | None = None) -> Tensor:
        """Text vectors ``[B, D]`` from ids ``[B, L]`` padded to the walk's exact length.

        ``attention_mask`` reproduces what the reference computes when one is passed; its own
        tokenizer passes none, and neither does fgsearch.
        """
        walk = TextPath(walk)
        length = self.text_length(walk)
        if input_ids.ndim != 2 or input_ids.shape[1] != length:
            raise InputError(
                f"the {walk.value} walk takes [B, {length}] token ids (padded to exactly {length}: the model "
                f"pools the last position), got {list(input_ids.shape)}"
            )
        pooled = self.text_model(input_ids, walk, attention_mask)
        if walk is TextPath.SHORT:
            return self.text_model.head(pooled)
        if walk is TextPath.BOX:
            return self.boxtext_head(pooled)
        return self.longtext_head(pooled)

    # ---- scores --------------------------------------------------------------------------
    def similarity_logits(self, image: Tensor, text: Tensor) -> Tensor:
        """``[Bi, Bt]`` logits before the sigmoid (features L2-normalised here)."""
        i = F.normalize(image.float(), dim=-1)
        t = F.normalize(text.float(), dim=-1)
        return i @ t.t() * self.logit_scale.float().exp() + self.logit_bias.float()


def dense_maps(dense: Tensor, shapes: Shapes) -> list[Tensor]:
    """``[B, M, D]`` dense rows -> each image's real ``[h_i, w_i, D]`` map (views)."""
    return [dense[i, : h * w].reshape(h, w, -1) for i, (h, w) in enumerate(grids(shapes))]
