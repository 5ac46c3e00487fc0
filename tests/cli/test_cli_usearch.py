"""``--backend usearch`` end to end through the command line, on the demo model: index, query,
status, bad options, and a damaged graph file reported in one line naming the repair."""

from __future__ import annotations

import json
from pathlib import Path

from _library_data import scene
from typer.testing import CliRunner

from fgsearch.console.cli import app


def run(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=100)


def test_a_usearch_library_indexes_queries_and_names_the_repair_of_a_damaged_graph(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        scene(i).save(photos / f"p{i}.png")
    lib = tmp_path / "lib"
    base = ["index", str(photos), "--library", str(lib), "--model", "demo", "--regions", "none", "--json"]
    r = run(*base, "--backend", "usearch", "--backend-opt", "dtype=f32")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "dtype" in r.output and "i8" in r.output, r.output
    # a graph from 6 images on (flat_threshold), calibrated on a few synthetic queries
    opts = ["--backend-opt", "flat_threshold=6", "--backend-opt", "calibration_queries=20"]
    r = run(*base, "--backend", "usearch", *opts)
    assert r.exit_code == 0 and json.loads(r.stdout)["indexed"] == 8, r.output
    manifest = json.loads((lib / "index" / "global" / "manifest.json").read_text())
    assert manifest["kind"] == "usearch" and manifest["extra"]["tier"] == "hnsw", manifest["extra"]
    r = run("query", "a red square", "--library", str(lib), "--json", "-k", "3")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["results"]
    assert len(hits) == 3 and all(Path(h["path"]).parent == photos for h in hits)
    r = run("status", "--library", str(lib), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["backend"]["kind"] == "usearch", r.output
    graph = lib / "index" / "global" / manifest["extra"]["graph_file"]
    raw = bytearray(graph.read_bytes())
    at = raw.index(b"usearch") + 64 + 40 + 2 * 8 + 10  # the first node's base-layer link count
    raw[at : at + 4] = (2**31).to_bytes(4, "little")  # same size: the store's size check passes
    graph.write_bytes(bytes(raw))
    r = run("query", "a red square", "--library", str(lib), "--json")
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "doctor --repair" in r.output and "usearch" in r.output, r.output
