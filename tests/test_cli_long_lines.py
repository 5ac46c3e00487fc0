"""Lines that name a path are never folded at the terminal width (80 columns when piped): a long
path in ``index``'s "skipping" lines (and in every other message) was cut into pieces, so
``grep``/copy-paste of the path failed."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.model import REGISTRY


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
