"""The ``fgsearch`` command: parse arguments, call the library, render the result.

Installed as ``fgsearch.console.cli``. Nothing but argument handling and presentation lives here;
heavy modules (torch, faiss, the model) are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from fgsearch._version import __version__

app = typer.Typer(
    name="fgsearch",
    help="Find things inside image collections from long, detailed descriptions (FG-CLIP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 1) -> None:
    """Print one clear error line and exit."""
    typer.echo(f"error: {_safe(message)}", err=True)
    raise typer.Exit(code)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape_char(m: re.Match[str]) -> str:
    o = ord(m.group())
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8, kept by os.fsdecode as a lone surrogate
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def _safe(text: str) -> str:
    """``text`` for a terminal or a line-based pipe: control characters (escape sequences, newlines,
    tabs) and undecodable bytes of file names become visible ``\\xNN`` escapes."""
    return _UNSAFE.sub(_escape_char, text)


def _text(text: str) -> Any:
    """A rich Text of ``text``: printed as it is (never parsed as markup) and made terminal-safe."""
    from rich.text import Text

    return Text(_safe(text))


def _check_range(flag: str, value: float, low: float, high: float | None = None) -> None:
    """One-line error unless ``low <= value <= high`` (finite)."""
    import math

    ok = math.isfinite(value) and value >= low and (high is None or value <= high)
    if not ok:
        what = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        _fail(f"{flag} must be {what}, got {value:g}")


F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    """Turn the library's errors into one clear line and exit code 1 (Ctrl-C into 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fgsearch.errors import FgsearchError

        try:
            return fn(*args, **kwargs)
        except FgsearchError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            typer.echo("interrupted: work committed so far is kept; run the command again to resume", err=True)
            raise typer.Exit(130) from None
        except Exception as e:
            from fgsearch.indexes import IndexBackendError

            if isinstance(e, IndexBackendError):
                _fail(str(e))
            raise

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fgsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Find things inside image collections from long, detailed descriptions (FG-CLIP)."""


@app.command()
@_errors
def models() -> None:
    """List the model registry and which models are present on this machine."""
    from rich.console import Console
    from rich.table import Column, Table

    from fgsearch.model import REGISTRY, is_cached

    table = Table("name", "family", Column("source", overflow="fold"), "image size", "present", "description")
    for spec in REGISTRY.values():
        size = "NaFlex, 128-1024 patches" if spec.family == "fgclip2" else _image_size(spec)
        present = "yes" if is_cached(spec) else "no"
        table.add_row(spec.name, spec.family or "-", _text(spec.source), size, present, spec.description)
    Console().print(table)
    typer.echo("Also accepted: --model PATH (a checkpoint directory) or --model hf-hub:ORG/NAME[@REVISION].")


def _image_size(spec: Any) -> str:
    """The registry's input size, or the one in a local checkpoint's config.json (the shipped demo)."""
    import json

    size = spec.image_size
    if size is None and spec.local_dir:
        try:
            raw = json.loads((Path(spec.local_dir) / "config.json").read_text())["vision_config"]["image_size"]
            size = (raw, raw) if isinstance(raw, int) else tuple(raw)
        except (OSError, ValueError, KeyError, TypeError):
            size = None
    return "x".join(map(str, size)) if size else "from checkpoint"


@app.command("convert-clip")
@_errors
def convert_clip(
    src: Path = typer.Argument(..., help="OpenAI CLIP checkpoint directory (transformers format)."),
    out: Path = typer.Argument(..., help="Directory to write the FG-CLIP starting point to."),
) -> None:
    """Turn an OpenAI CLIP checkpoint into an FG-CLIP starting point (248 text positions)."""
    from fgsearch.model import convert_openai_clip

    path = convert_openai_clip(src, out)
    typer.echo(_safe(f"wrote {path}"))


LIBRARY_OPT = typer.Option(None, "--library", "-l", help="Library directory (default: $FGSEARCH_HOME/default).")
MODEL_HELP = "Model: registry name (fgsearch models), hf-hub:ORG/NAME or a checkpoint directory."


def _console(json_mode: bool = False):
    from rich.console import Console

    return Console(stderr=json_mode, soft_wrap=True)  # never fold a line (a path) at the terminal width


@app.command()
@_errors
def index(
    paths: list[Path] = typer.Argument(..., help="Folders (or files) to index."),
    library: Path | None = LIBRARY_OPT,
    model: str | None = typer.Option(
        None, "--model", "-m", help=MODEL_HELP + " Default: the library's, else fg-clip-base."
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="Vector store for a NEW library: faiss (default), exact, qdrant."
    ),
    qdrant_url: str | None = typer.Option(
        None, "--qdrant-url", help="Qdrant server URL (with --backend qdrant); API key from QDRANT_API_KEY."
    ),
    qdrant_path: Path | None = typer.Option(
        None, "--qdrant-path", help="Embedded Qdrant directory (with --backend qdrant)."
    ),
    regions: str | None = typer.Option(
        None, "--regions", help="Region proposer for a new library: auto (default), grid, none, sidecar."
    ),
    max_regions: int | None = typer.Option(None, "--max-regions", help="Regions per image (default 16)."),
    sidecar: str | None = typer.Option(
        None,
        "--sidecar",
        help="With --regions sidecar: a COCO instances JSON, or per-image (IMAGE.json beside each image).",
    ),
    include: list[str] = typer.Option(
        [], "--include", help="Glob (relative to the folder) a file must match; repeatable."
    ),
    exclude: list[str] = typer.Option([], "--exclude", help="Glob of files or folders to skip; repeatable."),
    ext: list[str] = typer.Option(
        [],
        "--ext",
        help="Also walk files with this extension (e.g. .heic with a Pillow plugin); repeatable. "
        "Common photo formats and every format Pillow reads are walked anyway.",
    ),
    hidden: bool = typer.Option(False, "--hidden", help="Also index hidden files and folders."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Remove files that disappeared from the folders."),
    prune_unselected: bool = typer.Option(
        False,
        "--prune-unselected",
        help="Also remove indexed files still on disk that --include/--exclude/--hidden now leave out.",
    ),
    follow_links: bool = typer.Option(
        False, "--follow-links", help="Follow symbolic links that lead outside the folders given."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Try again files that failed before and did not change."
    ),
    reindex: bool = typer.Option(
        False, "--reindex", help="Rebuild the library from scratch (e.g. with another model)."
    ),
    max_megapixels: float = typer.Option(
        100.0, "--max-megapixels", help="Skip images larger than this (decompression-bomb guard)."
    ),
    min_side: int = typer.Option(16, "--min-side", help="Skip images smaller than this many pixels on a side."),
    batch_size: int = typer.Option(
        0, "--batch-size", help="Images per forward pass and per commit (0: 32 on a CPU, 256 on a GPU)."
    ),
    workers: int = typer.Option(0, "--workers", help="Decode threads (0: automatic)."),
    fast_decode: bool = typer.Option(
        False,
        "--fast-decode",
        help="Decode big JPEGs at a reduced scale (at least twice the model's input): much faster for "
        "multi-megapixel photos; vectors differ slightly from a full-size decode.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Index image folders: global and region vectors, incremental and resumable."""
    import json

    from fgsearch.ingest import IndexOptions
    from fgsearch.library import BackendSettings, Library
    from fgsearch.regions import RegionSettings

    for p in paths:
        if not p.exists():
            _fail(f"{p} does not exist; give a folder of images")
    _check_index_options(max_megapixels, min_side, batch_size, workers)
    proposer = regions or ("sidecar" if sidecar else "auto")
    if max_regions is not None and proposer in ("auto", "grid"):
        _check_range("--max-regions", max_regions, 1, MAX_REGIONS)
    bk = None
    if backend or qdrant_url or qdrant_path:
        # stored in the library: absolute, so that it means the same from any folder later
        where = str(qdrant_path.expanduser().resolve()) if qdrant_path else None
        if (qdrant_url or where) and (backend or "qdrant") != "qdrant":
            _fail("--qdrant-url/--qdrant-path need --backend qdrant")
        opts = {k: v for k, v in (("url", qdrant_url), ("path", where)) if v}
        bk = BackendSettings(kind=backend or "qdrant", options=opts)
    rs = None
    if regions or max_regions is not None or sidecar:
        if sidecar and sidecar != "per-image":
            sidecar = str(Path(sidecar).expanduser().resolve())  # stored in the library: any cwd later
        rs = RegionSettings(
            proposer=proposer,
            max_regions=16 if max_regions is None else max_regions,
            sidecar=sidecar,
        )
    opts = IndexOptions(
        include=tuple(include),
        exclude=tuple(exclude),
        extensions=tuple(ext),
        hidden=hidden,
        prune=prune,
        prune_unselected=prune_unselected,
        follow_links=follow_links,
        retry_failed=retry_failed,
        batch_size=batch_size,
        workers=workers,
        max_megapixels=max_megapixels,
        min_side=min_side,
        fast_decode=fast_decode,
    )
    console = _console(json_out)
    with Library.open(library, model=model, backend=bk, regions=rs, reindex=reindex, device=device) as lib:
        if quiet or json_out:
            report = lib.index([str(p) for p in paths], opts)
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (
                TextColumn("indexing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task("index", total=None, rate="")
                import time

                t0 = time.perf_counter()

                def progress(stage: str, done: int, total: int, embedded: int) -> None:
                    rate = embedded / max(time.perf_counter() - t0, 1e-9)  # like the summary's images/s
                    bar.update(task, completed=done, total=total, rate=f"{rate:.1f} images/s")

                report = lib.index([str(p) for p in paths], opts, progress=progress)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    console.print(
        f"scanned {report.scanned}: indexed {report.indexed} ({report.regions} regions), reused {report.reused}, "
        f"unchanged {report.unchanged}, failed {report.failed}, pruned {report.pruned} "
        f"in {report.seconds:.1f}s ({report.images_per_second:.1f} images/s)",
        highlight=False,
    )
    for path, reason in report.failures[:10]:
        console.print(_text(f"  skipping {path}: {reason}"), highlight=False)
    for warning in report.warnings:
        console.print(_text(f"warning: {warning}"), highlight=False)
    if report.failed > min(10, len(report.failures)):
        console.print(f"  ... {report.failed} failures in all: `fgsearch status --failed` lists them", highlight=False)


MAX_K = 10_000  # results per query: more is not a search, and -k 10**9 would allocate for every one
MAX_REGIONS = 1_024
MAX_WORKERS = 256


def _check_index_options(max_megapixels: float, min_side: int, batch_size: int, workers: int) -> None:
    import math

    if not (math.isfinite(max_megapixels) and max_megapixels > 0):
        _fail(f"--max-megapixels must be a positive number, got {max_megapixels:g}")
    _check_range("--min-side", min_side, 1)
    _check_range("--batch-size", batch_size, 0, 65_536)
    _check_range("--workers", workers, 0, MAX_WORKERS)


def _parse_time(value: str | None, flag: str):
    from datetime import datetime

    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{flag} {value!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM")
    return None


@app.command()
@_errors
def query(
    text: str | None = typer.Argument(None, help="What to find; any length (up to 248 tokens are read)."),
    library: Path | None = LIBRARY_OPT,
    top: int = typer.Option(10, "-k", "--top", help="Number of results."),
    image: Path | None = typer.Option(
        None, "--image", help="Query by an image (combined with TEXT when both are given)."
    ),
    box: str | None = typer.Option(None, "--box", help="With --image: query by this region x1,y1,x2,y2 (normalised)."),
    negative: str | None = typer.Option(None, "--not", help="Push down images that match this text."),
    by: str = typer.Option("image", "--by", help="image: rank images (best box each); region: rank regions."),
    path_glob: str | None = typer.Option(None, "--path", help="Only paths matching this glob (e.g. '*/2024/*')."),
    path_prefix: str | None = typer.Option(None, "--under", help="Only paths under this folder."),
    captured_after: str | None = typer.Option(
        None, "--taken-after", help="Capture time (EXIF) on or after YYYY-MM-DD."
    ),
    captured_before: str | None = typer.Option(None, "--taken-before", help="Capture time (EXIF) before YYYY-MM-DD."),
    modified_after: str | None = typer.Option(None, "--modified-after", help="File modified on or after YYYY-MM-DD."),
    modified_before: str | None = typer.Option(None, "--modified-before", help="File modified before YYYY-MM-DD."),
    min_score: float | None = typer.Option(None, "--min-score", help="Drop results scoring below this."),
    w_global: float | None = typer.Option(
        None, "--w-global", help="Weight of the whole-image score [default: 0.25 text, 1 image, 0 box]."
    ),
    w_region: float | None = typer.Option(
        None, "--w-region", help="Weight of the best-region score [default: 0.75 text, 0 image, 1 box]."
    ),
    w_negative: float = typer.Option(0.5, "--w-not", help="Weight of the --not penalty."),
    text_path: str | None = typer.Option(
        None, "--text-path", help="Force one text walk: short or long (FG-CLIP 2 also has box, its region walk)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print results as JSON (schema in README)."),
    paths_out: bool = typer.Option(
        False, "--paths", help="Print one path per line (control characters escaped as \\xNN; see --null)."
    ),
    null: bool = typer.Option(
        False, "--null", "-0", help="With --paths: end each path with a NUL byte, exactly as on disk (xargs -0)."
    ),
    show: Path | None = typer.Option(
        None, "--show", help="Write a contact sheet with the boxes drawn (.png, or .jpg for JPEG)."
    ),
    html_out: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML page of the results."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
) -> None:
    """Search the library: ranked images and the matching region."""
    import json

    from fgsearch.boxes import Box
    from fgsearch.library import Library
    from fgsearch.render import check_target
    from fgsearch.search import Filters, FusionWeights, QueryInfo, SearchQuery

    if box is not None and image is None:
        _fail("--box needs --image (the box is a region of the query image)")
    if text_path not in (None, "short", "long", "box"):
        _fail("--text-path must be short, long or box (box: FG-CLIP 2 only)")
    _check_range("-k/--top", top, 1, MAX_K)
    if null and not paths_out:
        _fail("--null goes with --paths (NUL-terminated paths for xargs -0)")
    if show is not None:
        show = check_target(show, (".png", ".jpg", ".jpeg"))
    if html_out is not None:
        html_out = check_target(html_out, (".html", ".htm"))
    filters = Filters(
        path_glob=path_glob,
        path_prefix=os.path.abspath(os.path.expanduser(path_prefix)) if path_prefix else None,  # as ingest stores paths
        captured_after=_parse_time(captured_after, "--taken-after"),
        captured_before=_parse_time(captured_before, "--taken-before"),
        modified_after=_parse_time(modified_after, "--modified-after"),
        modified_before=_parse_time(modified_before, "--modified-before"),
        min_score=min_score,
    )
    q = SearchQuery(
        text=text,
        image=str(image) if image else None,
        box=Box.parse(box) if box is not None else None,
        negative=negative,
        k=top,
        by=by,
        filters=filters,
        weights=FusionWeights(global_=w_global, region=w_region, negative=w_negative),
        text_path=text_path,
    )
    info = QueryInfo()
    with Library.open(library, read_only=True, device=device) as lib:
        hits = lib.search(query=q, info=info)
    console = _console(json_out or paths_out)  # stdout holds only the JSON or the paths
    for notice in info.notices:
        console.print(_text(f"notice: {notice}"))
    if filters.path_prefix and not os.path.isdir(filters.path_prefix):
        console.print(_text(f"warning: --under {filters.path_prefix}: no such folder on disk"))
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "query": {
                        "text": text,
                        "image": str(image) if image else None,
                        "box": box,
                        "not": negative,
                        "by": by,
                        "k": top,
                        "text_path": info.text_path,
                        "region_walk": info.region_walk,
                    },
                    "results": [h.to_dict() for h in hits],
                },
                indent=2,
            )
        )
    elif paths_out:
        _print_paths([h.path for h in hits], null)
    else:
        _print_hits(console, hits)
    if show or html_out:
        from fgsearch.render import RenderItem, contact_sheet, html_page

        items = [RenderItem(h.path, f"#{h.rank} · score {h.score:.3f}", h.box) for h in hits]
        title = text or (f"image {image}" if image else "")
        if show:
            contact_sheet(items, show, title=title)
            console.print(_text(f"wrote {show}"))
        if html_out:
            html_page(items, html_out, title=f"fgsearch: {title}")
            console.print(_text(f"wrote {html_out}"))


def _print_paths(paths: list[str], null: bool) -> None:
    """One path per line, control characters escaped; or, with ``null``, the exact bytes + NUL."""
    import os

    if null:
        out = sys.stdout.buffer
        for p in paths:
            out.write(os.fsencode(p) + b"\0")
        out.flush()
        return
    for p in paths:
        typer.echo(_safe(p))


def _print_hits(console: Any, hits: list[Any]) -> None:
    """The result table: numbers in fixed columns, the path last and whole (a long path runs on and
    the terminal wraps it; it is never cut or folded mid-name, on a terminal or in a pipe)."""
    if not hits:
        console.print("no results")
        return
    console.print(f"{'rank':>4}  {'score':>6}  {'global':>6}  {'region':>6}  {'box (x1,y1,x2,y2)':<19}  path")
    for h in hits:
        bx = ",".join(f"{v:.2f}" for v in h.box.as_tuple()) if h.box else "-"
        rs = f"{h.region_score:.3f}" if h.region_score is not None else "-"
        gs = f"{h.global_score:.3f}" if h.global_score is not None and h.global_score == h.global_score else "-"
        line = f"{h.rank:>4}  {h.score:>6.3f}  {gs:>6}  {rs:>6}  {bx:<19}  {_safe(h.path)}"
        console.print(_text(line), soft_wrap=True)


@app.command()
@_errors
def status(
    library: Path | None = LIBRARY_OPT,
    failed: bool = typer.Option(False, "--failed", help="List every file that could not be indexed, with the reason."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Counts, model, backend, sizes and failures of a library."""
    import json

    from fgsearch.library import Library

    with Library.open(library, read_only=True) as lib:
        st = lib.status()
        fails = lib.failures() if failed else []
    if json_out:
        if failed:
            st["failures"] = [{"path": p, "reason": r} for p, r in fails]
        typer.echo(json.dumps(st, indent=2, default=str))
        return
    if failed:
        for p, r in fails:
            typer.echo(f"{_safe(p)}\t{_safe(r)}")
        return
    console = _console()
    console.print(_text(f"library  {st['library']}"), highlight=False)
    console.print(_text(f"model    {st['model']} (dim {st['dim']}, ref {st['model_ref']})"), highlight=False)
    console.print(
        f"backend  {st['backend']['kind']}   regions {st['regions']['proposer']} (max {st['regions']['max_regions']})",
        highlight=False,
    )
    for k, v in st["counts"].items():
        console.print(f"{k:<16} {v}", highlight=False)
    console.print(f"vectors  global {st['vectors']['global']}, regions {st['vectors']['regions']}", highlight=False)
    console.print(_text(_disk_line(Path(st["library"]), st)), highlight=False)


def _size(n: int) -> str:
    x, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if x < 1000 or unit == "GB":
            break
        x /= 1000
    return f"{x:.0f} B" if unit == "B" else f"{x:.1f} {unit}"


def _disk_line(lib_dir: Path, st: dict[str, Any]) -> str:
    """Sizes on disk: the whole library folder, its catalog and each vector index."""
    total = sum(f.stat().st_size for f in lib_dir.rglob("*") if f.is_file() and not f.is_symlink())
    catalog = sum(f.stat().st_size for f in lib_dir.glob("catalog.sqlite*") if f.is_file())
    parts = [f"catalog {_size(catalog)}"]
    for name, label in (("global", "global"), ("regions", "region")):
        n = st.get("index", {}).get(name, {}).get("bytes_on_disk")
        parts.append(f"{label} index {_size(n) if n is not None else 'not on disk'}")
    return f"disk     {_size(total)}: " + ", ".join(parts)


@app.command()
@_errors
def doctor(
    library: Path | None = LIBRARY_OPT,
    repair: bool = typer.Option(False, "--repair", help="Fix disagreements (remove orphan vectors, re-queue images)."),
) -> None:
    """Check that the catalog and the vector indexes agree and that index files match their checksums."""
    from fgsearch.library import Library

    with Library.open(library, read_only=not repair, create=False, rebuild_damaged=repair) as lib:
        rep = lib.doctor(repair=repair)
    for name in ("global", "regions"):
        r = rep[name]
        typer.echo(
            f"{name}: catalog {r['catalog']}, index {r['index']}, orphan vectors {r['orphan_vectors']}, "
            f"missing vectors {r['missing_vectors']}, damaged vectors {r['damaged_vectors']}"
        )
    for f in rep["damaged_files"]:
        typer.echo(f"damaged file (checksum mismatch): {f}")
    if rep["consistent"]:
        typer.echo("ok: catalog and indexes agree")
    elif rep["repaired"]:
        typer.echo("repaired: run `fgsearch index` again to re-embed images whose vectors were missing")
    else:
        typer.echo("catalog and indexes disagree: run `fgsearch doctor --repair`")
        raise typer.Exit(1)


@app.command("make-data")
@_errors
def make_data(
    kind: str = typer.Argument(..., help="Dataset to generate: fineshapes."),
    out: Path = typer.Argument(..., help="Output folder (FineHARD layout)."),
    n: int = typer.Option(2000, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same data)."),
    heldout: float = typer.Option(0.1, "--heldout", help="Fraction written to jsonfiles/heldout.json."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a FineShapes dataset already in OUT (other files are never touched)."
    ),
) -> None:
    """Generate a synthetic fine-grained dataset (FineShapes) in FineHARD format."""
    if kind != "fineshapes":
        _fail(f"unknown dataset {kind!r}; available: fineshapes")
    from fgsearch.trainer.fineshapes import make_fineshapes

    path = make_fineshapes(out, n=n, seed=seed, heldout=heldout, overwrite=overwrite)
    typer.echo(_safe(f"wrote {n} images to {path} (jsonfiles/train.json, jsonfiles/heldout.json, images/)"))


@app.command()
@_errors
def train(
    data: str = typer.Option(
        ..., "--data", help="finehard (see --data-root), a FineHARD folder, or a .json/.jsonl file."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: the final model (usable as --model) and checkpoints."),
    data_root: Path | None = typer.Option(None, "--data-root", help="FineHARD location (or FGSEARCH_FINEHARD)."),
    init: str = typer.Option(
        "tiny",
        "--init",
        help="tiny (fresh small FG-CLIP), tiny-fgclip2 (fresh small FG-CLIP 2, its tokenizer trained on the "
        "data's texts), a registry name, a checkpoint dir, hf-hub:ORG/NAME, or openai-clip:DIR.",
    ),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps in all (a resumed run stops at the same step)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Image-text pairs per batch (per process)."),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate (AdamW)."),
    weight_decay: float = typer.Option(
        0.1, "--weight-decay", help="AdamW weight decay (not on norms, biases and embeddings)."
    ),
    warmup: int = typer.Option(100, "--warmup", help="Linear warmup steps, then cosine decay."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Batches per optimizer step."),
    clip_grad: float = typer.Option(1.0, "--clip-grad", help="Gradient norm clip (0: off)."),
    freeze: str = typer.Option("none", "--freeze", help="none, vision, text, all-but-projections."),
    losses: str = typer.Option("global,region,hardneg", "--losses", help="Comma list of global, region, hardneg."),
    region_weight: float = typer.Option(0.1, "--region-weight", help="Weight of the region loss (paper: 0.1)."),
    hardneg_weight: float = typer.Option(
        0.5, "--hardneg-weight", help="Weight of the hard-negative loss (paper: 0.5)."
    ),
    save_every: int = typer.Option(500, "--save-every", help="Checkpoint every N steps."),
    eval_every: int = typer.Option(500, "--eval-every", help="Held-out evaluation every N steps."),
    seed: int = typer.Option(0, "--seed", help="Random seed (data order and a fresh model's weights)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the latest checkpoint in --out."),
    tiny_image_size: int = typer.Option(96, "--tiny-image-size", help="With --init tiny or tiny-fgclip2: input size."),
    tiny_patch: int = typer.Option(12, "--tiny-patch", help="With --init tiny or tiny-fgclip2: patch size."),
    tiny_width: int = typer.Option(
        128, "--tiny-width", help="With --init tiny: vision width (tiny-fgclip2: both towers' width)."
    ),
    tiny_layers: int = typer.Option(
        4, "--tiny-layers", help="With --init tiny: vision layers (tiny-fgclip2: both towers)."
    ),
) -> None:
    """Fine-tune FG-CLIP (global, region and hard-negative losses); torchrun for several GPUs."""
    from fgsearch.trainer import TrainConfig
    from fgsearch.trainer import train as run_train

    cfg = TrainConfig(
        data=data,
        out=str(out),
        data_root=str(data_root) if data_root else None,
        init=init,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        grad_accum=grad_accum,
        clip_grad=clip_grad,
        freeze=freeze,
        losses=tuple(x.strip() for x in losses.split(",") if x.strip()),
        save_every=save_every,
        eval_every=eval_every,
        seed=seed,
        device=device,
        resume=resume,
        tiny_image_size=tiny_image_size,
        tiny_patch=tiny_patch,
        tiny_width=tiny_width,
        tiny_layers=tiny_layers,
    )
    from contextlib import ExitStack

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = _console()
    with ExitStack() as stack:
        live: list[tuple[Progress, Any]] = []  # the bar starts with the first step: none before an error

        def progress(step: int, total: int, m: dict[str, float]) -> None:
            if not live:
                columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
                bar = stack.enter_context(Progress(*columns, TimeRemainingColumn(), console=console))
                live.append((bar, bar.add_task("train", total=total, completed=step - 1, info="")))
            bar, task = live[0]
            bar.update(task, completed=step, info=f"loss {m.get('loss', float('nan')):.3f}")

        def notice(message: str) -> None:
            console.print(message, highlight=False, markup=False)

        path = run_train(cfg, progress=progress, notice=notice)
    typer.echo(_safe(f"model saved in {path} (use it with --model {path}); log: {path / 'log.jsonl'}"))


@app.command()
@_errors
def demo(
    folder: Path = typer.Argument(
        Path("fgsearch-demo"), help="Where to write the photos, the library and the pictures."
    ),
    n: int = typer.Option(60, "--n", help="Number of generated photos."),
) -> None:
    """Offline demo: generate FineShapes photos, index them with the shipped demo model, run queries."""
    from fgsearch.library import Library
    from fgsearch.model import REGISTRY
    from fgsearch.render import RenderItem, contact_sheet, html_page
    from fgsearch.trainer.fineshapes import EXAMPLE_QUERIES, make_fineshapes

    model_dir = REGISTRY["demo"].local_dir
    data = make_fineshapes(folder / "photos", n=n, seed=1234, heldout=0, overwrite=True)  # its own photos
    console = _console()
    with Library.open(folder / "library", model=str(model_dir), device="cpu") as lib:
        rep = lib.index(str(data / "images"))
        console.print(f"indexed {rep.indexed} photos ({rep.regions} regions) in {rep.seconds:.1f}s", highlight=False)
        from rich.table import Table

        for i, q in enumerate(EXAMPLE_QUERIES):
            hits = lib.search(q, k=4)
            table = Table("rank", "score", "path", "box", title=f"query: {q}")
            for h in hits:
                box = ",".join(f"{v:.2f}" for v in h.box.as_tuple()) if h.box else "-"
                table.add_row(str(h.rank), f"{h.score:.3f}", str(Path(h.path).relative_to(folder.resolve())), box)
            console.print(table)
            items = [RenderItem(h.path, f"#{h.rank} · score {h.score:.3f}", h.box) for h in hits]
            contact_sheet(items, folder / f"query{i + 1}.png", thumb=160, title=q)
            html_page(items, folder / f"query{i + 1}.html", title=q)
    console.print(f"pictures with the boxes drawn: {folder}/query1.png ... query{len(EXAMPLE_QUERIES)}.png (and .html)")


@app.command("eval")
@_errors
def eval_(
    task: str = typer.Argument(..., help="flickr30k, coco, dci, sharegpt4v, urban1k, fgovd, coco-boxcls, fineshapes."),
    data: Path = typer.Option(
        ..., "--data", help="Local dataset folder (or file); the error names the expected layout."
    ),
    model: str = typer.Option("fg-clip-base", "--model", "-m", help=MODEL_HELP),
    batch_size: int = typer.Option(32, "--batch-size", help="Images (or texts) per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N images (a quick check, not comparable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Reproduce the paper's benchmarks from local data; the paper's numbers are shown beside ours."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from fgsearch.eval import run_eval

    console = _console(json_out)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        result = run_eval(task, data, model=model, batch_size=batch_size, device=device, limit=limit, progress=progress)
    if json_out:
        typer.echo(result.to_json())
        return
    table = Table("metric", "ours (%)", "paper (%)", title=f"{result.settings.get('description', task)}")
    for name, ours, paper in result.rows():
        table.add_row(name, ours, paper or "-")
    console.print(table)
    for label, value in result.describe():
        console.print(f"{label}: {value}", highlight=False, markup=False)


def main() -> None:
    """Console-script entry point."""
    from fgsearch.errors import FgsearchError

    try:
        app()
    except FgsearchError as e:
        typer.echo(f"error: {_safe(str(e))}", err=True)
        sys.exit(1)


@app.command()
@_errors
def serve(
    library: Path | None = LIBRARY_OPT,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(7860, "--port", help="TCP port."),
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP + " Default: the library's own."),
    token: str | None = typer.Option(
        None, "--token", envvar="FGSEARCH_TOKEN", help="Require 'Authorization: Bearer TOKEN' on every API route."
    ),
    cors: str | None = typer.Option(None, "--cors", help="Let pages from this origin (https://host) call the API."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
) -> None:
    """Serve the library: a web page at / and a JSON API (OpenAPI at /docs); the model loads once."""
    from fgsearch.serve import run_server
    from fgsearch.serve.engine import ServeSettings

    where = str(library) if library else None
    settings = ServeSettings(library=where, model=model, device=device, host=host, port=port, token=token, cors=cors)
    typer.echo(f"fgsearch serve: loading the library and the model; then http://{host}:{port}/", err=True)
    run_server(settings)
