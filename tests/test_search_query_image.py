"""A query image the decoder refuses gets advice the query command can follow: a decompression
bomb given to ``query --image`` was told "raise it with --max-megapixels", an option only
``index`` has (``query --max-megapixels`` is a usage error)."""

from __future__ import annotations

from pathlib import Path

from _library_data import demo_cli_library, png_bomb_header
from typer.testing import CliRunner

from fgsearch.console.cli import app


def test_a_bomb_query_image_names_no_flag_query_lacks(tmp_path: Path) -> None:
    lib = demo_cli_library(tmp_path, n_good=2)
    runner = CliRunner()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb_header(30000, 30000))
    r = runner.invoke(app, ["query", "--image", str(bomb), "--library", lib])
    assert r.exit_code == 1
    assert (
        r.output.startswith(f"error: cannot read query image {bomb}: image is ")
        and "over the 100 megapixel limit" in r.output
    )
    assert "--max-megapixels" not in r.output, r.output
