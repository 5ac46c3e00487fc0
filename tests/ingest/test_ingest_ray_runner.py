"""Ray-distributed indexing (fgsearch.ingest.ray_runner) on a local 3-node cluster: the same
library as a local run, resume from the catalog, a node removed mid-run, a driver killed mid-run,
two drivers on one library, Ray missing.

One cluster for the module (a 0-CPU head and two 1-CPU workers; ~10 s to start), the demo model
and a few tens of generated images. The node-loss test is last: it leaves one worker node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _library_data import scene
from _ray import cluster_fixture, worker_nodes
from typer.testing import CliRunner

from fgsearch.errors import InputError, LibraryLockedError
from fgsearch.library import BackendSettings, Library

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    yield from cluster_fixture(workers=2, gpus=1)  # one logical GPU (no CUDA): where GPU workers go


def _photos(root: Path, n: int, big: tuple[int, ...] = (), side: int = 3000) -> list[Path]:
    """``n`` generated photos (names sort in plan order), a copy of photo 3, a broken file;
    photos whose index is in ``big`` are ``side`` x 3/4 ``side`` (slower to decode)."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"p{i:03d}.jpg"
        img = scene(i)
        (img.resize((side, side * 3 // 4)) if i in big else img).save(p, quality=90)
        out.append(p)
    (root / "z_copy.jpg").write_bytes(out[3].read_bytes())
    (root / "z_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return out


def _state(lib_dir: Path, photos: Path, prefix: str = "") -> dict[str, Any]:
    """What the library holds: each file of ``photos`` -> its content's hash (None: not indexed),
    failures, and the counts of catalog and indexes. ``prefix``: how paths are stored (a URL)."""
    with Library.open(lib_dir, read_only=True) as lib:
        cat = lib.catalog
        files = {}
        for name in sorted(os.listdir(photos)):
            cid = cat.content_of_path((prefix or str(photos)) + "/" + name)
            files[name] = None if cid is None else cat.content_sha256(cid)
        counts = cat.counts()
        return {
            "files": files,
            "failures": sorted(os.path.basename(p) for p, _ in cat.failures()),
            "counts": {k: counts[k] for k in ("files_ok", "files_failed", "images", "regions")},
            "pending": len(cat.pending_contents()[0]),
            "global": lib.global_index.count(),
            "region_vectors": lib.region_index.count(),
        }


def _every_image_once(state: dict[str, Any], n: int) -> None:
    """n distinct photos + a copy indexed, the broken file failed, each vector once."""
    c = state["counts"]
    assert c["images"] == state["global"] == n and state["pending"] == 0
    assert c["regions"] == state["region_vectors"]
    assert c["files_ok"] == n + 1 and c["files_failed"] == 1 and state["failures"] == ["z_broken.jpg"]
    assert sum(v is not None for v in state["files"].values()) == n + 1
    assert state["files"]["z_copy.jpg"] == state["files"]["p003.jpg"]


def _committed(lib_dir: Path) -> int:
    """Images committed so far, read from the SQLite catalog file itself (a millisecond)."""
    import sqlite3

    con = sqlite3.connect(f"file:{lib_dir / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM contents WHERE state = 'ok'").fetchone()[0])
    except sqlite3.Error:  # the writer's first transaction is not in yet
        return 0
    finally:
        con.close()


def _top10(lib_dir: Path) -> list[tuple[str, float]]:
    with Library.open(lib_dir, read_only=True) as lib:
        return [(os.path.basename(h.path), round(h.score, 4)) for h in lib.search("a red circle on the left", k=10)]


def _index_cli(args: list[str]) -> dict[str, Any]:
    from fgsearch.console.cli import app

    res = CliRunner().invoke(app, ["index", *args, "--model", "demo", "--json"])
    report = json.loads(res.stdout)
    assert res.exit_code == (3 if report["failed"] > report["failed_unchanged"] else 0), res.output  # 3: some failed
    return report


def test_ray_run_gives_the_local_library_and_resumes(cluster: Any, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _photos(photos, 14)
    local = _index_cli([str(photos), "--library", str(tmp_path / "local")])
    ray_args = ["--ray", cluster.address, "--workers", "2", "--batch-size", "4"]
    remote = _index_cli([str(photos), "--library", str(tmp_path / "ray"), *ray_args])
    for key in ("scanned", "indexed", "reused", "failed", "regions"):
        assert remote[key] == local[key], key
    assert (remote["indexed"], remote["reused"], remote["failed"]) == (14, 1, 1)
    a, b = _state(tmp_path / "local", photos), _state(tmp_path / "ray", photos)
    assert a == b  # same files, same contents, same failures
    _every_image_once(b, 14)
    assert _top10(tmp_path / "local") == _top10(tmp_path / "ray")

    # resume: a rerun embeds only what is missing (two new photos, one changed)
    scene(100).save(photos / "p100.jpg")
    scene(101).save(photos / "p101.jpg")
    scene(102).save(photos / "p005.jpg")
    again = _index_cli([str(photos), "--library", str(tmp_path / "ray"), "--ray", cluster.address])
    assert (again["indexed"], again["unchanged"], again["failed_unchanged"]) == (3, 14, 1)
    state = _state(tmp_path / "ray", photos)
    assert state["counts"]["images"] == state["global"] == 16  # the old p005 content is pruned


def test_object_store_urls_on_ray_workers(cluster: Any, tmp_path: Path) -> None:
    """file:// URLs are listed by the driver and read by the workers through fsspec, with the same
    decoder and failure records as a folder."""
    photos = tmp_path / "bucket" / "photos"
    _photos(photos, 6)
    url = "file://" + str(photos)
    out = _index_cli([url, "--library", str(tmp_path / "lib"), "--ray", cluster.address, "--batch-size", "3"])
    assert (out["indexed"], out["reused"], out["failed"]) == (6, 1, 1)
    _every_image_once(_state(tmp_path / "lib", photos, prefix=url), 6)
    with Library.open(tmp_path / "lib", read_only=True) as lib:
        assert lib.search("a red circle", k=1)[0].path.startswith(url + "/p")


def test_gpu_workers_are_scheduled_on_gpu_nodes(cluster: Any, tmp_path: Path) -> None:
    """--gpus-per-worker asks Ray for GPUs: more than the cluster has is refused before any work;
    on the node that declares a (logical) GPU the worker insists on CUDA instead of falling back."""
    from fgsearch.ingest.ray_runner import RayMapper, RayOptions

    photos = tmp_path / "photos"
    _photos(photos, 4)
    with Library.open(tmp_path / "lib", model="demo") as lib:
        with pytest.raises(InputError, match=r"--gpus-per-worker 2: the Ray cluster has 1\.0 GPU"):
            lib.index(str(photos), mapper=RayMapper(RayOptions(gpus_per_worker=2)))
        with pytest.raises(InputError, match=r"on a Ray worker: .*no CUDA device"):
            lib.index(str(photos), mapper=RayMapper(RayOptions(gpus_per_worker=1)))
    assert _committed(tmp_path / "lib") == 0


def test_driver_killed_then_next_run_completes_and_second_driver_is_refused(cluster: Any, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _photos(photos, 20, big=(1, 5, 9, 13, 17))  # big ones: the run lasts long enough to be caught midway
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model="demo"):
        pass
    cmd = [sys.executable, "-m", "fgsearch", "index", str(photos), "--library", str(lib_dir)]
    cmd += ["--ray", cluster.address, "--workers", "1", "--batch-size", "2", "--quiet"]  # 1 new worker process
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        committed = 0
        while committed < 4 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.02)
            committed = _committed(lib_dir)
        assert driver.poll() is None, driver.communicate()
        assert 4 <= committed < 20
        # a second driver on the same library is refused while the first holds it
        with pytest.raises(LibraryLockedError):
            Library.open(lib_dir, model="demo")
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    report = _index_cli([str(photos), "--library", str(lib_dir), "--ray", cluster.address])
    assert report["unchanged"] >= 4 and report["indexed"] + report["unchanged"] + report["reused"] == 21
    _every_image_once(_state(lib_dir, photos), 20)


def _store_kwargs(kind: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """How a library of each kind is created (``Library.open`` keywords)."""
    if kind == "sqlite+faiss":
        return {}
    url = request.getfixturevalue("postgres_url")  # a real PostgreSQL 18, a fresh database
    if kind == "postgres+pgvector":  # catalog rows and vectors in one PostgreSQL database
        return {"catalog": url, "backend": BackendSettings("pgvector", {"url": url, "table": "photos"})}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["sqlite+faiss", "postgres+pgvector"])
def test_node_removed_mid_run_then_query_and_serve_replicas_agree_with_a_local_exact_library(
    cluster: Any, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """Issue 26's "done when", on the library kinds that exist (a PostgreSQL catalog is opened by
    its description, library.json, everywhere after the run): the 3-node cluster (a head and two
    1-CPU workers) indexes with 2 workers; the node running the second chunk is removed while it
    works (tasks are spread over the nodes; chunk 1 is four 27 MP photos, still decoding when
    chunk 0 is committed) and Ray runs that chunk again on the other node: every image is in the
    library once; then ``fgsearch query`` and two ``fgsearch serve`` replicas (each its own
    service and store) return the top-10 of a local SQLite + exact library of the same photos.
    Runs last in the module: it leaves one worker node."""
    from _serve_data import make_client

    from fgsearch.console.cli import app
    from fgsearch.ingest.ray_runner import RayMapper, RayOptions

    if len(worker_nodes(cluster)) < 2:  # a parametrised run before this one removed a node
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    photos = tmp_path / "photos"
    _photos(photos, 16, big=tuple(range(4, 8)), side=6000)  # chunk 1: four 27 MP photos
    with Library.open(tmp_path / "ref", model="demo", backend="exact") as ref_lib:  # the same encoder path
        ref_lib.index(str(photos))
    mapper = RayMapper(RayOptions(address=cluster.address, workers=2, chunk=4))
    removed: list[str] = []

    def progress(stage: str, done: int, total: int, indexed: int) -> None:
        if done and not removed:
            victim = next(n for n in worker_nodes(cluster) if n.unique_id != mapper.chunk_nodes[0])
            removed.append(victim.unique_id)
            cluster.remove_node(victim, allow_graceful=False)

    with Library.open(tmp_path / "lib", model="demo", **_store_kwargs(kind, request)) as lib:
        report = lib.index(str(photos), mapper=mapper, progress=progress)
    assert removed and removed[0] not in mapper.chunk_nodes[1:]  # chunk 1 was run again elsewhere
    assert (report.indexed, report.reused, report.failed) == (16, 1, 1)
    lib_name = tmp_path / "lib" / "library.json" if kind.startswith("postgres") else tmp_path / "lib"
    state, ref = _state(lib_name, photos), _state(tmp_path / "ref", photos)
    _every_image_once(state, 16)
    assert state["files"] == ref["files"] and state["counts"] == ref["counts"]

    def queried(library: Path, text: str) -> list[tuple[str, float]]:
        # fp32 as the servers and the reference run (auto may pick bf16 on this CPU: another path)
        argv = ["query", text, "--library", str(library), "-k", "10", "--json", "--precision", "fp32"]
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 0, res.output
        return [(os.path.basename(h["path"]), round(h["score"], 4)) for h in json.loads(res.stdout)["results"]]

    def served(client: Any, text: str) -> list[tuple[str, float]]:
        body = client.post("/api/search", json={"text": text, "k": 10}).json()
        return [(os.path.basename(h["path"]), round(h["score"], 4)) for h in body["results"]]

    (one, s1), (two, s2) = make_client(lib_name), make_client(lib_name)
    try:
        for text in ("a red circle on the left", "a large blue square", "two green shapes"):
            expected = queried(tmp_path / "ref", text)
            assert len(expected) == 10
            assert queried(lib_name, text) == expected, text
            assert served(one, text) == expected and served(two, text) == expected, text
    finally:
        s1.close()
        s2.close()


def test_ray_missing_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fgsearch.console.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    photos = tmp_path / "photos"
    _photos(photos, 4)
    res = CliRunner().invoke(app, ["index", str(photos), "--library", str(tmp_path / "lib"), "--ray", "auto"])
    assert res.exit_code != 0
    assert res.output.strip() == 'error: --ray needs Ray, an optional extra: pip install "fgsearch[ray]"'
    res = CliRunner().invoke(app, ["index", str(photos), "--library", str(tmp_path / "lib"), "--gpus-per-worker", "1"])
    assert res.exit_code != 0 and "--gpus-per-worker" in res.output and "--ray" in res.output
    assert not (tmp_path / "lib").exists()  # refused before a library is created
