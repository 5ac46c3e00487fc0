"""Which encoder a library runs: fp32 PyTorch, or a fast path that passed the quality gate.

A user asks for a runtime (``torch``, ``openvino``) and a precision (``auto``, ``fp32``, ``bf16``,
``int8``). Every path other than fp32 PyTorch on the CPU is a *fast path*: before it embeds
anything it is measured against fp32 PyTorch on a sample of the library's own images and the
calibration captions (:mod:`fgsearch.model.gate`). Passed: it is used. Refused: fp32 PyTorch is
used and the refusal is one line in the report (never silent). The verdict is recorded in the
catalog (``gate``), keyed by path, model weights and CPU, so the gate runs once per library, model,
path and machine; readers use the writer's verdict (or measure for themselves when none is there).

``auto`` means: PyTorch bf16 on a CPU with native bf16 (``fgsearch.model.cpu``), fp32 elsewhere;
with ``--runtime openvino``, int8, then OpenVINO bf16 (native bf16 only), then OpenVINO fp32. On
a GPU the torch runtime's own bf16 autocast runs, not gated here.

Mixed libraries: vectors of one library may come from different paths (an fp32 run, then a bf16
run), since every path used passed the gate against fp32 on this library's images, i.e. its
vectors agree with fp32 within the gate's bounds (cosine >= 0.995, top-10 overlap >= 0.95). The
catalog lists the paths that made its vectors (``precisions``); ``fgsearch status`` shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fgsearch.errors import InputError

if TYPE_CHECKING:
    from PIL import Image

    from fgsearch.model import Encoder
    from fgsearch.model.gate import GateReport

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
CALIBRATION_IMAGES = 300  # int8: images the static quantisation is calibrated on (fewer if the library has fewer)
GATE_CAPTION_STEP = 3  # the gate uses every third of the 150 calibration captions


@dataclass(frozen=True)
class FastPath:
    """What was asked: a runtime and a precision (``auto``: the fastest that passes the gate)."""

    runtime: str = "torch"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        from fgsearch.model import runtime_names

        if self.runtime not in runtime_names():
            raise InputError(f"--runtime must be one of {', '.join(runtime_names())}, got {self.runtime!r}")
        if self.runtime == "torch" and self.precision == "int8":
            raise InputError("--precision int8 needs --runtime openvino (static int8 calibrated on your images)")

    def candidates(self, device: str) -> list[tuple[str, str]]:
        """The (runtime, precision) fast paths to try in order; empty: plain PyTorch."""
        from fgsearch.model.cpu import native_bf16

        if self.runtime == "torch":
            if self.precision == "fp32" or _gpu(device):
                return []
            if self.precision == "bf16" and not native_bf16():
                raise InputError(
                    "--precision bf16: this CPU has no native bf16 instructions (AVX512_BF16 or AMX), so bf16 would "
                    "be emulated and slower than fp32; use --precision fp32 or auto"
                )
            return [("torch", "bf16")] if native_bf16() else []
        if self.precision == "auto":  # fastest first; bf16 only where the CPU runs it natively
            bf16 = [(self.runtime, "bf16")] if native_bf16() else []
            return [(self.runtime, "int8"), *bf16, (self.runtime, "fp32")]
        if self.precision == "bf16" and not native_bf16():
            raise InputError("--precision bf16: this CPU has no native bf16 instructions; use fp32 or int8")
        return [(self.runtime, self.precision)]


def _gpu(device: str) -> bool:
    if device.startswith("cuda") or device == "mps":
        return True
    if device != "auto":
        return False
    import torch

    return bool(torch.cuda.is_available())


def gate_key(runtime: str, precision: str, model_ref: str) -> str:
    """Where a verdict is recorded: the path, the model's weights and this CPU."""
    from fgsearch.model.cpu import cpu_summary

    return f"{runtime} {precision} | {model_ref} | {cpu_summary()}"


def gate_captions() -> list[str]:
    from fgsearch.library.settings import CALIBRATION_CAPTIONS

    return CALIBRATION_CAPTIONS[::GATE_CAPTION_STEP]


@dataclass
class Choice:
    """The encoder chosen, the path it is (``"torch bf16"``), gate reports measured now (to
    record), the one-line notes to show, and whether a gate is still owed (no images yet)."""

    encoder: Encoder
    label: str
    measured: dict[str, GateReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pending: bool = False


SampleFn = Callable[[int], "list[Image.Image]"]
LoadFn = Callable[[str, str], "Encoder"]  # (precision, runtime) -> encoder of the library's model


def choose_encoder(
    fast: FastPath, device: str, model_ref: str, recorded: Mapping[str, Any], sample: SampleFn, load: LoadFn
) -> Choice:
    """The first candidate of ``fast`` whose gate verdict (recorded, else measured on ``sample``)
    passes; else fp32 PyTorch with a note saying why."""
    from fgsearch.model.gate import GATE_IMAGES, GateReport, run_gate

    notes: list[str] = []
    measured: dict[str, GateReport] = {}
    for runtime, precision in fast.candidates(device):
        label = f"{runtime} {precision}"
        key = gate_key(runtime, precision, model_ref)
        rep = GateReport.from_dict(recorded[key]) if key in recorded else None
        if rep is None:
            images = sample(GATE_IMAGES)
            if not images:
                notes.append(f"{label} is not checked yet (no images to check it on): fp32 until images are indexed")
                return Choice(load("fp32", "torch"), "torch fp32", measured, notes, pending=True)
            if precision == "int8":
                from fgsearch.model.openvino import ensure_int8

                ensure_int8(load("fp32", "torch").spec.local_dir or "", lambda: sample(CALIBRATION_IMAGES))
            rep = run_gate(label, load(precision, runtime), load("fp32", "torch"), images, gate_captions())
            measured[key] = rep
            logger.info("quality gate %s", rep.line())
        if rep.passed:
            return Choice(load(precision, runtime), label, measured, notes)
        notes.append(f"fast path {rep.line()}; using fp32")
    return Choice(load("fp32", "torch"), "torch fp32", measured, notes)


def read_sample(paths: list[str], n: int, roots: list[str]) -> list[Image.Image]:
    """Up to ``n`` decodable images of ``paths`` (the library's), else the first under ``roots``."""
    from itertools import islice

    from fgsearch.decode import load_image, open_regular
    from fgsearch.scan import walk

    def candidates() -> Any:
        if paths:  # the library's own images
            yield from paths
            return
        from fgsearch.ingest.sources import is_url

        for entry in walk([r for r in roots if not is_url(r)]):  # object-store URLs: not sampled here
            yield entry.path

    out: list[Image.Image] = []
    for path in islice(candidates(), 4 * n):  # a few unreadable files never make the search long
        if len(out) >= n:
            break
        try:
            with open_regular(path) as fh:
                out.append(load_image(fh, draft=(448, 448)).image.convert("RGB"))
        except Exception as e:  # a bad file is skipped here; indexing reports it
            logger.debug("gate sample: skipping %s: %s", path, e)
    return out
