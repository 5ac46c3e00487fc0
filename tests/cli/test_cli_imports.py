"""Commands that run no model import no torch (issue 23.9: `fgsearch models` took 1.8 s and 669 MB
to print a table). Each command runs in a fresh interpreter, which then lists the heavy modules
it holds. `doctor --repair` opens the library as a writer: a writer given no model loads the
library's own only when it needs it (to index, or to calibrate an approximate index it builds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from _library_data import scene
from typer.testing import CliRunner

from fgsearch.console.cli import app

HEAVY = ("torch", "torchvision", "transformers")
PROBE = (
    "import sys\n"
    "from fgsearch.console.cli import main\n"
    "sys.argv = ['fgsearch', *sys.argv[1:]]\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as e:\n"
    "    code = e.code or 0\n"
    "else:\n"
    "    code = 0\n"
    f"print('HEAVY', code, *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
)


def _heavy_modules(args: list[str]) -> tuple[list[str], str]:
    """Run ``fgsearch ARGS`` in a new interpreter (it must succeed): the heavy modules it imported,
    and its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    last = [line for line in r.stderr.splitlines() if line.startswith("HEAVY ")]
    assert last, f"fgsearch {' '.join(args)} ended without the probe's line: {r.stderr[-2000:]}"
    words = last[-1].split()
    assert words[1] == "0", f"fgsearch {' '.join(args)} exited {words[1]}: {r.stdout[-1000:]} {r.stderr[-1000:]}"
    return words[2:], r.stdout


def _cached_hub_model(hub_cache: Path, repo: str) -> None:
    """A hub model as huggingface_hub leaves it in its cache (so `models` says present: yes)."""
    folder = hub_cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"x")


def test_commands_that_run_no_model_import_no_torch(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos, lib = tmp_path / "photos", str(tmp_path / "lib")
    photos.mkdir()
    scene(0).save(photos / "a.png")
    (photos / "bad.png").write_bytes(b"not an image")
    r = CliRunner().invoke(app, ["index", str(photos), "-l", lib, "--model", str(tiny_model_dir), "-q"])
    assert r.exit_code == 3, r.output  # bad.png failed
    _cached_hub_model(Path(os.environ["HF_HUB_CACHE"]), "qihoo360/fg-clip-base")
    names = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    commands = [
        ["models"],
        ["--help"],
        ["--version"],
        *([name, "--help"] for name in names),
        ["status", "-l", lib],
        ["status", "-l", lib, "--json"],
        ["status", "-l", lib, "--failed"],
        ["doctor", "-l", lib],
        ["doctor", "-l", lib, "--repair"],
        ["make-data", "fineshapes", str(tmp_path / "data"), "--n", "2"],
    ]
    runs = {" ".join(c): _heavy_modules(c) for c in commands}
    assert {c: heavy for c, (heavy, _) in runs.items() if heavy} == {}
    listed = [line.split("│") for line in runs["models"][1].splitlines()]
    assert {row[1].strip(): row[5].strip() for row in listed if len(row) > 6}["fg-clip-base"] == "yes"
