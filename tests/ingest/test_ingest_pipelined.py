"""fgsearch.ingest.pipeline: stage, embed and commit threads keep the serial run's results and
order, measure the commit stall, and stop cleanly (batches before an error committed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from _library_data import scene

from fgsearch.errors import InputError
from fgsearch.ingest import IndexOptions
from fgsearch.ingest.embed import Embedded
from fgsearch.ingest.pipeline import PipelinedBatcher, resolve_pipeline
from fgsearch.ingest.prepare import Prepared
from fgsearch.model.protocol import EncodedImages


class _Encoder:
    """A numpy toy: image i's vector is its pixel value; one embed thread at a time."""

    transform = SimpleNamespace(image_size=(1, 1), collate=lambda items: np.asarray(items, np.float32))
    device_name = "cpu"
    family_name = "toy"

    def __init__(self, fail_on: float | None = None) -> None:
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def encode_pixels(self, pixels: Any, boxes: Any) -> EncodedImages:
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and self.fail_on in pixels:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return EncodedImages(image=np.asarray(pixels, np.float32).reshape(-1, 1), regions=[])


class _Committer:
    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.log: list[tuple[str, Any]] = []
        self.delay, self.fail_on = delay, fail_on
        self.threads: set[str] = set()
        self.store = SimpleNamespace(reuse=None)  # not a rebuild from recorded vectors

    def failure(self, prep: Prepared) -> None:
        self.log.append(("failed", prep.path))

    def store_batch(self, batch: list[Prepared], emb: Embedded) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail_on is not None and any(p.pixels == self.fail_on for p in batch):
            raise OSError(28, "No space left on device")
        self.log.append(("batch", [p.path for p in batch]))

    def link_copies(self, copies: list[Prepared]) -> None:
        self.log.append(("copies", [p.path for p in copies]))


_PROPOSER = SimpleNamespace(uses_dense=False, wants_regions=False, name="none")


def _item(i: int, sha: str | None = None, kind: str = "new") -> Prepared:
    return Prepared(kind, f"f{i}", 1, 0, sha256=sha or f"s{i}", pixels=float(i))


def _run(committer: _Committer, encoder: _Encoder, items: list[Prepared], depth: int = 2) -> PipelinedBatcher:
    b = PipelinedBatcher(encoder, _PROPOSER, committer, 2, set(), depth=depth)  # type: ignore[arg-type]
    try:
        for it in items:
            b.add(it)
        b.flush()
    finally:
        b.close()
    return b


def test_order_copies_and_failures_as_the_serial_batcher() -> None:
    from fgsearch.ingest.batcher import Batcher

    def items() -> list[Prepared]:
        return [_item(0), _item(1), _item(2, sha="s0"), _item(3), _item(4, kind="failed"), _item(5), _item(6, "s3")]

    serial = _Committer()
    b0 = Batcher(_Encoder(), _PROPOSER, serial, 2, set())  # type: ignore[arg-type]
    for it in items():
        b0.add(it)
    b0.flush()
    committer, encoder = _Committer(), _Encoder()
    b = _run(committer, encoder, items())
    assert committer.log == serial.log
    assert serial.log.index(("copies", ["f2"])) > serial.log.index(("batch", ["f0", "f1"]))
    assert encoder.threads == {"fgsearch-embed"} and committer.threads == {"fgsearch-commit"}
    assert {"collate", "forward", "storage"} <= set(b.times.seconds)


def test_a_slow_committer_is_measured_as_the_devices_wait() -> None:
    committer = _Committer(delay=0.05)
    b = _run(committer, _Encoder(), [_item(i) for i in range(12)], depth=1)
    assert b.times.seconds["storage"] >= 6 * 0.05
    assert b.times.seconds["commit_wait"] > 0.05  # the embed thread waited on the full queue


def test_a_commit_error_stops_the_run_after_committing_what_came_before() -> None:
    committer = _Committer(fail_on=2)
    with pytest.raises(OSError, match="No space left"):
        _run(committer, _Encoder(), [_item(i) for i in range(10)])
    assert committer.log[0] == ("batch", ["f0", "f1"])
    assert all(entry[0] != "batch" or "f2" not in entry[1] for entry in committer.log)
    assert ("batch", ["f8", "f9"]) not in committer.log  # nothing after the failed batch


def test_an_embed_error_stops_the_run_and_earlier_batches_are_committed() -> None:
    committer = _Committer()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        _run(committer, _Encoder(fail_on=4.0), [_item(i) for i in range(10)])
    assert ("batch", ["f0", "f1"]) in committer.log and ("batch", ["f2", "f3"]) in committer.log
    assert not any(e[0] == "batch" and "f4" in e[1] for e in committer.log)


def test_pipeline_choice() -> None:
    cpu = _Encoder()
    assert resolve_pipeline(IndexOptions(), cpu) == "serial"  # type: ignore[arg-type]
    assert resolve_pipeline(IndexOptions(pipeline="device"), cpu) == "device"  # type: ignore[arg-type]
    gpu = _Encoder()
    gpu.device_name = "cuda:0"
    assert resolve_pipeline(IndexOptions(), gpu) == "device"  # type: ignore[arg-type]
    naflex = _Encoder()
    naflex.transform = SimpleNamespace(image_size=None)
    with pytest.raises(InputError, match=r"--pipeline device: .*NaFlex.*--pipeline overlap"):
        resolve_pipeline(IndexOptions(pipeline="device"), naflex)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="--pipeline must be one of auto, serial, overlap, device"):
        IndexOptions(pipeline="gpu").check()


def test_overlap_run_stores_what_the_serial_run_stores(tmp_path: Path, tiny_model_dir: Path) -> None:
    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        scene(i).save(photos / f"p{i}.png")
    (photos / "copy.png").write_bytes((photos / "p1.png").read_bytes())
    (photos / "bad.png").write_bytes(b"not an image")
    got = {}
    for pipeline in ("serial", "overlap"):
        with Library.open(
            tmp_path / pipeline, model=str(tiny_model_dir), regions=RegionSettings(proposer="auto"), device="cpu"
        ) as lib:
            rep = lib.index(photos, batch_size=2, pipeline=pipeline)
            got[pipeline] = (rep.indexed, rep.reused, rep.failed, rep.regions)
            ids = sorted(lib.store.global_index.ids())
            got[pipeline + "-vectors"] = lib.store.global_index.get(np.asarray(ids, np.int64))
    assert got["serial"] == got["overlap"] == (5, 1, 1, got["serial"][3])
    np.testing.assert_allclose(got["serial-vectors"], got["overlap-vectors"], atol=1e-5)
