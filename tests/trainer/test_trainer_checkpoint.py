"""fgsearch.trainer.checkpoint: exact RNG resume, the latest complete checkpoint, safe loading."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fgsearch.errors import DataError
from fgsearch.trainer.checkpoint import latest_checkpoint, load_state, rng_state, set_rng_state


def _draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    torch.save({"rng": rng_state()}, tmp_path / "state.pt")
    first = _draw()
    set_rng_state(load_state(tmp_path / "state.pt")["rng"])
    assert _draw() == first


def test_latest_checkpoint_skips_unfinished_ones(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for name in ("step-0000010", "step-0000020", "step-0000030.tmp"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000010" / "state.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-0000010"


class _Code:
    pass


def test_load_state_refuses_objects_and_names_the_fix(tmp_path: Path) -> None:
    torch.save({"x": _Code()}, tmp_path / "state.pt")
    with pytest.raises(DataError, match=r"refusing to resume .* --no-resume"):
        load_state(tmp_path / "state.pt")
    torch.save({"x": torch.zeros(4)}, tmp_path / "state.pt")
    whole = (tmp_path / "state.pt").read_bytes()
    (tmp_path / "state.pt").write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    with pytest.raises(DataError, match="unreadable"):
        load_state(tmp_path / "state.pt")
