"""Indexing and search end to end with a tiny random model: incremental, safe, and queryable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _library_data import make_folder, scene
from typer.testing import CliRunner

from fgsearch.boxes import Box
from fgsearch.errors import ImageError, InputError, LibraryError, LibraryLockedError
from fgsearch.library import Library
from fgsearch.regions import RegionSettings
from fgsearch.search import Filters


@pytest.fixture()
def photos(tmp_path: Path) -> dict[str, list[Path]]:
    return make_folder(tmp_path / "photos")


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest) -> str | None:
    """The catalog of a test's library: the SQLite file in its folder, or a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def _open(tmp_path: Path, model: Path, **kw: object) -> Library:
    return Library.open(tmp_path / "lib", model=str(model), **kw)  # type: ignore[arg-type]


def test_index_reports_every_file_and_reruns_do_nothing(
    tmp_path: Path, tiny_model_dir: Path, photos, catalog: str | None
) -> None:
    n_good, n_bad = len(photos["good"]), len(photos["bad"])
    grid = RegionSettings(proposer="grid", max_regions=5)
    with _open(tmp_path, tiny_model_dir, regions=grid, catalog=catalog) as lib:
        rep = lib.index(tmp_path / "photos", batch_size=4)
        assert rep.indexed == n_good and rep.failed == n_bad and rep.reused == 0
        assert rep.regions == 5 * n_good
        assert lib.global_index.count() == n_good and lib.region_index.count() == 5 * n_good
        reasons = dict(lib.failures())
        assert set(reasons) == {str(p) for p in photos["bad"]}
        assert "megapixels" in reasons[str(tmp_path / "photos" / "bomb.png")]
        assert "too small" in reasons[str(tmp_path / "photos" / "tiny.png")]
        assert (
            "empty" in reasons[str(tmp_path / "photos" / "empty.jpg")].lower()
            or "zero" in reasons[str(tmp_path / "photos" / "empty.jpg")].lower()
        )
        assert all(".hidden" not in p for p in reasons)
        generations = [i.stats().params["generation"] for i in (lib.global_index, lib.region_index)]
        again = lib.index(tmp_path / "photos", batch_size=4)
        assert again.indexed == 0 and again.reused == 0 and again.unchanged == n_good  # each file counted once:
        assert again.failed == n_bad and again.failed_unchanged == n_bad  # the bad ones as failed, not unchanged
        # nothing changed: no index writes a new snapshot (a rerun rewrote every vector before)
        assert [i.stats().params["generation"] for i in (lib.global_index, lib.region_index)] == generations
        assert lib.doctor()["consistent"]


def test_rename_duplicate_and_delete(tmp_path: Path, tiny_model_dir: Path, photos, catalog: str | None) -> None:
    root = tmp_path / "photos"
    grid = RegionSettings(proposer="grid", max_regions=3)
    with _open(tmp_path, tiny_model_dir, regions=grid, catalog=catalog) as lib:
        lib.index(root)
        n = lib.global_index.count()
        first, second = photos["good"][0], photos["good"][1]
        moved = root / "sub" / "renamed.jpg"
        first.rename(moved)
        shutil.copy(second, root / f"dup{second.suffix}")
        rep = lib.index(root)
        assert rep.indexed == 0 and rep.reused == 2 and rep.pruned == 1
        assert lib.global_index.count() == n  # no new vectors for a rename or a duplicate
        paths = {p for row in lib.catalog.contents_by_ids(lib.catalog.all_vector_ids()[0]) for p in row.paths}
        assert str(moved) in paths and str(first) not in paths and str(root / f"dup{second.suffix}") in paths
        second.unlink()
        (root / f"dup{second.suffix}").unlink()
        rep = lib.index(root)
        assert rep.pruned == 2
        assert lib.global_index.count() == n - 1 and lib.region_index.count() == 3 * (n - 1)
        assert lib.doctor()["consistent"]


def test_auto_regions_are_the_images_own_proposals(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Indexing proposes boxes for a whole batch at once; each image gets exactly what the proposer
    gives for its dense map alone, and its region vectors are those boxes pooled from that map."""
    import torch

    from fgsearch.decode import load_image
    from fgsearch.regions import auto_boxes

    folder = make_folder(tmp_path / "photos", n_good=7, bad=False)
    settings = RegionSettings(proposer="auto", max_regions=6)
    with _open(tmp_path, tiny_model_dir, regions=settings) as lib:
        rep = lib.index(tmp_path / "photos", batch_size=3)  # batches of 3, 3 and 1
        assert rep.indexed == 7 and rep.regions > 7
        enc = lib.encoder
        cat = lib.catalog
        content_ids = list(cat.all_vector_ids()[0])
        rows = {r.path: r.id for r in cat.contents_by_ids(content_ids)}
        stored = cat.regions_for_contents(content_ids)
        for path in folder["good"]:
            cid = rows[str(path)]
            image = load_image(path.read_bytes()).image
            pv = enc.preprocess([image])
            dense = enc.model.encode_dense(torch.from_numpy(pv)).float().numpy()[0]
            want, _ = auto_boxes(dense, settings)
            got = np.array([b.as_tuple() for _, b in stored[cid]], np.float32).reshape(-1, 4)
            np.testing.assert_allclose(got, want, atol=1e-6)
            pooled = enc.encode_images([image], boxes=[want]).regions[0]
            vectors = lib.region_index.get(np.array([rid for rid, _ in stored[cid]], np.int64))
            np.testing.assert_allclose(vectors, pooled, atol=1e-4)


def test_big_files_are_streamed_with_the_same_result(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files over READ_WHOLE_BYTES are hashed in chunks and decoded from the open file: same
    content hashes and vectors as reading them whole, and bad ones still fail with a reason."""
    import hashlib

    import fgsearch.ingest.prepare

    folder = make_folder(tmp_path / "photos", n_good=4, bad=False)
    (tmp_path / "photos" / "cut.png").write_bytes(folder["good"][1].read_bytes()[:-200])  # truncated
    results = []
    for limit in (fgsearch.ingest.prepare.READ_WHOLE_BYTES, 100):  # 100 bytes: every file is streamed
        monkeypatch.setattr(fgsearch.ingest.prepare, "READ_WHOLE_BYTES", limit)
        with Library.open(tmp_path / f"lib-{limit}", model=str(tiny_model_dir), regions=RegionSettings("none")) as lib:
            rep = lib.index(tmp_path / "photos")
            assert rep.indexed == 4 and rep.failed == 1, rep.failures
            assert "truncated" in dict(lib.failures())[str(tmp_path / "photos" / "cut.png")]
            hashes = lib.catalog.content_hashes()
            ids = np.array(sorted(lib.catalog.all_vector_ids()[0]), np.int64)
            results.append((hashes, lib.global_index.get(ids)))
    assert results[0][0] == results[1][0] == {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder["good"]}
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_query_by_region_returns_that_image_and_box(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=8, bad=False)
    with _open(tmp_path, tiny_model_dir, regions=RegionSettings(proposer="grid", max_regions=9)) as lib:
        lib.index(root)
        target = root / "sub" / "good_3.bmp"
        box = Box(0.0, 0.0, 0.5, 0.5)  # the first grid cell
        hits = lib.search(image=str(target), box=box, k=3)
        assert hits[0].path == str(target)
        assert hits[0].box is not None and hits[0].box.iou(box) > 0.99
        by_region = lib.search(image=str(target), box=box, k=2, by="region")
        assert by_region[0].path == str(target) and by_region[0].box.iou(box) > 0.99


def test_filters_negative_and_json(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=8, bad=False)
    with _open(tmp_path, tiny_model_dir, regions=RegionSettings(proposer="grid", max_regions=4)) as lib:
        lib.index(root)
        all_hits = lib.search("a red circle on a grey background", k=8)
        assert len(all_hits) == 8 and all_hits == sorted(all_hits, key=lambda h: -h.score)
        sub = lib.search("a red circle on a grey background", k=8, filters=Filters(path_glob="*/sub/*"))
        in_sub = [h for h in all_hits if "/sub/" in h.path]
        assert in_sub and len(sub) == len(in_sub) and all("/sub/" in h.path for h in sub)
        top = all_hits[0]
        # negative text equal to the query: each image loses w_negative * its fused score for that text
        neg = lib.search("a red circle on a grey background", negative="a red circle on a grey background", k=8)
        by_id = {h.image_id: h for h in all_hits}
        assert len(neg) == 8  # every image checked below
        for h in neg:
            assert h.score == pytest.approx(0.5 * by_id[h.image_id].score, abs=1e-5)
        floor = lib.search("a red circle on a grey background", k=8, filters=Filters(min_score=top.score - 1e-6))
        assert [h.path for h in floor] == [top.path]
        d = top.to_dict()
        assert set(d) == {
            "rank",
            "score",
            "global_score",
            "region_score",
            "path",
            "paths",
            "box",
            "region_id",
            "image_id",
            "width",
            "height",
            "captured_at",
            "probability",
            "region_probability",
        }
        with pytest.raises(InputError, match="empty query"):
            lib.search("   ")
        with pytest.raises(ImageError, match="does not exist"):
            lib.search(image=str(tmp_path / "missing.jpg"))
        (tmp_path / "broken.jpg").write_bytes(b"not an image")
        with pytest.raises(ImageError, match="cannot read query image"):
            lib.search(image=str(tmp_path / "broken.jpg"))


def test_errors_lock_model_mismatch_and_empty(tmp_path: Path, tiny_model_dir: Path) -> None:
    with _open(tmp_path, tiny_model_dir):
        with pytest.raises(LibraryLockedError, match=f"PID {os.getpid()}"):
            _open(tmp_path, tiny_model_dir)
        with Library.open(tmp_path / "lib", read_only=True) as reader, pytest.raises(LibraryError, match="empty"):
            reader.search("anything")
    from fgsearch.model import FGCLIP, FGCLIPConfig, save_model

    other = save_model(FGCLIP(FGCLIPConfig.tiny(width=32)), tmp_path / "other-model")
    with pytest.raises(LibraryError, match="--reindex"):
        _open(tmp_path, other)
    with _open(tmp_path, other, reindex=True) as lib:
        assert lib.encoder.dim == 16
    with pytest.raises(LibraryError, match="no library"):
        Library.open(tmp_path / "nowhere", read_only=True)
    (tmp_path / "a-file").write_text("not a folder")
    for ro in (True, False):
        with pytest.raises(LibraryError, match="is a file, not a library folder"):
            Library.open(tmp_path / "a-file", model=str(tiny_model_dir), read_only=ro)
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_a_model_that_fails_to_load_leaves_no_library_behind(tmp_path: Path, tiny_model_dir: Path) -> None:
    from fgsearch.catalog import Catalog
    from fgsearch.errors import FgsearchError

    with pytest.raises(FgsearchError, match="unknown model"):
        Library.open(tmp_path / "new-lib", model="no-such-model")
    assert not (tmp_path / "new-lib").exists()  # nothing half-made
    (tmp_path / "mine").mkdir()  # a folder the user made keeps existing, empty of catalogs
    with pytest.raises(FgsearchError, match="unknown model"):
        Library.open(tmp_path / "mine", model="no-such-model")
    assert not (tmp_path / "mine" / "catalog.sqlite").exists()
    # a catalog that an older run created without ever recording a model is started over
    Catalog.open(tmp_path / "mine" / "catalog.sqlite", create=True).close()
    with Library.open(tmp_path / "mine", model=str(tiny_model_dir)) as lib:
        assert lib.catalog.get_meta()["dim"] == lib.encoder.dim
    # but never one with images in it, or a file that is not our catalog
    (tmp_path / "alien").mkdir()
    import sqlite3

    con = sqlite3.connect(tmp_path / "alien" / "catalog.sqlite")
    con.execute("CREATE TABLE notes (x TEXT)")
    con.execute("INSERT INTO notes VALUES ('keep me')")
    con.commit()
    con.close()
    with pytest.raises(FgsearchError, match="not an fgsearch catalog"):
        Library.open(tmp_path / "alien", model=str(tiny_model_dir))
    con = sqlite3.connect(tmp_path / "alien" / "catalog.sqlite")
    assert con.execute("SELECT x FROM notes").fetchall() == [("keep me",)]
    con.close()


KILL_SCRIPT = """
import sys
from fgsearch.library import Library
from fgsearch.regions import RegionSettings
lib = Library.open(sys.argv[1], model=sys.argv[2], regions=RegionSettings(proposer="grid", max_regions=4))
lib.index(sys.argv[3], batch_size=2, workers=1)
"""


@pytest.mark.slow
def test_kill9_midway_then_rerun_is_consistent(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(120):
        scene(i).save(root / f"p{i:03d}.png")
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    lib_dir = tmp_path / "lib"
    proc = subprocess.Popen([sys.executable, str(script), str(lib_dir), str(tiny_model_dir), str(root)])
    deadline = time.time() + 120
    done_at_kill = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            con = sqlite3.connect(f"file:{lib_dir / 'catalog.sqlite'}?mode=ro", uri=True, timeout=1)
            done_at_kill = con.execute("SELECT count(*) FROM files WHERE status='ok'").fetchone()[0]
            con.close()
        except sqlite3.Error:
            pass
        if done_at_kill >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert 10 <= done_at_kill < 120
    with Library.open(lib_dir, model=str(tiny_model_dir)) as lib:
        rep = lib.index(root, batch_size=8)
        assert lib.doctor()["consistent"]
        counts = lib.catalog.counts()
        assert lib.global_index.count() == 120
        assert lib.region_index.count() == 4 * 120
        assert counts["files_ok"] == 120
        assert rep.indexed + rep.unchanged == 120


def test_cli_index_query_status(tmp_path: Path, tiny_model_dir: Path) -> None:
    from fgsearch.console.cli import app

    root = tmp_path / "photos"
    make_folder(root, n_good=5)
    lib = tmp_path / "lib"
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "index",
            str(root),
            "--library",
            str(lib),
            "--model",
            str(tiny_model_dir),
            "--regions",
            "grid",
            "--max-regions",
            "4",
            "--json",
        ],
    )
    assert r.exit_code == 3, r.output  # some files failed: exit status 3 (docs/indexing.md)
    summary = json.loads(r.stdout)
    assert summary["indexed"] == 5 and summary["failed"] == 5 and summary["outcome"] == "partial"
    scene(42).save(root / "scan.raw", format="PNG")  # an extension nobody walks unless asked
    base = ["index", str(root), "--library", str(lib), "--json"]
    r = runner.invoke(app, base)
    assert r.exit_code == 0 and json.loads(r.stdout)["indexed"] == 0, r.output
    r = runner.invoke(app, [*base, "--ext", "raw"])
    assert r.exit_code == 0 and json.loads(r.stdout)["indexed"] == 1, r.output
    r = runner.invoke(app, [*base, "--ext", "raw"])
    assert r.exit_code == 0 and json.loads(r.stdout)["unchanged"] == 6, r.output  # the 5 failed are not unchanged
    assert json.loads(r.stdout)["failed"] == 5 and json.loads(r.stdout)["failed_unchanged"] == 5
    import fgsearch.decode

    drafts: list[object] = []
    real_load = fgsearch.decode.load_image

    def spy(data: bytes, **kw: object) -> object:
        drafts.append(kw.get("draft"))
        return real_load(data, **kw)  # type: ignore[arg-type]

    big = tmp_path / "big"
    big.mkdir()
    scene(7, (1600, 1200)).save(big / "photo.jpg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fgsearch.decode, "load_image", spy)
        for lib_dir, extra in ((tmp_path / "lib-fast", ["--fast-decode"]), (tmp_path / "lib-full", [])):
            args = ["index", str(big), "--library", str(lib_dir), "--model", str(tiny_model_dir), "--json", *extra]
            args += ["--precision", "fp32"]  # no quality gate: its sample decoding is not the index's
            r = runner.invoke(app, args)
            assert r.exit_code == 0 and json.loads(r.stdout)["indexed"] == 1, r.output
    assert drafts == [(64, 64), None]  # the model's input size: JPEGs decode at a reduced scale
    with Library.open(tmp_path / "lib-fast", read_only=True) as fast:
        assert fast.catalog.contents_by_ids([1])[0].width == 1600  # the file's real size is recorded
    r = runner.invoke(app, [*base, "--ext", "."])
    assert r.exit_code != 0 and "--ext" in r.output
    r = runner.invoke(app, base)  # scan.raw is no longer selected but still on disk: kept
    assert r.exit_code == 0 and json.loads(r.stdout)["pruned"] == 0, r.output
    r = runner.invoke(app, [*base, "--prune-unselected"])
    assert r.exit_code == 0 and json.loads(r.stdout)["pruned"] == 1, r.output
    r = runner.invoke(
        app,
        [
            "query",
            "a blue square",
            "--library",
            str(lib),
            "--json",
            "-k",
            "3",
            "--show",
            str(tmp_path / "s.png"),
            "--html",
            str(tmp_path / "s.html"),
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert len(out["results"]) == 3 and out["query"]["text_path"] == "short"
    assert (tmp_path / "s.png").exists() and (tmp_path / "s.html").read_text().count('class="box"') == 3
    r = runner.invoke(app, ["query", "a blue square", "--library", str(lib), "--paths", "-k", "2"])
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 2
    r = runner.invoke(app, ["status", "--library", str(lib), "--failed"])
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 5
    r = runner.invoke(app, ["query", "", "--library", str(lib)])
    assert r.exit_code == 1 and "empty query" in r.output
    r = runner.invoke(app, ["query", "x", "--library", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no library" in r.output
    r = runner.invoke(app, ["doctor", "--library", str(lib)])
    assert r.exit_code == 0 and "agree" in r.stdout


def test_reader_works_while_writer_holds_the_library(tmp_path: Path, tiny_model_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "photos"
    make_folder(root, n_good=6, bad=False)
    with _open(tmp_path, tiny_model_dir, regions=RegionSettings(proposer="grid", max_regions=4)) as writer:
        writer.index(root)
        with Library.open(tmp_path / "lib", read_only=True) as reader:
            first = reader.search("a green square", k=3)
            with ThreadPoolExecutor(4) as pool:  # searches from several threads agree
                results = list(pool.map(lambda _: reader.search("a green square", k=3), range(8)))
            assert all([h.path for h in r] == [h.path for h in first] for r in results)
            make_folder(root / "more", n_good=2, bad=False, seed=9)
            writer.index(root)  # the writer goes on while the reader is open
            assert len(reader.search("a green square", k=3)) == 3


def test_status_needs_no_model_and_a_bad_reindex_keeps_the_library(tmp_path: Path, tiny_model_dir: Path) -> None:
    from fgsearch.errors import ModelNotFoundError

    model = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, model)
    root = tmp_path / "photos"
    make_folder(root, n_good=3, bad=False)
    with _open(tmp_path, model, regions=RegionSettings(proposer="none")) as lib:
        lib.index(root)
    with pytest.raises(ModelNotFoundError):
        _open(tmp_path, tmp_path / "no-such-model", reindex=True)
    shutil.rmtree(model)  # the library's model is gone: status still works, search says what is missing
    import fgsearch.library

    fgsearch.library.clear_shared_encoders()  # as in a new process
    with Library.open(tmp_path / "lib", read_only=True) as reader:
        assert reader.status()["counts"]["images"] == 3
        with pytest.raises(ModelNotFoundError, match="model-copy"):
            reader.search("anything")


def test_reindex_without_a_model_keeps_the_librarys_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=2, bad=False)
    lib_dir = tmp_path / "my#lib?100%"  # the catalog must be found under an odd folder name too
    with Library.open(lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        lib.index(root)
        before = lib.catalog.get_meta()
    with Library.open(lib_dir, reindex=True) as lib:
        after = lib.catalog.get_meta()
        assert lib.model == str(tiny_model_dir) and lib.catalog.counts()["images"] == 0
        assert (after["model_name"], after["model_ref"]) == (before["model_name"], before["model_ref"])
    with Library.open(lib_dir) as lib:  # and it opens again with that model
        assert lib.index(root).indexed == 2


def test_doctor_finds_and_repairs_disagreements(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=5, bad=False)
    with _open(tmp_path, tiny_model_dir, regions=RegionSettings(proposer="grid", max_regions=2)) as lib:
        lib.index(root)
        cids, _ = lib.catalog.all_vector_ids()
        lib.global_index.remove(np.asarray(cids[:2], np.int64))  # two images lose their vectors
        lib.region_index.add(np.asarray([10_000], np.int64), np.eye(lib.encoder.dim, dtype=np.float32)[:1])
        lib.global_index.flush()
        lib.region_index.flush()
        report = lib.doctor()
        assert not report["consistent"]
        assert report["global"]["missing_vectors"] == 2 and report["regions"]["orphan_vectors"] == 1
        assert lib.doctor(repair=True)["repaired"]
        assert lib.doctor()["consistent"]
        rep = lib.index(root)  # the repaired images are embedded again
        assert rep.indexed == 2
        assert lib.doctor()["consistent"] and lib.global_index.count() == 5


def test_a_lost_vector_index_is_named_and_the_next_index_run_rebuilds_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=5, bad=False)
    with _open(tmp_path, tiny_model_dir, regions=RegionSettings(proposer="grid", max_regions=2)) as lib:
        lib.index(root)
    shutil.rmtree(tmp_path / "lib" / "index" / "regions")  # e.g. a partial restore from a backup
    with pytest.raises(LibraryError, match="lost its regions vector index; run `fgsearch index`"):
        Library.open(tmp_path / "lib", read_only=True)
    with _open(tmp_path, tiny_model_dir) as lib:
        rep = lib.index(root)  # sees the disagreement, repairs, embeds the five images again
        assert rep.indexed == 5 and rep.regions == 10
        report = lib.doctor()
        assert report["consistent"] and report["global"]["index"] == 5 and report["regions"]["index"] == 10
    with Library.open(tmp_path / "lib", read_only=True) as reader:
        assert len(reader.search("a blue square", k=5)) == 5


def test_doctor_repair_drops_the_global_vectors_of_images_it_re_embeds(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=4, bad=False)
    with _open(tmp_path, tiny_model_dir, regions=RegionSettings(proposer="grid", max_regions=2)) as lib:
        lib.index(root)
        _, rids = lib.catalog.all_vector_ids()
        lib.region_index.remove(np.asarray(rids[:1], np.int64))  # one image loses one region vector
        lib.region_index.flush()
        assert lib.doctor(repair=True)["repaired"]
        after = lib.doctor()
        assert after["consistent"] and after["global"]["index"] == 3 and after["regions"]["index"] == 6
        assert lib.index(root).indexed == 1 and lib.doctor()["consistent"]


def test_a_bad_sidecar_fails_before_a_library_is_made_and_a_good_one_is_stored_absolute(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fgsearch.console.cli import app
    from fgsearch.errors import DataError

    root = tmp_path / "photos"
    make_folder(root, n_good=2, bad=False)
    with pytest.raises(DataError, match="does not exist"):
        Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings("sidecar", sidecar="no.json"))
    assert not (tmp_path / "lib").exists()
    coco = {
        "images": [{"id": 1, "file_name": "good_0.jpg", "width": 160, "height": 120}],
        "annotations": [{"image_id": 1, "bbox": [10, 10, 50, 40]}],
    }
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    monkeypatch.chdir(tmp_path)
    args = ["index", str(root), "--library", str(tmp_path / "lib"), "--model", str(tiny_model_dir), "--json"]
    r = CliRunner().invoke(app, [*args, "--sidecar", "boxes.json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["regions"] == 1, r.output
    monkeypatch.chdir(root)  # elsewhere: the library still finds its sidecar
    r = CliRunner().invoke(app, [*args, "--sidecar", str(tmp_path / "boxes.json")])
    assert r.exit_code == 0, r.output
    with Library.open(tmp_path / "lib", read_only=True) as lib:
        assert lib.region_settings.sidecar == str(tmp_path / "boxes.json")


def test_automatic_batch_size() -> None:
    from fgsearch.ingest import IndexOptions

    assert IndexOptions().resolved_batch_size(False) == 32
    assert IndexOptions().resolved_batch_size(True) == 256
    assert IndexOptions(batch_size=5).resolved_batch_size(True) == 5
    with pytest.raises(InputError, match=r"^batch_size must be >= 1"):
        IndexOptions(batch_size=-1).resolved_batch_size(False)


def test_a_box_given_as_a_list_a_tuple_or_text_is_the_same_box(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A list ``[x1, y1, x2, y2]`` (what JSON gives) failed with AttributeError: 'list' object has
    no attribute 'as_tuple'."""
    root = tmp_path / "photos"
    make_folder(root, n_good=6, bad=False)
    target = str(root / "sub" / "good_3.bmp")
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="grid")) as lib:
        lib.index(root)
        want = [(h.image_id, h.box) for h in lib.search(image=target, box=Box(0.0, 0.0, 0.5, 0.5), k=3)]
        for box in ([0, 0, 0.5, 0.5], (0.0, 0.0, 0.5, 0.5), "0,0,0.5,0.5"):
            assert [(h.image_id, h.box) for h in lib.search(image=target, box=box, k=3)] == want
        for bad in ([0, 0, 0.5], "a,b,c,d", 3, [0.5, 0.5, 0.1, 0.1]):
            with pytest.raises(InputError, match="box"):
                lib.search(image=target, box=bad, k=3)
