"""Turn an OpenAI CLIP checkpoint into an FG-CLIP starting point, the way the reference does.

Two changes: the 77-row text position table is stretched to 248 rows for the two long tables
(:func:`stretch_positions`), and ``text_projection`` is copied into ``text_filip_projection``.
The two extra temperatures start at the config's ``logit_scale_init_value``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def stretch_positions(table: torch.Tensor, keep: int = 20, factor: int = 4) -> torch.Tensor:
    """Stretch an ``[n, D]`` position table to ``keep + (n - keep) * factor`` rows.

    Rows ``< keep`` are copied. Each later gap between old rows ``keep+i`` and ``keep+i+1`` is
    filled by ``factor`` rows linearly interpolated from the first toward the second; the last
    ``factor`` rows continue the final step linearly (77 -> 248 with the defaults).
    """
    import torch

    n, _ = table.shape
    if not 0 < keep < n:
        raise ValueError(f"keep must be in (0, {n}), got {keep}")
    t = table.detach().double()
    k = torch.arange(factor, dtype=torch.float64).unsqueeze(1) / factor  # [factor, 1]
    rows = [t[:keep]]
    for i in range(keep, n - 1):
        rows.append((1 - k) * t[i] + k * t[i + 1])
    rows.append(t[n - 1] + k * (t[n - 1] - t[n - 2]))
    return torch.cat(rows).to(table.dtype)


def openai_to_fgclip_state(
    state: dict[str, torch.Tensor], keep: int = 20, long_positions: int = 248, logit_scale_init: float = 2.6592
) -> dict[str, torch.Tensor]:
    """Map an OpenAI CLIP (transformers layout) state dict to FG-CLIP's keys."""
    import torch

    out = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    pos = out["text_model.embeddings.position_embedding.weight"]
    factor = max(1, round((long_positions - keep) / (pos.shape[0] - keep)))
    long = stretch_positions(pos, keep=keep, factor=factor)
    if long.shape[0] != long_positions:
        raise ValueError(f"stretching {pos.shape[0]} positions gave {long.shape[0]} rows, expected {long_positions}")
    out["text_model.embeddings.position_embedding_ori.weight"] = long.clone()
    out["text_model.embeddings.position_embedding_res.weight"] = long.clone()
    out["text_filip_projection.weight"] = out["text_projection.weight"].clone()
    for name in ("logit_scale_finegraind", "logit_scale_hardneg"):
        out.setdefault(name, torch.tensor(float(logit_scale_init)))
    return out
