"""The benchmarks ``fgsearch eval`` knows and the record of one run.

:data:`TASKS` maps each task name to how its local data is read, how it is scored (``kind``) and
which text path it uses; :class:`EvalResult` holds a run's metrics (percent) beside the paper's
numbers and the settings that produced them, and renders them as rows, lines or JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fgsearch.eval import datasets as ds
from fgsearch.eval.paper import PaperNumber

SHORT, LONG = "short", "long"


@dataclass(frozen=True)
class EvalTask:
    """A benchmark: how to read its data and how to score it."""

    name: str
    description: str
    kind: str  # retrieval | regions | boxcls | fineshapes
    reader: Callable[[str | os.PathLike[str], int | None], Any]
    text_path: str  # the text path used: short, long, or "long captions, short regions"
    layout: str  # the expected local layout, for help texts


TASKS: dict[str, EvalTask] = {
    "flickr30k": EvalTask(
        "flickr30k",
        "Flickr30K 1K test: text<->image R@1/5/10",
        "retrieval",
        lambda p, n: ds.read_karpathy(p, "flickr30k", "test", n),
        SHORT,
        "DIR/dataset_flickr30k.json (Karpathy) + DIR/flickr30k-images/*.jpg",
    ),
    "coco": EvalTask(
        "coco",
        "MSCOCO 5K: text<->image R@1/5/10",
        "retrieval",
        ds.read_coco_retrieval,
        SHORT,
        "DIR/annotations/captions_val2017.json + DIR/val2017/ (or DIR/dataset_coco.json, Karpathy 5K test)",
    ),
    "dci": EvalTask(
        "dci",
        "DCI long-caption retrieval: text<->image R@1",
        "retrieval",
        ds.read_dci,
        LONG,
        "DIR/annotations/*.json + DIR/photos/",
    ),
    "sharegpt4v": EvalTask(
        "sharegpt4v",
        "ShareGPT4V-1k long-caption retrieval: text<->image R@1",
        "retrieval",
        ds.read_sharegpt4v,
        LONG,
        f"DIR/{ds.SHAREGPT4V_FILE} + its images under DIR",
    ),
    "urban1k": EvalTask(
        "urban1k",
        "Urban-1K long-caption retrieval: text<->image R@1",
        "retrieval",
        ds.read_urban1k,
        LONG,
        "DIR/image/*.jpg + DIR/caption/*.txt",
    ),
    "fgovd": EvalTask(
        "fgovd",
        "FG-OVD: region vs positive and hard-negative expressions (accuracy)",
        "regions",
        ds.read_fgovd,
        SHORT,
        "FILE.jsonl or DIR/*.jsonl (FG-OVD benchmark files) + COCO val2017 images under DIR, DIR/coco or DIR/..",
    ),
    "coco-boxcls": EvalTask(
        "coco-boxcls",
        "COCO box classification: region vs class-name prompts (top-1/top-5 accuracy)",
        "boxcls",
        ds.read_coco_boxes,
        SHORT,
        "DIR/annotations/instances_val2017.json + DIR/val2017/",
    ),
    "fineshapes": EvalTask(
        "fineshapes",
        "FineShapes held-out: R@1/5/10, hard-negative and region->text accuracy",
        "fineshapes",
        ds.read_fineshapes,
        "long captions, short region texts",
        "DIR/jsonfiles/heldout.json + DIR/images/ (made by `fgsearch make-data fineshapes DIR`)",
    ),
}


@dataclass(frozen=True)
class EvalResult:
    """Metrics (percent), the paper's numbers keyed like them, and what produced them."""

    task: str
    metrics: dict[str, float]
    paper: dict[str, tuple[PaperNumber, ...]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, str]]:
        """Table rows ``(metric, ours, paper)``, values formatted to two decimals; paper ``""`` if none."""
        out = []
        for name, value in self.metrics.items():
            ref = " / ".join(str(p) for p in self.paper.get(name, ()))
            out.append((name, f"{value:.2f}", ref))
        return out

    def describe(self) -> list[tuple[str, str]]:
        """Readable ``(label, value)`` lines for the settings: model, data, sizes, text path, device, date."""
        s = self.settings
        m = s.get("model", {})
        model = f"{m.get('name', '?')} ({m.get('source', '?')}"
        model += f", fingerprint {m['fingerprint']})" if m.get("fingerprint") else ")"
        sizes = ", ".join(f"{k} {v}" for k, v in s.get("sizes", {}).items())
        lines = [
            ("model", model),
            ("data", f"{s.get('data', '?')} ({s.get('data_files', '')})"),
            ("sizes", sizes),
            ("text path", str(s.get("text_path", ""))),
            ("device", f"{s.get('device', '?')} ({s.get('precision', '?')}), batch size {s.get('batch_size', '?')}"),
            ("date", f"{s.get('date', '?')} ({s.get('seconds', '?')} s)"),
        ]
        if s.get("limit") is not None and s.get("limited", True):
            lines.append(("limit", f"first {s['limit']} only: not comparable with the paper's numbers"))
        elif s.get("limit") is not None:
            lines.append(("limit", f"{s['limit']} (the data has no more: nothing was left out)"))
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metrics": dict(self.metrics),
            "paper": {k: [{"value": p.value, "label": p.label} for p in v] for k, v in self.paper.items()},
            "settings": dict(self.settings),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)
