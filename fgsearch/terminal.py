"""What the ``fgsearch`` command prints: terminal-safe text, tables, summaries and progress bars.

``cli.py`` parses arguments and calls the library; everything about how a result looks on a
terminal or in a pipe lives here, so that the commands stay short and the formats are testable
without running a command. File names are untrusted text: every path or reason printed goes
through :func:`safe` (control characters and undecodable bytes become visible ``\\xNN`` escapes)
and is never parsed as rich markup. Rich is imported inside the functions (``--help`` stays fast).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from fgsearch.eval import EvalResult
    from fgsearch.ingest import IndexReport
    from fgsearch.model import ModelSpec
    from fgsearch.search import SearchHit as Hit

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
FAILURES_SHOWN = 10  # `fgsearch index` lists this many skipped files; `status --failed` lists all


def _escape_char(m: re.Match[str]) -> str:
    o = ord(m.group())
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8, kept by os.fsdecode as a lone surrogate
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def safe(text: str) -> str:
    """``text`` for a terminal or a line-based pipe: control characters (escape sequences, newlines,
    tabs) and undecodable bytes of file names become visible ``\\xNN`` escapes."""
    return _UNSAFE.sub(_escape_char, text)


def plain(text: str) -> Text:
    """A rich Text of ``text``: printed as it is (never parsed as markup) and made terminal-safe."""
    from rich.text import Text

    return Text(safe(text))


def console(stderr: bool = False) -> Console:
    """A console that never folds a line (a path) at the terminal width; on stderr when stdout
    carries machine-readable output (``--json``, ``--paths``)."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


# ---- models ---------------------------------------------------------------------------------------
def image_size_label(spec: ModelSpec) -> str:
    """The registry's input size, or the one in a local checkpoint's config.json (the shipped demo)."""
    if spec.family == "fgclip2":
        return "NaFlex, 128-1024 patches"
    size: Any = spec.image_size
    if size is None and spec.local_dir:
        try:
            raw = json.loads((Path(spec.local_dir) / "config.json").read_text())["vision_config"]["image_size"]
            size = (raw, raw) if isinstance(raw, int) else tuple(raw)
        except (OSError, ValueError, KeyError, TypeError):
            size = None
    return "x".join(map(str, size)) if size else "from checkpoint"


def print_models(out: Console, specs: Sequence[ModelSpec], present: Callable[[ModelSpec], bool]) -> None:
    """The model registry as a table: name, family, weight source, input size, cached here or not."""
    from rich.table import Column, Table

    table = Table("name", "family", Column("source", overflow="fold"), "image size", "present", "description")
    for spec in specs:
        flag = "yes" if present(spec) else "no"
        table.add_row(spec.name, spec.family or "-", plain(spec.source), image_size_label(spec), flag, spec.description)
    out.print(table)


# ---- index ----------------------------------------------------------------------------------------
IndexProgressFn = Callable[[str, int, int, int], None]


@contextmanager
def index_progress(out: Console, show: bool = True) -> Iterator[IndexProgressFn | None]:
    """A transient bar for ``Library.index``: files done of all, and the embedding rate in images/s
    (counted like the summary's); None (no progress callback) unless ``show``."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"))
    with Progress(*columns, TimeRemainingColumn(), console=out, transient=True) as bar:
        task = bar.add_task("index", total=None, rate="")
        t0 = time.perf_counter()

        def progress(stage: str, done: int, total: int, embedded: int) -> None:
            rate = embedded / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{rate:.1f} images/s")

        yield progress


def print_index_report(out: Console, report: IndexReport) -> None:
    """The one-line summary of an index run, the first skipped files with their reasons, warnings,
    and the command that lists every failure."""
    out.print(
        f"scanned {report.scanned}: indexed {report.indexed} ({report.regions} regions), reused {report.reused}, "
        f"unchanged {report.unchanged}, failed {report.failed}{_failed_before(report)}, pruned {report.pruned} "
        f"in {report.seconds:.1f}s ({report.images_per_second:.1f} images/s)",
        highlight=False,
    )
    if getattr(report, "vectors_reused", 0):  # a rebuild that reused recorded vectors
        out.print(
            f"rebuilt from the vector files: {report.vectors_reused} images reused their recorded vectors, "
            f"{report.indexed - report.vectors_reused} embedded",
            highlight=False,
        )
    for path, reason in report.failures[:FAILURES_SHOWN]:
        out.print(plain(f"  skipping {path}: {reason}"), highlight=False)
    for warning in report.warnings:
        out.print(plain(f"warning: {warning}"), highlight=False)
    if report.failed > min(FAILURES_SHOWN, len(report.failures)):
        out.print(f"  ... {report.failed} failures in all: `fgsearch status --failed` lists them", highlight=False)


def _failed_before(report: IndexReport) -> str:
    """Which failures were not tried again, and the flag that tries them."""
    if not report.failed_unchanged:
        return ""
    return f" ({report.failed_unchanged} unchanged since they failed: --retry-failed tries them again)"


# ---- query ----------------------------------------------------------------------------------------
def box_label(hit: Hit) -> str:
    """A hit's box as ``x1,y1,x2,y2`` (two decimals), or ``-`` for a whole-image hit."""
    return ",".join(f"{v:.2f}" for v in hit.box.as_tuple()) if hit.box else "-"


def print_hits(out: Console, hits: Sequence[Hit]) -> None:
    """The result table: numbers in fixed columns, the path last and whole (a long path runs on and
    the terminal wraps it; it is never cut or folded mid-name, on a terminal or in a pipe)."""
    if not hits:
        out.print("no results")
        return
    out.print(f"{'rank':>4}  {'score':>6}  {'global':>6}  {'region':>6}  {'box (x1,y1,x2,y2)':<19}  path")
    for h in hits:
        rs = f"{h.region_score:.3f}" if h.region_score is not None else "-"
        gs = f"{h.global_score:.3f}" if h.global_score is not None and h.global_score == h.global_score else "-"
        line = f"{h.rank:>4}  {h.score:>6.3f}  {gs:>6}  {rs:>6}  {box_label(h):<19}  {safe(h.path)}"
        out.print(plain(line), soft_wrap=True)


def hits_json(query: dict[str, Any], hits: Sequence[Hit]) -> str:
    """``fgsearch query --json``: the query as understood and the results (schema in the README)."""
    return json.dumps({"query": query, "results": [h.to_dict() for h in hits]}, indent=2)


def hits_table(hits: Sequence[Hit], title: str, root: Path) -> Any:
    """The demo's table of hits: rank, score, path relative to ``root``, box."""
    from rich.table import Table

    table = Table("rank", "score", "path", "box", title=title)
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", str(Path(h.path).relative_to(root)), box_label(h))
    return table


# ---- status / doctor ------------------------------------------------------------------------------
def human_size(n: int) -> str:
    """``n`` bytes in B, KB, MB or GB (powers of 1000)."""
    x, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if x < 1000 or unit == "GB":
            break
        x /= 1000
    return f"{x:.0f} B" if unit == "B" else f"{x:.1f} {unit}"


def disk_line(lib_dir: Path, st: dict[str, Any]) -> str:
    """Sizes on disk: the whole library folder, its catalog and each vector index."""
    total = sum(f.stat().st_size for f in lib_dir.rglob("*") if f.is_file() and not f.is_symlink())
    catalog = sum(f.stat().st_size for f in lib_dir.glob("catalog.sqlite*") if f.is_file())
    if "://" in str(st.get("catalog", "")):  # a PostgreSQL catalog: its database's size
        catalog = int(st.get("counts", {}).get("catalog_bytes", 0))
    parts = [f"catalog {human_size(catalog)}"]
    for name, label in (("global", "global"), ("regions", "region")):
        n = st.get("index", {}).get(name, {}).get("bytes_on_disk")
        parts.append(f"{label} index {human_size(n) if n is not None else 'not on disk'}")
    return f"disk     {human_size(total)}: " + ", ".join(parts)


def print_status(out: Console, st: dict[str, Any]) -> None:
    """``fgsearch status``: library, model, backend, region settings, counts, vectors, disk use."""
    out.print(plain(f"library  {st['library']}"), highlight=False)
    if "://" in str(st.get("catalog", "")):  # a PostgreSQL catalog (shown without its password)
        out.print(plain(f"catalog  {st['catalog']}"), highlight=False)
    out.print(plain(f"model    {st['model']} (dim {st['dim']}, ref {st['model_ref']})"), highlight=False)
    out.print(
        f"backend  {st['backend']['kind']}   regions {st['regions']['proposer']} (max {st['regions']['max_regions']})",
        highlight=False,
    )
    for k, v in st["counts"].items():
        out.print(f"{k:<16} {v}", highlight=False)
    note = pending_note(st.get("pending"))
    if note:
        out.print(plain(note), highlight=False)
    out.print(f"vectors  global {st['vectors']['global']}, regions {st['vectors']['regions']}", highlight=False)
    if st.get("precisions"):
        out.print(plain(f"made by  {', '.join(st['precisions'])}"), highlight=False)
    for line in st.get("gate") or []:  # the quality gate's verdict per fast path (docs/runtimes.md)
        out.print(plain(f"gate     {line}"), highlight=False)
    out.print(plain(disk_line(Path(st["library"]), st)), highlight=False)
    for line in st.get("below_goal", []):
        out.print(plain(f"warning  {line}"), highlight=False)


def doctor_lines(rep: dict[str, Any]) -> list[str]:
    """``fgsearch doctor``'s findings before its verdict: per index, then each damaged file."""
    lines = []
    chk = rep.get("catalog_check")
    if chk is not None:
        verdict = "ok" if chk["ok"] else "DAMAGED: " + "; ".join(chk["problems"][:3])
        when = " (before the repair)" if rep.get("salvage") else ""
        lines.append(f"catalog{when}: {chk['method']} {verdict} ({chk['seconds']:.2f} s)")
    if rep.get("salvage"):
        lines += salvage_lines(rep["salvage"])
    if "global" not in rep:
        return lines
    for name in ("global", "regions"):
        r = rep[name]
        lines.append(
            f"{name}: catalog {r['catalog']}, index {r['index']}, orphan vectors {r['orphan_vectors']}, "
            f"missing vectors {r['missing_vectors']}, damaged vectors {r['damaged_vectors']}"
        )
    lines += [f"damaged file (checksum mismatch): {f}" for f in rep["damaged_files"]]
    note = pending_note(rep.get("pending"))
    if note:
        lines.append(note)
    lines += [f"below goal: {line}" for line in rep.get("below_goal", [])]
    return lines


def salvage_lines(s: dict[str, Any]) -> list[str]:
    """What ``doctor --repair`` salvaged from a damaged catalog."""
    rec = ", ".join(f"{k} {v}" for k, v in s["recovered"].items())
    before = ", ".join(f"{k} {v}" for k, v in s["before"].items())
    lines = [
        f"salvaged the catalog: rows recovered {rec}"
        + (f" (rows before, by intact indexes: {before})" if before else "")
    ]
    lines.append(f"damaged catalog kept as {s['kept_aside']}")
    lines.append(
        f"images: recovered {s.get('images_recovered', 0)} with their vectors, lost {s.get('images_lost', 0)}, "
        f"re-embedded {s.get('images_reembedded', 0)}; files re-linked by content hash {s.get('files_relinked', 0)}"
    )
    if s.get("meta_keys_lost"):
        lines.append(f"settings restored from rebuild.json: {', '.join(s['meta_keys_lost'])}")
    return lines


def pending_note(p: dict[str, Any] | None) -> str | None:
    """Why the catalog's and the indexes' counts differ while images are pending."""
    if not p or not p.get("images"):
        return None
    n, r = p["images"], p["regions"]
    what = f"{n} images ({r} regions) are pending"
    if p.get("writer"):
        return f"{what}: the batch of the run in progress (PID {p['writer']}); counted once it confirms them"
    return (
        f"{what}: an interrupted run reserved them and their vectors may be partly written (not counted "
        "above); the next `fgsearch index` (or `fgsearch doctor --repair`) undoes them and embeds those images again"
    )


# ---- train / eval ---------------------------------------------------------------------------------
TrainProgressFn = Callable[[int, int, dict[str, float]], None]


@contextmanager
def train_progress(out: Console) -> Iterator[TrainProgressFn]:
    """A bar for ``train``: it appears with the first finished step (none before an error, such as
    bad data) and shows the loss."""
    from contextlib import ExitStack

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with ExitStack() as stack:
        live: list[tuple[Progress, Any]] = []

        def progress(step: int, total: int, m: dict[str, float]) -> None:
            if not live:
                columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
                bar = stack.enter_context(Progress(*columns, TimeRemainingColumn(), console=out))
                live.append((bar, bar.add_task("train", total=total, completed=step - 1, info="")))
            bar, task = live[0]
            bar.update(task, completed=step, info=f"loss {m.get('loss', float('nan')):.3f}")

        yield progress


@contextmanager
def stage_progress(out: Console) -> Iterator[Callable[[str, int, int], None]]:
    """Transient bars, one per stage label (``fgsearch eval``: images, texts, ...)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=out, transient=True
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress


def print_eval(out: Console, result: EvalResult, task: str) -> None:
    """An ``EvalResult`` as a table of ours beside the paper's, then the settings that produced it."""
    from rich.table import Table

    table = Table("metric", "ours (%)", "paper (%)", title=f"{result.settings.get('description', task)}")
    for name, ours, paper in result.rows():
        table.add_row(name, ours, paper or "-")
    out.print(table)
    for label, value in result.describe():
        out.print(f"{label}: {value}", highlight=False, markup=False)
    for note in result.settings.get("notes") or []:  # the quality gate's verdicts (fast paths)
        out.print(plain(f"gate: {note}"), highlight=False)


def write_pictures(out: Any, hits: list[Any], title: str, show: Path | None, html_out: Path | None) -> None:
    """``--show`` and ``--html``: the hits drawn with their boxes, each file announced when written."""
    if not (show or html_out):
        return
    from fgsearch.render import RenderItem, contact_sheet, html_page

    items = [RenderItem(h.path, f"#{h.rank} · score {h.score:.3f}", h.box) for h in hits]
    if show:
        contact_sheet(items, show, title=title)
        out.print(plain(f"wrote {show}"))
    if html_out:
        html_page(items, html_out, title=f"fgsearch: {title}")
        out.print(plain(f"wrote {html_out}"))


def print_paths(paths: list[str], null: bool) -> None:
    """One path per line, control characters escaped; or, with ``null``, the exact bytes + NUL."""
    if null:
        out = sys.stdout.buffer
        for p in paths:
            out.write(os.fsencode(p) + b"\0")
        out.flush()
        return
    for p in paths:
        print(safe(p))
