"""A library whose catalog is gone but whose vector files remain is rebuilt reusing its vectors
(issue 29 item 4): the file backends record each vector's content hash (and a region's box)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from _library_data import make_folder, scene
from typer.testing import CliRunner

from fgsearch.errors import LibraryError
from fgsearch.library import BackendSettings, Library
from fgsearch.model.encoder import TorchEncoder as Encoder
from fgsearch.regions import RegionSettings

QUERIES = ["a red circle on a grey background", "a blue square", "green stripes"]


def _snapshot(lib: Library, queries: list[str]) -> list[list[tuple[str, float, str]]]:
    out = []
    for q in queries:
        hits = lib.search(q, k=6)
        out.append([(h.path, float(h.score), repr(h.box)) for h in hits])
        region_hits = lib.search(q, k=6, by="region")
        out.append([(h.path, float(h.score), repr(h.box)) for h in region_hits])
    return out


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images passed through the model's forward pass (both ways a batch is encoded)."""
    seen: list[int] = []
    pixels_fn, proposed_fn = Encoder.encode_pixels, Encoder.encode_proposed

    def encode_pixels(self, pixels, *args, **kw):  # type: ignore[no-untyped-def]
        seen.append(len(pixels))
        return pixels_fn(self, pixels, *args, **kw)

    def encode_proposed(self, pixels, *args, **kw):  # type: ignore[no-untyped-def]
        seen.append(len(pixels))
        return proposed_fn(self, pixels, *args, **kw)

    monkeypatch.setattr(Encoder, "encode_pixels", encode_pixels)
    monkeypatch.setattr(Encoder, "encode_proposed", encode_proposed)
    return seen


def _pixels_count(seen: list[int]) -> int:
    return sum(seen)


@pytest.mark.parametrize(("backend", "loss"), [("exact", "deleted"), ("faiss", "deleted"), ("faiss", "header")])
def test_a_lost_catalog_is_rebuilt_from_the_vector_files_without_a_forward_pass(
    tmp_path: Path, tiny_model_dir: Path, counted: list[int], backend: str, loss: str
) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=6, bad=False)
    lib_dir = tmp_path / "lib"
    regions = RegionSettings(proposer="grid", max_regions=2)
    with Library.open(lib_dir, model=str(tiny_model_dir), regions=regions, backend=BackendSettings(backend)) as lib:
        lib.index(root)
        before = _snapshot(lib, QUERIES)
    assert _pixels_count(counted) == 6
    catalog = lib_dir / "catalog.sqlite"
    if loss == "deleted":
        catalog.unlink()
    else:  # unreadable beyond salvage: its header destroyed
        with open(catalog, "r+b") as f:
            f.write(b"\xff" * 100)
    counted.clear()
    with Library.open(lib_dir, reindex=True) as lib:  # model, backend, regions from rebuild.json
        report = lib.index(root)
        assert (report.indexed, report.vectors_reused) == (6, 6)
        assert _pixels_count(counted) == 0  # no forward pass for an unchanged image
        after = _snapshot(lib, QUERIES)
        assert lib.catalog.counts()["images"] == 6
    assert after == before
    with Library.open(lib_dir, read_only=True) as lib:
        assert lib.doctor()["consistent"]


def test_a_changed_file_is_embedded_again_and_the_cli_reports_the_counts(
    tmp_path: Path, tiny_model_dir: Path, counted: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fgsearch.console.cli import app

    # fp32 everywhere: on a bf16 CPU, --precision auto would first run the quality gate's forward
    # passes (docs/runtimes.md), which this test would count as embeddings
    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "")

    root = tmp_path / "photos"
    good = make_folder(root, n_good=6, bad=False)["good"]
    lib_dir = tmp_path / "lib"
    code = CliRunner().invoke(
        app, ["index", str(root), "--library", str(lib_dir), "--model", str(tiny_model_dir), "--regions", "grid", "-q"]
    )
    assert code.exit_code == 0, code.output
    (lib_dir / "catalog.sqlite").unlink()
    changed = good[0]
    scene(4242).save(changed, format=changed.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    doctor = CliRunner().invoke(app, ["doctor", "--library", str(lib_dir)])
    assert doctor.exit_code != 0 and "has lost its catalog (catalog.sqlite) but keeps its vector files" in doctor.output
    advice = doctor.output.split("`")[1]  # the printed command works when pasted
    assert advice == f"fgsearch index {root} --library {lib_dir} --model {tiny_model_dir} --reindex"
    counted.clear()
    r = CliRunner().invoke(app, shlex.split(advice)[1:])
    assert r.exit_code == 0, r.output
    assert "5 images reused their recorded vectors, 1 embedded" in r.output
    assert _pixels_count(counted) == 1  # only the changed file went through the model
    with Library.open(lib_dir, read_only=True) as lib:
        assert lib.catalog.counts()["images"] == 6
        hit = lib.search(image=str(changed), k=1)[0]
        assert Path(hit.path) == changed and hit.global_score == pytest.approx(1.0, abs=1e-4)


def test_a_rebuild_with_another_model_than_the_vector_files_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    from fgsearch.model import REGISTRY

    root = tmp_path / "photos"
    make_folder(root, n_good=2, bad=False)
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        lib.index(root)
    (lib_dir / "catalog.sqlite").unlink()
    rec = json.loads((lib_dir / "rebuild.json").read_text())
    rec["model"] = str(REGISTRY["demo"].local_dir)  # the record disagrees with the vector files
    (lib_dir / "rebuild.json").write_text(json.dumps(rec))
    with pytest.raises(LibraryError, match=r"^the vector files of .* were made with model .*; pass --model") as e:
        Library.open(lib_dir, reindex=True)
    assert "\n" not in str(e.value)
    assert (lib_dir / "index" / "global" / "manifest.json").is_file()  # nothing was removed


def test_a_format_1_snapshot_without_records_still_opens_and_is_rebuilt_by_embedding(
    tmp_path: Path, tiny_model_dir: Path, counted: list[int]
) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=3, bad=False)
    lib_dir = tmp_path / "lib"
    with Library.open(
        lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="grid", max_regions=2)
    ) as lib:
        lib.index(root)
        before = _snapshot(lib, QUERIES[:1])
    for name in ("global", "regions"):  # what the previous release wrote: format 1, no records
        folder = lib_dir / "index" / name
        m = json.loads((folder / "manifest.json").read_text())
        if m.get("records"):
            (folder / m["records"]).unlink()
            del m["checksums"][m["records"]]
        for key in ("records", "record_width", "record_meta"):
            m.pop(key, None)
        m["format"] = 1
        (folder / "manifest.json").write_text(json.dumps(m))
    with Library.open(lib_dir, read_only=True) as lib:
        assert _snapshot(lib, QUERIES[:1]) == before
        assert lib.doctor()["consistent"]
    (lib_dir / "catalog.sqlite").unlink()
    counted.clear()
    with Library.open(lib_dir, reindex=True) as lib:
        report = lib.index(root)
        assert (report.indexed, report.vectors_reused) == (3, 0)
    assert _pixels_count(counted) == 3


def test_the_snapshot_records_each_vectors_content_hash_and_box(tmp_path: Path, tiny_model_dir: Path) -> None:
    from fgsearch.indexes.api import open_index

    root = tmp_path / "photos"
    make_folder(root, n_good=2, bad=False)
    lib_dir = tmp_path / "lib"
    with Library.open(
        lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="grid", max_regions=2)
    ) as lib:
        lib.index(root)
        shas = set(lib.catalog.content_hashes())
    with open_index("faiss", lib_dir / "index" / "global", read_only=True) as g:
        _, recs, meta = g.records()
        assert recs.shape == (2, 36) and meta["model_ref"]
        assert {bytes(r[:32]).hex() for r in recs} == shas and len(shas) == 2
    with open_index("faiss", lib_dir / "index" / "regions", read_only=True) as r:
        _, recs, _ = r.records()
        assert recs.shape[1] == 52 and np.all(recs.any(axis=1))


@pytest.mark.parametrize("damaged", ["vectors", "records"])
def test_damaged_vector_files_are_not_reused(
    tmp_path: Path, tiny_model_dir: Path, counted: list[int], damaged: str
) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=3, bad=False)
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        lib.index(root)
    folder = lib_dir / "index" / "global"
    name = json.loads((folder / "manifest.json").read_text())[damaged]
    data = bytearray((folder / name).read_bytes())
    data[-8:] = bytes(b ^ 0x5A for b in data[-8:])  # the last row's bytes
    (folder / name).write_bytes(bytes(data))
    (lib_dir / "catalog.sqlite").unlink()
    counted.clear()
    with Library.open(lib_dir, reindex=True) as lib:
        report = lib.index(root)
    assert (report.indexed, report.vectors_reused) == (3, 0)  # one block of rows, or the records: none trusted
    assert _pixels_count(counted) == 3
