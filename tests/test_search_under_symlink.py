"""``--under`` (CLI) and ``filters.under`` (serve) name a folder the way the indexer stored it: a
library indexed through a symlinked folder (``~/Pictures -> /data/pics``, macOS ``/tmp``) is found
under that spelling. Both resolved symlinks, so every such query answered "no results"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _library_data import make_folder
from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.library import Library
from fgsearch.regions import RegionSettings


@pytest.fixture()
def linked_library(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    real = tmp_path / "real"
    make_folder(real, n_good=4, bad=False)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        lib.index(str(link))
    return tmp_path / "lib", link


def test_cli_under_a_symlinked_root_finds_its_images(linked_library: tuple[Path, Path]) -> None:
    lib, link = linked_library
    r = CliRunner().invoke(app, ["query", "a photo", "--library", str(lib), "--under", str(link), "--json", "-k", "50"])
    assert r.exit_code == 0, r.output
    paths = [p for hit in json.loads(r.stdout)["results"] for p in hit["paths"]]
    assert len(paths) == 4 and all(p.startswith(str(link) + "/") for p in paths), paths


def test_serve_under_a_symlinked_root_finds_its_images(linked_library: tuple[Path, Path], tiny_model_dir: Path) -> None:
    pytest.importorskip("fastapi")
    from _serve_data import make_client

    lib, link = linked_library
    client, service = make_client(lib)
    try:
        r = client.post("/api/search", json={"text": "a photo", "k": 50, "filters": {"under": str(link)}})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 4
    finally:
        service.close()
