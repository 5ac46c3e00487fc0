"""The command line: messages, validation and output of each command (Typer's CliRunner)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.model import REGISTRY
from fgsearch.trainer.fineshapes import make_fineshapes

TINY_TRAIN = [
    "--batch-size", "4", "--save-every", "100", "--eval-every", "2",
    "--tiny-image-size", "32", "--tiny-patch", "8", "--tiny-width", "32", "--tiny-layers", "1",
]  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=80)


def test_train_error_comes_alone_without_an_empty_progress_bar(tmp_path: Path) -> None:
    r = run("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert r.exit_code == 1
    assert r.output.startswith("error: training data ") and r.output.count("\n") == 1, r.output


def test_train_says_warmup_eval_and_already_done(tmp_path: Path) -> None:
    data = make_fineshapes(tmp_path / "fs", n=12, seed=0)
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        r = run("train", "--data", str(data), "--out", str(out), "--steps", "2", "--warmup", "5", *TINY_TRAIN)
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert "warning: --warmup 5 >= --steps 2" in r.output
    assert "step 2 held-out: t2i_r1 " in r.output  # on the console, not only in log.jsonl
    assert "model saved in" in r.output
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o644}, modes
    assert json.loads((out / "fgsearch.json").read_text())["source"].startswith("fgsearch train --init tiny")
    r = run("train", "--data", str(data), "--out", str(out), "--steps", "2", "--warmup", "1", *TINY_TRAIN)
    assert r.exit_code == 0, r.output
    assert "already at step 2 of 2" in r.output
    assert "━" not in r.output  # no bar for a run with nothing to do


HOSTILE = ["a[/]b.png", "[bold]loud.png", "esc\x1b[31mred.png", "new\nline.png"]
LONG = "a_rather_long_folder_name_for_holidays/photo_with_a_long_descriptive_name_0001.png"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:  # root/lib[/]x, photos in root/photos
    """A library (shipped demo model) of photos whose names rich would parse as markup or that hold
    control characters; the library folder's own name holds markup too."""
    from _library_data import scene

    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings

    root = tmp_path_factory.mktemp("cli")
    photos = root / "photos"
    for i, name in enumerate([*HOSTILE, LONG]):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        scene(i).save(photos / name, format="PNG")
    lib_dir = root / "lib[/]x"
    with Library.open(lib_dir, model="demo", regions=RegionSettings("grid", max_regions=2), device="cpu") as lib:
        assert lib.index(str(photos)).indexed == 5
    return lib_dir


def test_query_and_status_print_file_names_exactly_and_safely(library: Path) -> None:
    r = run("query", "a red circle", "--library", str(library), "-k", "5")
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output
    for shown in ("a[/]b.png", "[bold]loud.png", "esc\\x1b[31mred.png", "new\\x0aline.png"):
        assert shown in r.output, r.output
    r = run("status", "--library", str(library))
    assert r.exit_code == 0, r.output
    assert f"library  {library}" in r.output
    assert re.search(r"^disk +[\d.]+ KB: catalog [\d.]+ KB, global index [\d.]+ KB, region index", r.output, re.M)


def test_query_paths_are_whole_on_narrow_terminals_and_in_pipes(library: Path) -> None:
    r = run("query", "a red circle", "--library", str(library), "-k", "5")  # 80 columns, not a terminal
    lines = r.output.splitlines()
    assert lines[0].split() == ["rank", "score", "global", "region", "box", "(x1,y1,x2,y2)", "path"]
    paths = [line.split("  ")[-1].strip() for line in lines[1:]]
    assert str(library.parent.parent / "photos" / LONG) in paths, r.output


def test_paths_output_is_machine_safe(library: Path) -> None:
    r = run("query", "a red circle", "--library", str(library), "-k", "5", "--paths")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and "\x1b" not in r.stdout
    assert str(library.parent.parent / "photos" / "new\\x0aline.png") in lines
    r = run("query", "a red circle", "--library", str(library), "-k", "5", "--paths", "-0")
    assert r.exit_code == 0, r.output
    got = r.stdout_bytes.split(b"\0")
    assert got[-1] == b"" and len(got) == 6
    expected = {os.fsencode(library.parent.parent / "photos" / n) for n in [*HOSTILE, LONG]}
    assert set(got[:-1]) == expected


def test_a_non_utf8_name_and_its_escape_are_two_files_with_their_own_bytes(tmp_path: Path) -> None:
    """Issue 23.3: `caf<e9>.png` (Latin-1, not UTF-8) and a file literally called `caf\\xe9.png` are
    both indexed and found; ``--paths -0`` prints each one's real bytes, a query by either file
    names that file first, and text output (lines, JSON, HTML) shows both as the escape."""
    from _library_data import scene

    photos = tmp_path / "photos"
    photos.mkdir()
    scene(1).save(photos / "ok.png")
    scene(2).save(photos / "caf\\xe9.png")
    latin1 = os.fsencode(photos) + b"/caf\xe9.png"
    with open(latin1, "wb") as f:
        scene(3).save(f, format="PNG")
    names = {os.fsencode(photos / "ok.png"), os.fsencode(photos / "caf\\xe9.png"), latin1}
    lib = str(tmp_path / "lib")
    r = run("index", str(photos), "--library", lib, "--model", "demo", "--regions", "none", "--json")
    assert r.exit_code == 0, r.output
    assert {k: json.loads(r.stdout)[k] for k in ("scanned", "indexed", "failed")} == {
        "scanned": 3,
        "indexed": 3,
        "failed": 0,
    }
    r = run("query", "a red circle", "--library", lib, "-k", "5", "--paths", "-0")
    assert r.exit_code == 0, r.output
    got = r.stdout_bytes.split(b"\0")
    assert got[-1] == b"" and sorted(got[:-1]) == sorted(names)
    for own in names:
        r = run("query", "--image", os.fsdecode(own), "--library", lib, "-k", "1", "--paths", "-0")
        assert r.exit_code == 0, r.output
        assert r.stdout_bytes == own + b"\0"
    pictures = ["--show", str(tmp_path / "s.png"), "--html", str(tmp_path / "q.html")]  # titled by the query file
    r = run("query", "--image", os.fsdecode(latin1), "--library", lib, "-k", "3", "--json", *pictures)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["query"]["image"] == str(photos / "caf\\xe9.png")
    r = run("query", "a red circle", "--library", lib, "-k", "5", "--paths")
    assert sorted(r.stdout.splitlines()).count(str(photos / "caf\\xe9.png")) == 2  # both shown as the escape
    r = run("query", "a red circle", "--library", lib, "-k", "5", "--json", "--html", str(tmp_path / "r.html"))
    assert r.exit_code == 0, r.output
    shown = sorted(h["path"] for h in json.loads(r.stdout)["results"])
    assert shown == sorted([str(photos / "caf\\xe9.png")] * 2 + [str(photos / "ok.png")])
    assert (tmp_path / "r.html").read_text().count("caf\\xe9.png") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-k", "0"], "-k/--top must be between 1 and 10000, got 0"),
        (["-k", "1000000000"], "-k/--top must be between 1 and 10000"),
        (["--image", "q.png", "--box", ""], "box '' must be four numbers"),
        (["--show", "{tmp}"], "is a folder"),
        (["--html", "{tmp}"], "is a folder"),
        (["--show", "{tmp}/sheet.gif"], "must end in .png or .jpg or .jpeg"),
        (["--html", "{tmp}/page.png"], "must end in .html or .htm"),
        (["--show", "{tmp}/afile/sheet.png"], "afile is not a folder"),
        (["--null"], "--null goes with --paths"),
    ],
)
def test_query_options_fail_in_one_line_before_searching(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "afile").write_text("x")
    from _library_data import scene

    scene(0).save(tmp_path / "q.png")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    # the library does not exist: an error about the option proves it came before the search
    r = run("query", "mug", "--library", str(tmp_path / "nolib"), *args)
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert message in r.output, r.output


def test_show_writes_jpeg_or_png_by_name(library: Path, tmp_path: Path) -> None:
    for name, magic in (("s.jpg", b"\xff\xd8\xff"), ("s.png", b"\x89PNG")):
        r = run("query", "a red circle", "--library", str(library), "-k", "2", "--show", str(tmp_path / name))
        assert r.exit_code == 0, r.output
        assert (tmp_path / name).read_bytes().startswith(magic)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-megapixels", "0"], "--max-megapixels must be a positive number, got 0"),
        (["--max-megapixels", "nan"], "--max-megapixels must be a positive number"),
        (["--max-megapixels", "inf"], "--max-megapixels must be a positive number"),
        (["--min-side", "-1"], "--min-side must be at least 1, got -1"),
        (["--workers", "-2"], "--workers must be between 0 and 256, got -2"),
        (["--batch-size", "-1"], "--batch-size must be between 0 and 65536"),
        (["--max-regions", "0"], "--max-regions must be between 1 and 1024, got 0"),
        (["--regions", "grid", "--max-regions", "-3"], "--max-regions must be between 1 and 1024"),
    ],
)
def test_index_options_fail_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "photos").mkdir()
    r = run("index", str(tmp_path / "photos"), "--library", str(tmp_path / "lib"), "--model", "demo", *args)
    assert r.exit_code == 1, r.output
    assert r.output == f"error: {message}\n" or (r.output.startswith(f"error: {message}") and r.output.count("\n") == 1)
    assert not (tmp_path / "lib").exists()


def test_models_shows_the_demo_image_size() -> None:
    r = run("models")
    assert r.exit_code == 0, r.output
    demo = next(line for line in r.output.splitlines() if "│ demo " in line)
    assert "96x96" in demo, r.output


def test_make_data_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "fs"
    assert run("make-data", "fineshapes", str(out), "--n", "6").exit_code == 0
    r = run("make-data", "fineshapes", str(out), "--n", "3")
    assert r.exit_code == 1 and "is not empty" in r.output and "--overwrite" in r.output, r.output
    assert len(list((out / "images").iterdir())) == 6
    r = run("make-data", "fineshapes", str(out), "--n", "3", "--overwrite")
    assert r.exit_code == 0, r.output
    assert len(list((out / "images").iterdir())) == 3  # the old images are gone
    (out / "mine.txt").write_text("a file make-data did not write")
    r = run("make-data", "fineshapes", str(out), "--n", "3", "--overwrite")
    assert r.exit_code == 1 and "mine.txt" in r.output, r.output
    assert (out / "mine.txt").exists()


def test_a_qdrant_library_accepts_its_own_qdrant_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("qdrant_client")
    from _library_data import scene

    (tmp_path / "photos").mkdir()
    for i in range(2):
        scene(i).save(tmp_path / "photos" / f"p{i}.png")
    monkeypatch.chdir(tmp_path)
    base = ["index", "photos", "--library", "lib", "--model", "demo", "--regions", "none", "--json"]
    r = run(*base, "--backend", "qdrant")
    assert r.exit_code == 0, r.output
    r = run(*base, "--qdrant-path", "lib/qdrant")  # where the library keeps it anyway, given relative
    assert r.exit_code == 0 and json.loads(r.stdout)["unchanged"] == 2, r.output
    r = run(*base, "--qdrant-path", "elsewhere")
    assert r.exit_code == 1, r.output
    assert f"uses qdrant at {tmp_path / 'lib' / 'qdrant'}; it cannot switch to qdrant at {tmp_path / 'elsewhere'}" in (
        r.output
    )


HUB_ERROR = (
    "Cannot reach the hub at this time. Check your connection, e.g. a proxy. Then try again.\n"
    "Traceback details that nobody needs."
)


def _hub_down(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def fail(**kw: object) -> str:
        raise OSError(HUB_ERROR)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)


@pytest.mark.parametrize("offline", [True, False])
def test_default_model_missing_names_the_offline_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: bool
) -> None:
    _hub_down(monkeypatch)
    if not offline:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "photos").mkdir()
    r = run("index", str(tmp_path / "photos"), "--library", str(tmp_path / "lib"))
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "model fg-clip-base (qihoo360/fg-clip-base) is not in the Hugging Face cache" in r.output
    assert "[OSError: Cannot reach the hub at this time.]" in r.output  # a whole sentence, not cut
    assert "--model demo (`fgsearch demo` shows it)" in r.output and "--model PATH" in r.output
    assert ("unset HF_HUB_OFFLINE" in r.output) == offline
    assert ("HF_HUB_OFFLINE is set" in r.output) == offline


def test_train_names_init_for_a_missing_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hub_down(monkeypatch)
    data = make_fineshapes(tmp_path / "fs", n=4, seed=0)
    r = run("train", "--data", str(data), "--out", str(tmp_path / "out"), "--init", "fg-clip-base")
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "--init PATH" in r.output and "--init demo" in r.output and "--model" not in r.output


def test_a_long_path_stays_on_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "photos" / ("a_rather_long_folder_name_" * 4)
    folder.mkdir(parents=True)
    empty = folder / "an_empty_photo_with_a_long_name.jpg"
    empty.write_bytes(b"")
    runner = CliRunner()
    lib = str(tmp_path / "lib")
    r = runner.invoke(
        app,
        ["index", str(tmp_path / "photos"), "--library", lib, "--model", str(REGISTRY["demo"].local_dir)],
        terminal_width=80,
    )
    assert f"  skipping {empty}: file is empty (zero bytes)\n" in r.output, r.output
