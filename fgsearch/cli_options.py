"""The ``fgsearch`` command line's options and their conversion into the library's settings.

``cli.py`` declares each command's parameters with the constants here (flag names, defaults and
help texts, several shared by more than one command) and turns the values into the library's own
objects with the functions here (:class:`~fgsearch.library.BackendSettings`,
:class:`~fgsearch.regions.RegionSettings`, :class:`~fgsearch.search.Filters`). Checks raise
:class:`~fgsearch.errors.InputError` naming the flag; the command prints it as one ``error:`` line.
Only ``cli.py`` imports this module (the library never does).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from fgsearch.errors import InputError, parameter_name

if TYPE_CHECKING:
    from fgsearch.library import BackendSettings
    from fgsearch.regions import RegionSettings
    from fgsearch.search import Filters

# `fgsearch index`'s exit status (docs/indexing.md#exit-status): 0 every file indexed (or unchanged),
# 1 an error stopped the run, 2 a usage error, and when files were skipped as bad (never fatal):
INDEX_EXIT = {"complete": 0, "partial": 3, "none": 4}
TOP_LIMIT = 10_000  # results per query: more is not a search, and -k 10**9 would allocate for every one
REGIONS_LIMIT = 1_024
WORKERS_LIMIT = 256
BATCH_LIMIT = 65_536

# ---- shared by several commands ---------------------------------------------------------------------
MODEL_HELP = "Model: registry name (fgsearch models), hf-hub:ORG/NAME or a checkpoint directory."
LIBRARY = typer.Option(None, "--library", "-l", help="Library directory (default: $FGSEARCH_HOME/default).")
DEVICE = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
DEVICE_SHORT = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps.")
PRECISION = typer.Option(
    "auto",
    "--precision",
    help="auto (bf16 on a CPU with native bf16, int8 with --runtime openvino, when the quality gate "
    "holds; else fp32), fp32, bf16, int8 (openvino). See docs/runtimes.md.",
)
RUNTIME = typer.Option("torch", "--runtime", help="torch, or openvino (pip install 'fgsearch[openvino]').")


def fast_path(runtime: str, precision: str) -> Any:
    """``--runtime`` + ``--precision`` -> the library's FastPath (checked: unknown names are errors)."""
    from fgsearch.library.fastpath import FastPath

    return FastPath(runtime=runtime, precision=precision)


# ---- index -----------------------------------------------------------------------------------------
PATHS_ARG = typer.Argument(..., help="Folders (or files) to index, or object-store URLs (s3://BUCKET/PREFIX...).")
INDEX_MODEL = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Default: the library's, else fg-clip-base.")
BACKEND = typer.Option(
    None,
    "--backend",
    help="Vector store for a NEW library: faiss (default), exact, qdrant, pgvector, or an installed plugin.",
)
BACKEND_OPT = typer.Option(
    [], "--backend-opt", metavar="KEY=VALUE", help="An option of the backend for a NEW library (repeatable)."
)
QDRANT_URL = typer.Option(
    None, "--qdrant-url", help="Qdrant server URL (with --backend qdrant); API key from QDRANT_API_KEY."
)
CATALOG = typer.Option(
    None,
    "--catalog",
    help="Keep a NEW library's catalog in PostgreSQL: postgresql+psycopg://USER@HOST:PORT/DB (recorded in "
    "LIBRARY/library.json without the password; give it through PGPASSWORD or --catalog-password-env).",
)
SHARED = typer.Option(
    False,
    "--shared",
    help="Index beside the library's other writers (PostgreSQL catalog, a vector store every machine reaches): "
    "each takes batches of the common work (docs/postgres.md).",
)
CATALOG_PASSWORD_ENV = typer.Option(
    None, "--catalog-password-env", metavar="VAR", help="Environment variable holding the catalog's password."
)
QDRANT_PATH = typer.Option(None, "--qdrant-path", help="Embedded Qdrant directory (with --backend qdrant).")
REGIONS = typer.Option(
    None, "--regions", help="Region proposer for a new library: auto (default), grid, none, sidecar."
)
MAX_REGIONS = typer.Option(None, "--max-regions", help="Regions per image (default 16).")
SIDECAR = typer.Option(
    None,
    "--sidecar",
    help="With --regions sidecar: a COCO instances JSON, or per-image (IMAGE.json beside each image).",
)
INCLUDE = typer.Option([], "--include", help="Glob (relative to the folder) a file must match; repeatable.")
EXCLUDE = typer.Option([], "--exclude", help="Glob of files or folders to skip; repeatable.")
EXT = typer.Option(
    [],
    "--ext",
    help="Also walk files with this extension (e.g. .heic with a Pillow plugin); repeatable. "
    "Common photo formats and every format Pillow reads are walked anyway.",
)
HIDDEN = typer.Option(False, "--hidden", help="Also index hidden files and folders.")
PRUNE = typer.Option(True, "--prune/--no-prune", help="Remove files that disappeared from the folders.")
PRUNE_UNSELECTED = typer.Option(
    False,
    "--prune-unselected",
    help="Also remove indexed files still on disk that --include/--exclude/--hidden now leave out.",
)
FOLLOW_LINKS = typer.Option(False, "--follow-links", help="Follow symbolic links that lead outside the folders given.")
RETRY_FAILED = typer.Option(False, "--retry-failed", help="Try again files that failed before and did not change.")
REINDEX = typer.Option(False, "--reindex", help="Rebuild the library from scratch (e.g. with another model).")
MAX_MEGAPIXELS = typer.Option(
    100.0, "--max-megapixels", help="Skip images larger than this (decompression-bomb guard)."
)
MIN_SIDE = typer.Option(16, "--min-side", help="Skip images smaller than this many pixels on a side.")
INDEX_BATCH = typer.Option(
    0, "--batch-size", help="Images per forward pass and per commit (0: 32 on a CPU, 256 on a GPU)."
)
WORKERS = typer.Option(
    0, "--workers", help="Decode threads (0: automatic); with --ray: Ray workers (0: one per CPU, or per GPU share)."
)
RAY = typer.Option(
    None,
    "--ray",
    metavar="ADDRESS",
    help="Index on a Ray cluster: auto ($RAY_ADDRESS, else a local cluster), HOST:PORT or ray://HOST:PORT. "
    'Needs pip install "fgsearch[ray]".',
)
GPUS_PER_WORKER = typer.Option(
    0.0, "--gpus-per-worker", help="With --ray: GPUs per Ray worker (0: embed on CPUs; 0.5: two workers per GPU)."
)
CPUS_PER_WORKER = typer.Option(
    1.0, "--cpus-per-worker", help="With --ray: CPUs per Ray worker, its decode threads (a GPU worker wants ~10)."
)
FAST_DECODE = typer.Option(
    False,
    "--fast-decode",
    help="Decode big JPEGs at a reduced scale (at least twice the model's input): much faster for "
    "multi-megapixel photos; vectors differ slightly from a full-size decode.",
)
PIPELINE = typer.Option(
    "auto",
    "--pipeline",
    help="serial: decode in threads, embed and commit in turn; overlap: decode, forward pass and commit "
    "in their own threads; device: overlap, with JPEGs decoded on the GPU (nvjpeg); auto: device on "
    "CUDA, serial elsewhere (see docs/gpu.md).",
)
FAST_TEXT = typer.Option(
    False,
    "--fast-text",
    help="Also prepare the model's text tower for cold queries without torch (ONNX Runtime; once per "
    "model, checked against torch; FG-CLIP and FG-CLIP 2; needs the fast-start extra). See docs/fast-start.md.",
)
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def prepare_fast_text(lib: Any) -> dict[str, Any]:
    """``--fast-text``: the library's model's text tower exported and checked (once per model)."""
    from fgsearch.library.settings import shared_encoder
    from fgsearch.model.fast_text import prepare_fast_text as prepare

    # exported from, and checked against, fp32 PyTorch on the CPU whatever precision indexed
    # (a bf16 or OpenVINO encoder has no fp32 torch graph to export)
    return prepare(shared_encoder(lib.model, "cpu", precision="fp32", runtime="torch"))


VIA_SERVER = typer.Option(
    False,
    "--via-server",
    help="Ask a running `fgsearch serve` of this library (found by its library id; a dead or stale "
    "one is ignored within a second) instead of loading the model here. Text queries only.",
)


def via_server(library: Path | None, query: Any, info: Any) -> list[Any] | None:
    """``--via-server``: the hits from a running server of the library, or None to search here."""
    from fgsearch.library_paths import resolve_library_dir
    from fgsearch.serve.discovery import search_via_server

    return search_via_server(resolve_library_dir(library), query, info)


def fast_text_line(meta: dict[str, Any]) -> str:
    """What ``--fast-text`` prepared, for the index summary."""
    verdict = "queries use it" if meta.get("passed") else "refused: queries keep torch"
    return (
        f"fast text path: cosine to torch >= {meta.get('cosine_min')}, top-10 overlap {meta.get('top10')} "
        f"on {meta.get('texts')} texts; {verdict}"
    )


# ---- query -----------------------------------------------------------------------------------------
TEXT_ARG = typer.Argument(None, help="What to find; any length (up to 248 tokens are read).")
TOP = typer.Option(10, "-k", "--top", help="Number of results.")
IMAGE = typer.Option(None, "--image", help="Query by an image (combined with TEXT when both are given).")
BOX = typer.Option(None, "--box", help="With --image: query by this region x1,y1,x2,y2 (normalised).")
NOT = typer.Option(None, "--not", help="Push down images that match this text.")
BY = typer.Option("image", "--by", help="image: rank images (best box each); region: rank regions.")
PATH_GLOB = typer.Option(None, "--path", help="Only paths matching this glob (e.g. '*/2024/*').")
UNDER = typer.Option(None, "--under", help="Only paths under this folder.")
TAKEN_AFTER = typer.Option(None, "--taken-after", help="Capture time (EXIF) on or after YYYY-MM-DD.")
TAKEN_BEFORE = typer.Option(None, "--taken-before", help="Capture time (EXIF) before YYYY-MM-DD.")
MODIFIED_AFTER = typer.Option(None, "--modified-after", help="File modified on or after YYYY-MM-DD.")
MODIFIED_BEFORE = typer.Option(None, "--modified-before", help="File modified before YYYY-MM-DD.")
MIN_SCORE = typer.Option(None, "--min-score", help="Drop results scoring below this.")
W_GLOBAL = typer.Option(
    None, "--w-global", help="Weight of the whole-image score [default: 0.25 text, 1 image, 0 box]."
)
W_REGION = typer.Option(
    None, "--w-region", help="Weight of the best-region score [default: 0.75 text, 0 image, 1 box]."
)
W_NOT = typer.Option(0.5, "--w-not", help="Weight of the --not penalty.")
TEXT_PATH = typer.Option(
    None, "--text-path", help="Force one text walk: short or long (FG-CLIP 2 also has box, its region walk)."
)
PATHS_OUT = typer.Option(
    False, "--paths", help="Print one path per line (control characters escaped as \\xNN; see --null)."
)
NULL = typer.Option(
    False, "--null", "-0", help="With --paths: end each path with a NUL byte, exactly as on disk (xargs -0)."
)
SHOW = typer.Option(None, "--show", help="Write a contact sheet with the boxes drawn (.png, or .jpg for JPEG).")
HTML = typer.Option(None, "--html", help="Write a self-contained HTML page of the results.")

# ---- train -----------------------------------------------------------------------------------------
DATA = typer.Option(..., "--data", help="finehard (see --data-root), a FineHARD folder, or a .json/.jsonl file.")
OUT = typer.Option(..., "--out", help="Output folder: the final model (usable as --model) and checkpoints.")
DATA_ROOT = typer.Option(None, "--data-root", help="FineHARD location (or FGSEARCH_FINEHARD).")
INIT = typer.Option(
    "tiny",
    "--init",
    help="tiny (fresh small FG-CLIP), tiny-fgclip2 (fresh small FG-CLIP 2, its tokenizer trained on the "
    "data's texts), a registry name, a checkpoint dir, hf-hub:ORG/NAME, or openai-clip:DIR.",
)
STEPS = typer.Option(1000, "--steps", help="Optimizer steps in all (a resumed run stops at the same step).")
TRAIN_BATCH = typer.Option(32, "--batch-size", help="Image-text pairs per batch (per process).")
LR = typer.Option(5e-4, "--lr", help="Peak learning rate (AdamW).")
WEIGHT_DECAY = typer.Option(0.1, "--weight-decay", help="AdamW weight decay (not on norms, biases and embeddings).")
WARMUP = typer.Option(100, "--warmup", help="Linear warmup steps, then cosine decay.")
GRAD_ACCUM = typer.Option(1, "--grad-accum", help="Batches per optimizer step.")
CLIP_GRAD = typer.Option(1.0, "--clip-grad", help="Gradient norm clip (0: off).")
FREEZE = typer.Option("none", "--freeze", help="none, vision, text, all-but-projections.")
LOSSES = typer.Option("global,region,hardneg", "--losses", help="Comma list of global, region, hardneg.")
REGION_WEIGHT = typer.Option(0.1, "--region-weight", help="Weight of the region loss (paper: 0.1).")
HARDNEG_WEIGHT = typer.Option(0.5, "--hardneg-weight", help="Weight of the hard-negative loss (paper: 0.5).")
SAVE_EVERY = typer.Option(500, "--save-every", help="Checkpoint every N steps.")
EVAL_EVERY = typer.Option(500, "--eval-every", help="Held-out evaluation every N steps.")
TRAIN_SEED = typer.Option(0, "--seed", help="Random seed (data order and a fresh model's weights).")
RESUME = typer.Option(True, "--resume/--no-resume", help="Continue from the latest checkpoint in --out.")
TINY_IMAGE_SIZE = typer.Option(96, "--tiny-image-size", help="With --init tiny or tiny-fgclip2: input size.")
TINY_PATCH = typer.Option(12, "--tiny-patch", help="With --init tiny or tiny-fgclip2: patch size.")
TINY_WIDTH = typer.Option(
    128, "--tiny-width", help="With --init tiny: vision width (tiny-fgclip2: both towers' width)."
)
TINY_LAYERS = typer.Option(4, "--tiny-layers", help="With --init tiny: vision layers (tiny-fgclip2: both towers).")

# ---- make-data, demo, eval, serve ----------------------------------------------------------------------
DEMO_FOLDER_ARG = typer.Argument(Path("fgsearch-demo"), help="Where to write the photos, the library and the pictures.")
EVAL_DATA = typer.Option(..., "--data", help="Local dataset folder (or file); the error names the expected layout.")
TOKEN = typer.Option(
    None, "--token", envvar="FGSEARCH_TOKEN", help="Require 'Authorization: Bearer TOKEN' on every API route."
)
OVERWRITE = typer.Option(
    False, "--overwrite", help="Replace a FineShapes dataset already in OUT (other files are never touched)."
)


def json_flag(help_text: str) -> Any:
    """``--json`` with the command's own help text."""
    return typer.Option(False, "--json", help=help_text)


# ---- the flag of each library parameter --------------------------------------------------------------
# An InputError names the parameters at fault by the library's names; the CLI words it with these
# flags (any other parameter ``some_name`` is the flag ``--some-name``).
FLAGS = {
    "text": "TEXT",
    "negative": "--not",
    "k": "-k/--top",
    "filters.path_glob": "--path",
    "filters.path_prefix": "--under",
    "filters.captured_after": "--taken-after",
    "filters.captured_before": "--taken-before",
    "weights.global_": "--w-global",
    "weights.region": "--w-region",
    "weights.negative": "--w-not",
    "proposer": "--regions",
}


def flag_of(field: str) -> str:
    """The command line's name for a library parameter (see :data:`FLAGS`)."""
    return FLAGS.get(field) or "--" + parameter_name(field).strip("_").replace("_", "-")


# ---- checks and conversions -------------------------------------------------------------------------
def check_range(flag: str, value: float, low: float, high: float | None = None) -> None:
    """InputError unless ``low <= value <= high`` (finite)."""
    ok = math.isfinite(value) and value >= low and (high is None or value <= high)
    if not ok:
        what = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise InputError(f"{flag} must be {what}, got {value:g}")


def check_paths_exist(paths: Sequence[str | Path]) -> None:
    """``fgsearch index``: every folder (or file) given exists (URLs are listed by the run)."""
    from fgsearch.ingest.sources import is_url

    for p in paths:
        if not is_url(str(p)) and not Path(p).exists():
            raise InputError(f"{p} does not exist; give a folder of images")


def ray_mapper(address: str | None, workers: int, gpus: float, cpus: float, batch_size: int, shared: bool) -> Any:
    """``fgsearch index --ray``: the Ray mapper, or None for a local run (``--gpus-per-worker`` and
    ``--cpus-per-worker`` need ``--ray``; without Ray installed, ``--ray`` is a one-line error
    naming the extra; ``--shared`` writers claim their own work and run locally)."""
    if address is not None and shared:
        raise InputError("--ray runs one writer (the driver); --shared runs many: give one of the two")
    if address is None:
        for flag, value, default in (("--gpus-per-worker", gpus, 0.0), ("--cpus-per-worker", cpus, 1.0)):
            if value != default:
                raise InputError(f"{flag} applies to Ray workers; add --ray auto (or a cluster address)")
        return None
    from fgsearch.ingest.ray_runner import RayMapper, RayOptions

    o = RayOptions(address=address, workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus, chunk=batch_size)
    return RayMapper(o)


def picture_targets(show: Path | None, html_out: Path | None) -> tuple[Path | None, Path | None]:
    """``--show`` and ``--html`` checked as writable files of the right type before any work."""
    from fgsearch.render import check_target

    show = check_target(show, (".png", ".jpg", ".jpeg")) if show is not None else None
    html_out = check_target(html_out, (".html", ".htm")) if html_out is not None else None
    return show, html_out


def check_index_limits(max_megapixels: float, min_side: int, batch_size: int, workers: int) -> None:
    """``fgsearch index``: decode and batching limits within range."""
    if not (math.isfinite(max_megapixels) and max_megapixels > 0):
        raise InputError(f"--max-megapixels must be a positive number, got {max_megapixels:g}")
    check_range("--min-side", min_side, 1)
    check_range("--batch-size", batch_size, 0, BATCH_LIMIT)
    check_range("--workers", workers, 0, WORKERS_LIMIT)


def _proposer(regions: str | None, sidecar: str | None) -> str:
    return regions or ("sidecar" if sidecar else "auto")


def check_max_regions(regions: str | None, max_regions: int | None, sidecar: str | None) -> None:
    """``--max-regions`` within range where the proposer cuts regions itself (auto, grid)."""
    if max_regions is not None and _proposer(regions, sidecar) in ("auto", "grid"):
        check_range("--max-regions", max_regions, 1, REGIONS_LIMIT)


def backend_settings(
    backend: str | None, qdrant_url: str | None, qdrant_path: Path | None, backend_opts: Sequence[str] = ()
) -> BackendSettings | None:
    """The vector store asked for on the command line; None keeps the library's (or the default).
    ``--qdrant-url``/``--qdrant-path`` are the qdrant backend's ``url``/``path`` options."""
    from fgsearch.library import BackendSettings
    from fgsearch.library.settings import parse_backend_options

    if not (backend or qdrant_url or qdrant_path or backend_opts):
        return None
    options: dict[str, str] = parse_backend_options(list(backend_opts))
    # stored in the library: absolute, so that it means the same from any folder later
    where = str(qdrant_path.expanduser().resolve()) if qdrant_path else None
    if (qdrant_url or where) and (backend or "qdrant") != "qdrant":
        raise InputError("--qdrant-url/--qdrant-path need --backend qdrant")
    options.update({k: v for k, v in (("url", qdrant_url), ("path", where)) if v})
    return BackendSettings(kind=backend or ("qdrant" if qdrant_url or where else "faiss"), options=options)


def region_settings(regions: str | None, max_regions: int | None, sidecar: str | None) -> RegionSettings | None:
    """The region proposer asked for on the command line; None keeps the library's (or the default)."""
    from fgsearch.regions import RegionSettings

    if not (regions or max_regions is not None or sidecar):
        return None
    proposer = _proposer(regions, sidecar)
    if sidecar and sidecar != "per-image":
        sidecar = str(Path(sidecar).expanduser().resolve())  # stored in the library: any cwd later
    return RegionSettings(proposer=proposer, max_regions=16 if max_regions is None else max_regions, sidecar=sidecar)


def parse_time(value: str | None, flag: str) -> datetime | None:
    """An ISO date or date-time option value; None stays None."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{flag} {value!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None


def filters(
    path_glob: str | None,
    under: str | None,
    taken: tuple[str | None, str | None],
    modified: tuple[str | None, str | None],
    min_score: float | None,
) -> Filters:
    """The query's filters: dates parsed, ``--under`` made absolute (as ingest stores paths)."""
    from fgsearch.search import Filters

    return Filters(
        path_glob=path_glob,
        path_prefix=os.path.abspath(os.path.expanduser(under)) if under else None,
        captured_after=parse_time(taken[0], "--taken-after"),
        captured_before=parse_time(taken[1], "--taken-before"),
        modified_after=parse_time(modified[0], "--modified-after"),
        modified_before=parse_time(modified[1], "--modified-before"),
        min_score=min_score,
    )


def check_query(top: int, paths_out: bool, null: bool) -> None:
    """``fgsearch query``: the CLI's own limits and output options (the query itself is checked by
    :func:`fgsearch.search.check_query`)."""
    check_range("-k/--top", top, 1, TOP_LIMIT)
    if null and not paths_out:
        raise InputError("--null goes with --paths (NUL-terminated paths for xargs -0)")


def loss_names(losses: str) -> tuple[str, ...]:
    """``--losses global,region``: the names, blanks dropped (TrainConfig checks them)."""
    return tuple(x.strip() for x in losses.split(",") if x.strip())
