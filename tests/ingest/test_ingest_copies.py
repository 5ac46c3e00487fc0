"""Copies of one image anywhere in a run: linked to one content, never reserved twice (issue 11.1).

Decode workers run up to two batches ahead of the commit, so a copy is often decoded before its
original's batch is stored. The original here is the LAST file of the first batch (index 31 with
32 images per batch), so every copy lands in a later batch than the one its original is queued in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fgsearch.library import Library
from fgsearch.regions import RegionSettings

BATCH = 32
ORIGINAL = BATCH - 1


def _image(path: Path, rng: np.random.Generator) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def _photos_with_copies(root: Path, distances: tuple[int, ...]) -> tuple[Path, list[Path]]:
    """Distinct images in walk order; the one at walk index ``ORIGINAL`` is copied to walk index
    ``ORIGINAL + d`` for each distance, each copy opening a folder of its own (``b0/``, ``b1/``, ...)
    after the originals' folder ``a/``."""
    rng = np.random.default_rng(0)
    at = {ORIGINAL + d: k for k, d in enumerate(sorted(distances))}
    folder, original, copies = root / "a", root, []
    for pos in range(ORIGINAL + max(distances) + 1):
        name = f"{pos:04d}.png"
        if pos in at:
            folder = root / f"b{at[pos]}"
            folder.mkdir()
            copies.append(folder / name)
            shutil.copyfile(original, folder / name)
        else:
            p = _image(folder / name, rng)
            original = p if pos == ORIGINAL else original
    return original, copies


def _check(lib: Library, n_files: int, n_copies: int) -> None:
    c = lib.catalog.counts()
    assert c["files_ok"] == n_files
    assert c["images"] == n_files - n_copies  # one content for the original and its copies
    assert lib.global_index.count() == c["images"]


@pytest.mark.parametrize("distance", [1, 33, 64, 65])
def test_a_copy_in_a_later_batch_is_linked_not_reserved_again(
    tmp_path: Path, tiny_model_dir: Path, distance: int
) -> None:
    _photos_with_copies(tmp_path / "photos", (distance,))
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        rep = lib.index(tmp_path / "photos", batch_size=BATCH)
        n = ORIGINAL + distance + 1
        assert (rep.scanned, rep.indexed, rep.reused, rep.failed) == (n, n - 1, 1, 0)
        _check(lib, n, 1)


def test_three_copies_in_other_folders_through_the_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    from fgsearch.console.cli import app

    original, copies = _photos_with_copies(tmp_path / "photos", (1, 40, 70))
    args = ["index", str(tmp_path / "photos"), "--library", str(tmp_path / "lib"), "--model", str(tiny_model_dir)]
    r = CliRunner().invoke(app, [*args, "--regions", "none", "--batch-size", str(BATCH), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["indexed"], rep["reused"], rep["failed"]) == (ORIGINAL + 70 + 1 - 3, 3, 0)
    with Library.open(tmp_path / "lib", read_only=True) as lib:
        _check(lib, ORIGINAL + 70 + 1, 3)
        states = lib.catalog.file_states([str(p) for p in [original, *copies]])
        assert [s.status for s in states.values()] == ["ok"] * 4


def test_a_copy_of_a_file_that_fails_to_decode_fails_too(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    files = [_image(photos / "a" / f"{i:04d}.png", rng) for i in range(BATCH + 2)]
    broken = files[ORIGINAL]
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated PNG
    (photos / "b").mkdir()
    shutil.copyfile(broken, photos / "b" / "copy.png")
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        rep = lib.index(photos, batch_size=BATCH)
        assert (rep.indexed, rep.reused, rep.failed) == (BATCH + 1, 0, 2)
        failed = dict(lib.failures())
        assert set(failed) == {str(broken), str(photos / "b" / "copy.png")}


@pytest.mark.slow
def test_a_copy_a_thousand_files_later(tmp_path: Path, tiny_model_dir: Path) -> None:
    _photos_with_copies(tmp_path / "photos", (1000,))
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        rep = lib.index(tmp_path / "photos", batch_size=BATCH)
        assert (rep.indexed, rep.reused, rep.failed) == (ORIGINAL + 1000, 1, 0)
        _check(lib, ORIGINAL + 1001, 1)
