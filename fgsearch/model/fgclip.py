"""FG-CLIP (v1) as pure PyTorch modules, with parameter names that load the released checkpoints.

The model computes features and nothing else: no losses, no distributed code, no device moves.

* ``encode_image``: global image vector (post-LN class token, ``visual_projection``).
* ``encode_dense``: one vector per patch. The hidden state that enters the last vision layer runs
  through that layer with attention replaced by its value path
  (``x + out_proj(v_proj(ln1(x)))``, then the MLP residual), drops the class token, and takes
  ``post_layernorm`` and ``visual_projection``.
* ``encode_regions``: RoIAlign (1x1 output, adaptive sampling, ``aligned=True``) over the dense map.
* ``encode_image_and_regions``: all three from ONE pass through the tower; the last layer shares
  its ``v_proj`` between the class-token attention and the dense value path.
* ``encode_text``: pooled at the first EOS token; :class:`TextPath` picks the position table and
  projection (see ``fgsearch.model.tokenizer`` for the rule that chooses it).

No output is L2-normalised here; callers normalise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgsearch.errors import InputError
from fgsearch.model.config import FGCLIPConfig, TextConfig, VisionConfig
from fgsearch.model.protocol import TextPath
from fgsearch.model.roi import roi_pool


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    return nn.GELU()


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation of OpenAI CLIP."""

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            return x * torch.sigmoid(1.702 * x)
        return x.mul_(torch.sigmoid(x * 1.702))  # inference: reuse the fc1 output buffer


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (HF key names), via SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def attend(
        self, q_in: Tensor, kv_in: Tensor, v: Tensor | None = None, causal: bool = False, mask: Tensor | None = None
    ) -> Tensor:
        """Attention of ``q_in`` tokens over ``kv_in`` tokens; ``v`` may be passed precomputed."""
        q = self._split(self.q_proj(q_in))
        k = self._split(self.k_proj(kv_in))
        v = self._split(self.v_proj(kv_in) if v is None else v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))

    def _fused_qkv(self) -> tuple[Tensor, Tensor]:
        """q/k/v weights as one matrix. Cached while no gradient is recorded (inference); the cache
        is keyed on the parameters' identity and version, so any update invalidates it."""
        params = (
            self.q_proj.weight,
            self.k_proj.weight,
            self.v_proj.weight,
            self.q_proj.bias,
            self.k_proj.bias,
            self.v_proj.bias,
        )
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return torch.cat(params[:3]), torch.cat(params[3:])
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cached = getattr(self, "_fused_cache", None)
        if cached is None or cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable in any mode
                cached = (key, torch.cat(params[:3]), torch.cat(params[3:]))
            self._fused_cache = cached
        return cached[1], cached[2]

    def forward(self, x: Tensor, causal: bool = False, mask: Tensor | None = None) -> Tensor:
        """``mask``: optional boolean ``[B, 1, 1, N]`` (True = a key that may be attended)."""
        # self-attention: one fused q/k/v matmul (the parameters stay separate, as checkpoints store them)
        w, bias = self._fused_qkv()
        q, k, v = (self._split(t) for t in F.linear(x, w, bias).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _activation(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, dim: int, heads: int, hidden: int, act: str, eps: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, hidden, act)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, causal: bool = False, mask: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal=causal, mask=mask)
        return x + self.mlp(self.layer_norm2(x))


class LayerStack(nn.Module):
    def __init__(self, cfg: TextConfig | VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(
                cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.hidden_act, cfg.layer_norm_eps
            )
            for _ in range(cfg.num_hidden_layers)
        )


class TextEmbeddings(nn.Module):
    """Tokens, the short position table, and the two long tables (FG-CLIP and FG-CLIP 2 alike)."""

    def __init__(self, vocab_size: int, width: int, short_positions: int, long_positions: int, long_keep: int) -> None:
        super().__init__()
        self.long_keep = long_keep
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(short_positions, width)
        self.position_embedding_ori = nn.Embedding(long_positions, width)
        self.position_embedding_res = nn.Embedding(long_positions, width)

    def positions(self, n: int, path: TextPath) -> Tensor:
        """The ``[n, D]`` position rows the given path adds to its first n tokens (short and box
        walks: the short table; long: ``position_embedding_ori`` below ``long_keep``, then ``_res``)."""
        if path is not TextPath.LONG:
            return self.position_embedding.weight[:n]
        keep = min(n, self.long_keep)
        return torch.cat([self.position_embedding_ori.weight[:keep], self.position_embedding_res.weight[keep:n]])


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = TextEmbeddings(
            cfg.vocab_size, cfg.hidden_size, cfg.max_position_embeddings, cfg.long_positions, cfg.long_keep
        )
        self.encoder = LayerStack(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor, path: TextPath) -> Tensor:
        """Token ids ``[B, L]`` -> pooled ``[B, D]`` hidden state at the first EOS."""
        is_eos = input_ids == self.cfg.eos_token_id
        has_eos = is_eos.any(dim=1)
        # the first EOS; rows without one pool at the last token
        eos = torch.where(
            has_eos, is_eos.int().argmax(dim=1), input_ids.new_full(has_eos.shape, input_ids.shape[1] - 1)
        )
        # causal attention: tokens after the last pooled position never influence it, so skip them
        n = int(eos.max().item()) + 1 if input_ids.numel() else 0
        ids = input_ids[:, :n]
        x = self.embeddings.token_embedding(ids) + self.embeddings.positions(n, path)
        for layer in self.encoder.layers:
            x = layer(x, causal=True)
        x = self.final_layer_norm(x)
        return x[torch.arange(x.shape[0], device=x.device), eos]


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(cfg.hidden_size) * cfg.hidden_size**-0.5)
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], row-major patches
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight.to(x.dtype)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = LayerStack(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def trunk(self, pixel_values: Tensor) -> Tensor:
        """Hidden state entering the last layer, ``[B, 1 + N, D]``."""
        expected = (self.cfg.num_channels, *self.cfg.image_size)
        if tuple(pixel_values.shape[1:]) != expected:
            raise InputError(
                f"pixel_values must be [B, {expected[0]}, {expected[1]}, {expected[2]}] for this model, "
                f"got {list(pixel_values.shape)}; preprocess images with the model's transform"
            )
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers[:-1]:
            x = layer(x)
        return x

    def last_layer(self, x: Tensor, want_global: bool, want_dense: bool) -> tuple[Tensor | None, Tensor | None]:
        """Run the last layer for the class token (global) and/or the value path (dense).

        Returns post-LN hidden states: class token ``[B, D]`` and patches ``[B, N, D]``.
        """
        last = cast(EncoderLayer, self.encoder.layers[-1])
        attn = last.self_attn
        h = last.layer_norm1(x)
        v = attn.v_proj(h)  # shared by the class-token attention and the dense value path
        cls_out = dense_out = None
        if want_global:
            cls = x[:, :1] + attn.attend(h[:, :1], h, v=v)
            cls = cls + last.mlp(last.layer_norm2(cls))
            cls_out = self.post_layernorm(cls[:, 0])
        if want_dense:
            d = x[:, 1:] + attn.out_proj(v[:, 1:])
            d = d + last.mlp(last.layer_norm2(d))
            dense_out = self.post_layernorm(d)
        return cls_out, dense_out


@dataclass
class ImageFeatures:
    """Outputs of one forward pass: global ``[B, P]``, dense ``[B, h, w, P]``, regions ``[sum K_i, P]``."""

    image: Tensor
    dense: Tensor
    regions: Tensor


class FGCLIP(nn.Module):
    """FG-CLIP v1. Parameter names match the reference's (transformers CLIP) checkpoints."""

    def __init__(self, config: FGCLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.text_model = TextTransformer(config.text)
        self.vision_model = VisionTransformer(config.vision)
        self.visual_projection = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text.hidden_size, config.projection_dim, bias=False)
        self.text_filip_projection = nn.Linear(config.text.hidden_size, config.projection_dim, bias=False)
        init = torch.tensor(float(config.logit_scale_init_value))
        self.logit_scale = nn.Parameter(init.clone())
        self.logit_scale_finegraind = nn.Parameter(init.clone())
        self.logit_scale_hardneg = nn.Parameter(init.clone())
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def grid(self) -> tuple[int, int]:
        """Dense-map grid (rows, columns)."""
        return self.config.vision.grid

    # ---- image ---------------------------------------------------------------------------
    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """Global image vectors ``[B, P]``."""
        cls, _ = self.vision_model.last_layer(self.vision_model.trunk(pixel_values), True, False)
        assert cls is not None
        return self.visual_projection(cls)

    def encode_dense(self, pixel_values: Tensor) -> Tensor:
        """Dense patch vectors ``[B, h, w, P]`` (row-major grid)."""
        _, dense = self.vision_model.last_layer(self.vision_model.trunk(pixel_values), False, True)
        assert dense is not None
        return self._dense_grid(self.visual_projection(dense))

    def _dense_grid(self, dense: Tensor) -> Tensor:
        gh, gw = self.grid
        return dense.reshape(dense.shape[0], gh, gw, dense.shape[-1])

    def encode_regions(self, dense: Tensor, boxes: Sequence[Tensor]) -> Tensor:
        """Region vectors ``[sum K_i, P]`` by RoIAlign over a dense map ``[B, h, w, P]``.

        ``boxes[i]`` is a ``[K_i, 4]`` tensor of NORMALISED ``x1, y1, x2, y2`` in ``[0, 1]`` for image i.
        """
        if len(boxes) != dense.shape[0]:
            raise InputError(f"got box lists for {len(boxes)} images but {dense.shape[0]} images")
        return roi_pool(list(dense), boxes)

    def encode_image_and_regions(self, pixel_values: Tensor, boxes: Sequence[Tensor] | None = None) -> ImageFeatures:
        """Global, dense and region vectors from one pass through the vision tower."""
        cls, dense = self.vision_model.last_layer(self.vision_model.trunk(pixel_values), True, True)
        assert cls is not None and dense is not None
        image = self.visual_projection(cls)
        dense_map = self._dense_grid(self.visual_projection(dense))
        if boxes is None:
            regions = dense_map.new_zeros((0, dense_map.shape[-1]), dtype=torch.float32)
        else:
            regions = self.encode_regions(dense_map, boxes)
        return ImageFeatures(image=image, dense=dense_map, regions=regions)

    # ---- text ----------------------------------------------------------------------------
    def max_tokens(self, path: TextPath) -> int:
        t = self.config.text
        return t.max_position_embeddings if TextPath(path) is TextPath.SHORT else t.long_positions

    def encode_text(self, input_ids: Tensor, path: TextPath | str) -> Tensor:
        """Text vectors ``[B, P]`` from token ids ``[B, L]`` (L <= 77 short, <= 248 long)."""
        path = TextPath(path)
        if path is TextPath.BOX:
            raise InputError("FG-CLIP (v1) has no box text walk; use the short or long path")
        limit = self.max_tokens(path)
        if input_ids.ndim != 2 or input_ids.shape[1] > limit:
            raise InputError(f"the {path.value} text path takes [B, <= {limit}] token ids, got {list(input_ids.shape)}")
        pooled = self.text_model(input_ids, path)
        proj = self.text_projection if path is TextPath.SHORT else self.text_filip_projection
        return proj(pooled)
