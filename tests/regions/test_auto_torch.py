"""fgsearch.regions.auto_torch: the ``auto`` proposer in torch ops gives the numpy proposer's boxes
(bit for bit, ties and degenerate maps included), reads back only a few numbers from the device,
and feeds RoIAlign region vectors equal to the numpy path's. CPU tensors stand in for CUDA here;
``pytest -m gpu`` runs the same comparison on a CUDA GPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from fgsearch.regions import AutoProposer, RegionSettings, auto_boxes_batch
from fgsearch.regions.auto import _label as np_label
from fgsearch.regions.auto_torch import _label, _quantile, auto_boxes_torch


def _busy(rng: np.random.Generator, h: int, w: int, p: int = 16) -> np.ndarray:
    """Noise around a mean vector plus a few rectangles of a shared vector (objects)."""
    d = rng.normal(size=(h, w, p)).astype(np.float32) * rng.uniform(0.1, 1.0) + rng.normal(size=p)
    for _ in range(int(rng.integers(0, 4))):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        d[y0 : y0 + int(rng.integers(1, h + 1)), x0 : x0 + int(rng.integers(1, w + 1))] += rng.normal(size=p)
    return d.astype(np.float32)


def _blocky(rng: np.random.Generator, h: int, w: int, p: int = 8) -> np.ndarray:
    """Piecewise constant: a few small-integer vectors in 2x2 blocks, so similarities, saliencies,
    quantiles and segment scores tie exactly all over the map."""
    vecs = rng.integers(-2, 3, size=(int(rng.integers(1, 4)), p)).astype(np.float32)
    lab = rng.integers(0, len(vecs), size=((h + 1) // 2, (w + 1) // 2))
    return vecs[np.kron(lab, np.ones((2, 2), np.int64))[:h, :w]]


DEGENERATE = [
    np.zeros((5, 5, 8), np.float32),  # zero vectors
    np.ones((1, 2, 8), np.float32),  # two cells
    np.ones((1, 1, 8), np.float32),  # one cell
    np.ones((6, 1, 8), np.float32),  # one column
    np.tile(np.eye(2, dtype=np.float32)[None], (6, 3, 4))[:, :6, :],  # stripes
    np.indices((6, 6)).sum(0)[..., None].__mod__(2).repeat(8, -1).astype(np.float32) * 2 - 1,  # checkerboard
    np.concatenate([np.ones((4, 2, 8)), -np.ones((4, 2, 8))], axis=1).astype(np.float32),  # mirror halves
]


def _same(maps: list[np.ndarray], settings: RegionSettings) -> None:
    want = auto_boxes_batch(maps, settings)
    got = auto_boxes_torch([torch.from_numpy(m) for m in maps], settings)
    assert len(got) == len(want)
    for k, ((wb, ws), (gb, gs)) in enumerate(zip(want, got, strict=True)):
        assert gb.dtype == torch.float32 and gs.dtype == torch.float32
        np.testing.assert_array_equal(gb.numpy(), wb, err_msg=f"map {k} {maps[k].shape}")
        np.testing.assert_array_equal(gs.numpy(), ws, err_msg=f"map {k} {maps[k].shape}")


@pytest.mark.parametrize("shape", [(14, 14), (7, 9), (1, 5), (2, 3), (16, 12), (5, 1)])
def test_torch_proposer_gives_the_numpy_boxes(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for trial in range(3):
        settings = RegionSettings(
            max_regions=int(rng.integers(1, 24)),
            min_cells=int(rng.integers(1, 4)),
            iou_threshold=float(rng.uniform(0.3, 0.8)),
            thresholds=tuple(sorted(rng.uniform(0.2, 0.95, int(rng.integers(1, 4))).tolist())),
        )
        make = _busy if trial % 2 == 0 else _blocky
        _same([make(rng, *shape) for _ in range(3)], settings)


def test_torch_proposer_on_degenerate_maps_and_mixed_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Zero, constant, one-cell, striped, checkered and mirrored maps, in one call with maps of
    other shapes (grouped by shape, results back in order); refined one image at a time (the
    memory bound); no regions wanted; no maps."""
    import fgsearch.regions.auto_torch

    rng = np.random.default_rng(5)
    maps = [*DEGENERATE, _busy(rng, 6, 6), _blocky(rng, 5, 5), _busy(rng, 6, 6)]
    _same(maps, RegionSettings())
    monkeypatch.setattr(fgsearch.regions.auto_torch, "REFINE_VALUES", 1)
    _same(maps, RegionSettings())
    _same(maps, RegionSettings(max_regions=3, thresholds=(0.5,)))
    _same(maps, RegionSettings(thresholds=()))
    assert all(
        len(b) == 0 for b, _ in auto_boxes_torch([torch.from_numpy(m) for m in maps], RegionSettings(max_regions=0))
    )
    assert auto_boxes_torch([], RegionSettings()) == []


def test_quantile_is_numpys_bit_for_bit() -> None:
    rng = np.random.default_rng(2)
    for n in (1, 2, 7, 196, 364):
        x = rng.normal(size=(3, n)).astype(np.float32).astype(np.float64)
        ties = np.round(x * 2) / 2  # many equal values
        for arr in (x, ties):
            for q in (0.0, 0.05, 0.15, 0.3, 0.5, 0.5 + 1e-9, 0.85, 1.0):
                np.testing.assert_array_equal(_quantile(torch.from_numpy(arr), q).numpy(), np.quantile(arr, q, axis=1))


def test_component_labels_match_the_numpy_labels() -> None:
    rng = np.random.default_rng(3)
    h, w = 9, 8
    right, down = np.ones((h, w - 1), bool), np.zeros((h - 1, w), bool)
    for y in range(h - 1):  # a one-cell-wide snake: the slowest case for label spreading
        down[y, w - 1 if y % 2 == 0 else 0] = True
    r2, d2 = np.zeros((h, w - 1), bool), np.ones((h - 1, w), bool)
    for x in range(w - 1):  # the same along the columns
        r2[h - 1 if x % 2 == 0 else 0, x] = True
    masks = [(right, down), (r2, d2)]
    for p in (0.2, 0.5, 0.6, 0.8, 1):
        masks += [(rng.random((h, w - 1)) < p, rng.random((h - 1, w)) < p) for _ in range(4)]
    r, d = np.stack([m[0] for m in masks]), np.stack([m[1] for m in masks])
    np.testing.assert_array_equal(_label(torch.from_numpy(r), torch.from_numpy(d)).numpy(), np_label(r, d))


@contextmanager
def _reads_back() -> Iterator[dict[str, int]]:
    """Count what leaves the tensors for the host (each a host sync on a GPU); fail on numpy()."""
    counts = {"equal": 0, "scalar": 0, "tolist": 0}
    real = {"equal": torch.equal, "item": torch.Tensor.item, "int": torch.Tensor.__int__, "tolist": torch.Tensor.tolist}

    def equal(*a: Any) -> bool:
        counts["equal"] += 1
        return bool(real["equal"](*a))

    def scalar(name: str) -> Any:
        def f(self: torch.Tensor) -> Any:
            counts["scalar"] += 1
            return real[name](self)

        return f

    def tolist(self: torch.Tensor) -> Any:
        counts["tolist"] += 1
        return real["tolist"](self)

    def no_numpy(self: torch.Tensor, *a: Any, **k: Any) -> Any:
        raise AssertionError("the device proposer copied a tensor to numpy")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "equal", equal)
        mp.setattr(torch.Tensor, "item", scalar("item"))
        mp.setattr(torch.Tensor, "__int__", scalar("int"))
        mp.setattr(torch.Tensor, "tolist", tolist)
        mp.setattr(torch.Tensor, "numpy", no_numpy)
        yield counts


def test_the_device_proposer_reads_back_only_shapes_and_counts() -> None:
    """Per group of same-shape maps: the labelling's convergence tests, one padded width and the
    kept counts (the result); never a map or a matrix."""
    rng = np.random.default_rng(9)
    maps = [torch.from_numpy(_busy(rng, 14, 14)) for _ in range(6)]
    with _reads_back() as counts:
        auto_boxes_torch(maps, RegionSettings())
    assert counts["scalar"] == 1 and counts["tolist"] == 1, counts
    assert 2 <= counts["equal"] <= 8, counts  # two labellings, a few steps each


def test_region_vectors_on_the_device_equal_the_numpy_paths(tiny_model_dir: Any) -> None:
    """The encoder's device path (maps stay tensors, proposals in torch, RoIAlign on those boxes)
    stores the boxes and region vectors of the numpy path."""
    from fgsearch.model import load_encoder

    enc = load_encoder(str(tiny_model_dir), device="cpu")
    pixels = torch.randn(5, 3, *enc.transform.image_size, generator=torch.Generator().manual_seed(0))
    proposer = AutoProposer(RegionSettings(min_cells=1))
    want, want_boxes = enc.encode_proposed(pixels, proposer.after)
    seen: list[Any] = []

    def on_device(maps: list[Any]) -> list[Any]:
        seen.extend(maps)
        return proposer.after_tensors(maps)

    got, got_boxes = enc.encode_proposed_on_device(pixels, on_device)
    assert seen and all(isinstance(m, torch.Tensor) for m in seen)
    assert sum(len(b) for b in want_boxes) > 5
    np.testing.assert_allclose(got.image, want.image, atol=1e-6)
    for wb, gb, wr, gr in zip(want_boxes, got_boxes, want.regions, got.regions, strict=True):
        np.testing.assert_array_equal(gb, wb)
        np.testing.assert_allclose(gr, wr, atol=1e-6)


@pytest.mark.gpu
def test_torch_proposer_on_cuda_gives_the_numpy_boxes() -> None:
    if not torch.cuda.is_available():
        pytest.fail("selected with -m gpu, but torch sees no CUDA GPU")
    rng = np.random.default_rng(1)
    for shape in ((14, 14), (24, 24), (7, 9)):
        maps = [(_busy if k % 2 else _blocky)(rng, *shape, 64) for k in range(16)]
        want = auto_boxes_batch(maps, RegionSettings())
        got = auto_boxes_torch([torch.from_numpy(m).cuda() for m in maps], RegionSettings())
        for (wb, ws), (gb, gs) in zip(want, got, strict=True):
            assert gb.device.type == "cuda"
            np.testing.assert_array_equal(gb.cpu().numpy(), wb)
            np.testing.assert_allclose(gs.cpu().numpy(), ws, atol=1e-6)
