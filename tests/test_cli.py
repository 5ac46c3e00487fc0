"""The command line: messages, validation and output of each command (Typer's CliRunner)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from fgsearch.console.cli import app
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
