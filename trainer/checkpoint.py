"""Checkpoints of a training run: exact resume (weights, optimizer, schedule, data position and
every random generator) from files that load without running code.

A checkpoint is ``OUT/checkpoints/step-NNNNNNN/{state.pt,train_config.json}``, written to a
``.tmp`` folder and renamed into place, so that an interrupted save never leaves a half checkpoint
that the next run would resume from. ``state.pt`` holds tensors and plain values only and is read
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgsearch.errors import DataError

if TYPE_CHECKING:
    from fgsearch.trainer.loop import TrainConfig


def rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors and plain values (loadable with weights_only=True)."""
    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    npst = np.random.get_state(legacy=False)
    st: dict[str, Any] = {
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": {
            "key": torch.from_numpy(npst["state"]["key"].astype(np.int64)),
            "pos": int(npst["state"]["pos"]),
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, mt, gauss = st["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    n = st["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's resume state, loaded so that it cannot run code (tensors and plain values only)."""
    import pickle

    import torch

    fix = f"delete {path.parent} or run with --no-resume"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataError(
            f"refusing to resume from {path}: it holds objects other than tensors and plain values, "
            f"and loading them could run code; {fix}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise DataError(f"cannot resume from {path}: unreadable ({type(e).__name__}); {fix}") from e


def latest_checkpoint(out: Path) -> Path | None:
    ck = out / "checkpoints"
    if not ck.is_dir():
        return None
    steps = sorted(p for p in ck.iterdir() if p.name.startswith("step-") and (p / "state.pt").exists())
    return steps[-1] if steps else None


def save_checkpoint(
    out: Path, step: int, model: Any, opt: Any, sched: Any, position: tuple[int, int], cfg: TrainConfig
) -> Path:
    import torch

    final = out / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "position": list(position),
            "rng": rng_state(),
        },
        tmp / "state.pt",
    )
    (tmp / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
