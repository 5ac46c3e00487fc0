"""Decode workers under pressure: Pillow's warnings go to the file they are about, never to the
terminal (issue 12.6), and a shared pixel budget keeps huge images from decoding together
(issue 11.17; bench/bench_index.py --huge measures the peak memory)."""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from _library_data import scene

from fgsearch.decode import PixelBudget
from fgsearch.library import Library
from fgsearch.regions import RegionSettings


def _ico_of_the_wrong_size(path: Path) -> Path:
    """An icon whose directory says 48x48 around a 64x64 image: decodes, with a UserWarning."""
    buf = io.BytesIO()
    scene(1, (64, 64)).save(buf, format="ICO", sizes=[(64, 64)])
    data = bytearray(buf.getvalue())
    data[6:8] = b"00"  # 48, 48
    path.write_bytes(bytes(data))
    return path


def _tiff_with_a_tag_past_its_end(path: Path) -> Path:
    """A TIFF whose ImageDescription points past the end of the file: a warning, then a failure."""
    buf = io.BytesIO()
    scene(2).save(buf, format="TIFF", description="a description longer than four bytes")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 270:
            struct.pack_into("<I", data, entry + 8, len(data) + 1000)
    path.write_bytes(bytes(data))
    return path


def test_pillow_warnings_go_to_their_file_not_the_terminal(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    scene(3).save(photos / "good.jpg")
    icon = _ico_of_the_wrong_size(photos / "icon.ico")
    broken = _tiff_with_a_tag_past_its_end(photos / "broken.tif")
    caplog.set_level(logging.INFO, logger="fgsearch.ingest")
    with (
        Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib,
        warnings.catch_warnings(record=True) as shown,
    ):
        warnings.simplefilter("always")
        rep = lib.index(photos, workers=2)
        reasons = dict(lib.failures())
    assert [str(w.message) for w in shown] == []  # nothing reached the terminal's warning printer
    assert (rep.indexed, rep.failed) == (2, 1)
    assert f"{icon}: UserWarning: Image was not the expected size" in caplog.messages
    assert reasons[str(broken)].endswith("; Pillow warned: UserWarning: Truncated File Read")


def test_the_progress_rate_counts_embedded_images(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        scene(i).save(photos / f"{i}.jpg")
    (photos / "bad.jpg").write_bytes(b"not an image")
    calls: list[tuple[str, int, int, int]] = []
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        lib.index(photos, batch_size=2, progress=lambda *a: calls.append(a))
    assert calls[0] == ("index", 0, 6, 0) and calls[-1] == ("index", 6, 6, 5)
    assert [c[3] for c in calls] == sorted(c[3] for c in calls)


def _peak_holders(budget: PixelBudget, sizes: list[int], holding: int) -> int:
    """One thread per size reserves it and holds it until ``holding`` threads hold at once and the
    others provably cannot fit in what is left; then all let go. The most holding at once.
    Event-driven (no timing window: a slow machine neither fails it nor lets it pass unchecked)."""
    cv = threading.Condition()
    state: dict[str, Any] = {"now": 0, "peak": 0, "in": []}
    release = threading.Event()

    def work(n: int) -> None:
        with budget.hold() as reserve:
            reserve(n)
            with cv:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
                state["in"].append(n)
                cv.notify_all()
            release.wait(30)
            with cv:
                state["now"] -= 1

    threads = [threading.Thread(target=work, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    try:
        with cv:
            assert cv.wait_for(lambda: state["now"] >= holding, timeout=30), f"{holding} never held at once"
            waiting = list(sizes)
            for n in state["in"]:
                waiting.remove(n)
            assert all(min(n, budget.total) > budget.free for n in waiting), "a waiting thread would fit"
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads), "the budget deadlocked"
    return state["peak"]


def test_the_pixel_budget_runs_huge_decodes_one_at_a_time() -> None:
    budget = PixelBudget(100)
    assert _peak_holders(budget, [100, 100, 100], 1) == 1  # three images at the limit: one at a time
    assert _peak_holders(budget, [30, 30, 30, 30], 3) == 3  # ordinary ones share it
    assert _peak_holders(budget, [500, 10], 1) == 1  # bigger than the budget: waits for all of it
    assert budget.free == budget.total


def test_index_decodes_within_the_budget(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four 400x300 images under a 0.12 MP limit with 4 workers: never two decoded at once."""
    import fgsearch.decode

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        scene(i, (400, 300)).save(photos / f"{i}.png")
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    real_open = fgsearch.decode.Image.open

    def slow_open(*a: object, **k: object) -> object:
        img = real_open(*a, **k)  # type: ignore[arg-type]
        real_load = img.load

        def load() -> object:
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.05)
            try:
                return real_load()
            finally:
                with lock:
                    state["now"] -= 1

        img.load = load  # type: ignore[method-assign]
        return img

    monkeypatch.setattr(fgsearch.decode.Image, "open", slow_open)
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        rep = lib.index(photos, workers=4, max_megapixels=0.12)
    assert rep.indexed == 4 and state["peak"] == 1


def test_big_decodes_hand_freed_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import fgsearch.decode

    trims: list[int] = []
    monkeypatch.setattr(fgsearch.decode, "_trim_malloc", lambda: trims.append(1))
    budget = PixelBudget(200_000_000)
    with budget.hold() as reserve:
        reserve(fgsearch.decode.TRIM_PIXELS)
    with budget.hold() as reserve:
        reserve(12_000_000)  # an ordinary photo: nothing to hand back
    assert trims == [1]
    fgsearch.decode._malloc_trim.cache_clear()
    monkeypatch.undo()
    fgsearch.decode._trim_malloc()  # the real call (glibc) or nothing: never an error
