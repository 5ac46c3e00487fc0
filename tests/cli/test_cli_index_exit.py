"""`fgsearch index`'s exit status (issue 30.4): a folder whose only file is not an image exited 0
after printing `failed 1`. A bad file is still reported and never stops the run, but a script can
tell: 0 every file indexed or unchanged, 3 files failed in this run, 4 files failed and none is
indexed (docs/indexing.md#exit-status)."""

from __future__ import annotations

import json
from pathlib import Path

from _library_data import scene
from typer.testing import CliRunner

from fgsearch.console.cli import app


def _index(photos: Path, lib: Path, model: Path, *extra: str) -> tuple[int, dict]:
    args = ["index", str(photos), "-l", str(lib), "--model", str(model), "--regions", "none", "--json", *extra]
    r = CliRunner().invoke(app, args)
    return r.exit_code, json.loads(r.stdout)


def test_index_exit_status(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    photos.mkdir()
    (photos / "notes.png").write_bytes(b"not an image")
    code, rep = _index(photos, lib, tiny_model_dir)
    assert (code, rep["outcome"], rep["failed"], rep["indexed"]) == (4, "none", 1, 0)  # nothing could be indexed
    code, rep = _index(photos, lib, tiny_model_dir)
    assert (code, rep["outcome"]) == (4, "none")  # still nothing: every run says so
    scene(0).save(photos / "a.png")
    (photos / "b.jpg").write_bytes(b"")
    code, rep = _index(photos, lib, tiny_model_dir)
    assert (code, rep["outcome"], rep["indexed"], rep["failed"]) == (3, "partial", 1, 2)  # b.jpg failed now
    code, rep = _index(photos, lib, tiny_model_dir)
    assert (code, rep["outcome"], rep["failed_unchanged"]) == (0, "complete", 2)  # reported once, not nightly
    code, rep = _index(photos, lib, tiny_model_dir, "--retry-failed")
    assert (code, rep["outcome"]) == (3, "partial")  # tried again, failed again
    for bad in ("notes.png", "b.jpg"):
        (photos / bad).unlink()
    code, rep = _index(photos, lib, tiny_model_dir)
    assert (code, rep["outcome"], rep["failed"]) == (0, "complete", 0)


def test_index_exit_status_is_in_the_help() -> None:
    r = CliRunner().invoke(app, ["index", "--help"])
    assert r.exit_code == 0 and "Exit status" in r.output and "3 some files failed" in " ".join(r.output.split())
