"""fgsearch.terminal: what the commands print, checked without running a command."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from fgsearch.boxes import Box
from fgsearch.terminal import (
    box_label,
    disk_line,
    doctor_lines,
    hits_json,
    human_size,
    image_size_label,
    index_progress,
    plain,
    print_hits,
    print_index_report,
    safe,
)


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, soft_wrap=True), buf


def test_safe_escapes_control_characters_and_undecodable_bytes() -> None:
    assert safe("a\nb\tc\x1b[31m") == "a\\x0ab\\x09c\\x1b[31m"
    assert safe("caf\udce9.jpg") == "caf\\xe9.jpg"  # os.fsdecode of a Latin-1 byte
    assert safe("\u0085") == "\\x85"
    assert str(plain("[bold]x[/bold]")) == "[bold]x[/bold]"  # never parsed as markup


def test_sizes() -> None:
    sizes = [human_size(n) for n in (0, 999, 1000, 2_500_000, 7 * 10**12)]
    assert sizes == ["0 B", "999 B", "1.0 KB", "2.5 MB", "7000.0 GB"]


def test_disk_line_sums_the_folder(tmp_path: Path) -> None:
    (tmp_path / "catalog.sqlite").write_bytes(b"x" * 1500)
    (tmp_path / "global.faiss").write_bytes(b"x" * 500)
    st = {"index": {"global": {"bytes_on_disk": 500}, "regions": {}}}
    assert disk_line(tmp_path, st) == "disk     2.0 KB: catalog 1.5 KB, global index 500 B, region index not on disk"


def test_hits_table_json_and_boxes() -> None:
    hit = SimpleNamespace(
        rank=1,
        score=0.5,
        global_score=float("nan"),
        region_score=0.25,
        box=Box(0, 0, 0.5, 1),
        path="/p/a\nb.png",
        to_dict=lambda: {"rank": 1},
    )
    assert box_label(hit) == "0.00,0.00,0.50,1.00"
    out, buf = _console()
    print_hits(out, [hit])
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["rank", "score", "global", "region", "box", "(x1,y1,x2,y2)", "path"]
    assert lines[1].split() == ["1", "0.500", "-", "0.250", "0.00,0.00,0.50,1.00", "/p/a\\x0ab.png"]
    out, buf = _console()
    print_hits(out, [])
    assert buf.getvalue() == "no results\n"
    assert json.loads(hits_json({"text": "t"}, [hit])) == {"query": {"text": "t"}, "results": [{"rank": 1}]}


def test_index_report_lists_the_first_failures_and_names_the_command() -> None:
    report = SimpleNamespace(
        scanned=12,
        indexed=0,
        regions=0,
        reused=0,
        unchanged=0,
        failed=12,
        failed_unchanged=0,
        pruned=0,
        seconds=1.0,
        images_per_second=0.0,
        failures=[(f"/f{i}", "bad") for i in range(12)],
        warnings=["w"],
    )
    out, buf = _console()
    print_index_report(out, report)
    text = buf.getvalue()
    assert text.count("skipping /f") == 10 and "warning: w" in text
    assert "12 failures in all: `fgsearch status --failed` lists them" in text


def test_index_progress_is_none_without_a_bar() -> None:
    out, _ = _console()
    with index_progress(out, show=False) as progress:
        assert progress is None
    with index_progress(out) as progress:
        assert progress is not None
        progress("embed", 1, 2, 1)


def test_doctor_lines() -> None:
    part = {"catalog": 2, "index": 2, "orphan_vectors": 0, "missing_vectors": 0, "damaged_vectors": 0}
    lines = doctor_lines({"global": part, "regions": part, "damaged_files": ["x.faiss"]})
    assert lines[0].startswith("global: catalog 2, index 2")
    assert lines[-1] == "damaged file (checksum mismatch): x.faiss"


def test_image_size_label() -> None:
    spec = SimpleNamespace(family="fgclip", image_size=(224, 224), local_dir=None)
    assert image_size_label(spec) == "224x224"
    assert image_size_label(SimpleNamespace(family="fgclip2", image_size=None, local_dir=None)).startswith("NaFlex")
    assert image_size_label(SimpleNamespace(family=None, image_size=None, local_dir=None)) == "from checkpoint"
