"""Published FG-CLIP numbers to print beside ours (percent), from the project's seed table.

The seed table (``FGCLIP.md``) does not say which model size each row uses, and for Flickr30K and
MSCOCO it gives two text->image R@1 values under slightly different names. We keep every value with
its original label rather than guess which one belongs to which model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperNumber:
    """One published value (percent) and the row label it carried in the seed table."""

    value: float
    label: str

    def __str__(self) -> str:
        return f"{self.value:g} ({self.label})"


PAPER: dict[str, dict[str, tuple[PaperNumber, ...]]] = {
    "flickr30k": {
        "t2i_r1": (PaperNumber(81.3, "Flickr30K 1K test"), PaperNumber(76.4, "Flickr30K")),
    },
    "coco": {
        "t2i_r1": (PaperNumber(50.46, "MSCOCO 5K test"), PaperNumber(45.4, "MSCOCO 5K")),
    },
    "dci": {
        "t2i_r1": (PaperNumber(60.6, "DCI"),),
        "i2t_r1": (PaperNumber(61.8, "DCI"),),
    },
    "urban1k": {
        "t2i_r1": (PaperNumber(89.9, "Urban-1K"),),
        "i2t_r1": (PaperNumber(93.0, "Urban-1K"),),
    },
    "sharegpt4v": {
        "t2i_r1": (PaperNumber(94.9, "ShareGPT4V-1k"),),
    },
}


def paper_numbers(task: str) -> dict[str, tuple[PaperNumber, ...]]:
    """The published values for ``task`` keyed by metric name (empty when the seed table has none)."""
    return dict(PAPER.get(task, {}))
