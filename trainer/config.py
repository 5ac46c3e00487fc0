"""The resolved options of a training run, one frozen value checked once at the boundary.

``TrainConfig`` is what ``fgsearch train`` builds from its flags and what the loop reads; it is
saved as ``train_config.json`` beside the final model and every checkpoint, so that a run can be
reproduced and resumed with the same settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fgsearch.errors import InputError

FREEZE_CHOICES = ("none", "vision", "text", "all-but-projections")
LOSS_CHOICES = ("global", "region", "hardneg")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (saved next to every checkpoint)."""

    data: str
    out: str
    data_root: str | None = None
    init: str = "tiny"  # tiny | tiny-fgclip2 | registry name | checkpoint dir | hf-hub:ORG/NAME | openai-clip:DIR
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 100
    grad_accum: int = 1
    clip_grad: float = 1.0
    freeze: str = "none"
    losses: tuple[str, ...] = LOSS_CHOICES
    region_weight: float = 0.1  # the paper's weights
    hardneg_weight: float = 0.5
    save_every: int = 500
    eval_every: int = 500
    eval_limit: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    resume: bool = True
    # shape of a fresh model (--init tiny, tiny-fgclip2: its towers both have tiny_width and tiny_layers)
    tiny_image_size: int = 96
    tiny_patch: int = 12
    tiny_width: int = 128
    tiny_layers: int = 4
    tiny_text_width: int = 64
    tiny_text_layers: int = 2
    tiny_dim: int = 64

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE_CHOICES:
            raise InputError(
                "{freeze} must be one of {choices}, got {got!r}",
                field="freeze",
                choices=", ".join(FREEZE_CHOICES),
                got=self.freeze,
            )
        bad = [x for x in self.losses if x not in LOSS_CHOICES]
        if bad or not self.losses:
            raise InputError(
                "{losses} takes a comma list of {choices}, got {got}",
                field="losses",
                choices=", ".join(LOSS_CHOICES),
                got=",".join(self.losses),
            )
        for name in ("steps", "batch_size", "grad_accum", "save_every", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise InputError("{field} must be at least 1", field=name)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["losses"] = list(self.losses)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["losses"] = tuple(d.get("losses", LOSS_CHOICES))
        return cls(**d)
