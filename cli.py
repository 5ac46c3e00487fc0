"""The ``fgsearch`` command line: parse the arguments, call the library, render the result.

Installed as ``fgsearch.console.cli`` (the ``fgsearch`` console script). Each command checks its
options, builds the library's own settings objects from them, calls :mod:`fgsearch` (or
:mod:`fgsearch.trainer` for ``train`` and ``make-data``) and hands the result to
:mod:`fgsearch.terminal`, which owns every output format. Library errors (``FgsearchError``)
become one ``error: ...`` line and exit code 1; nothing else is caught. Heavy modules (torch,
faiss, the model, rich) are imported inside the commands, so ``fgsearch --help`` is instant.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer

from fgsearch import cli_options as opt
from fgsearch._version import __version__
from fgsearch.terminal import safe

app = typer.Typer(
    name="fgsearch",
    help="Find things inside image collections from long, detailed descriptions (FG-CLIP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear error line and exit."""
    typer.echo(f"error: {safe(message)}", err=True)
    raise typer.Exit(code)


F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    """Turn the library's errors into one clear line and exit code 1 (Ctrl-C into 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fgsearch.errors import FgsearchError, InputError

        try:
            return fn(*args, **kwargs)
        except InputError as e:
            _fail(e.worded(opt.flag_of))  # the library's parameters named by their flags
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
    from fgsearch.model import REGISTRY, is_cached
    from fgsearch.terminal import console, print_models

    print_models(console(), list(REGISTRY.values()), is_cached)
    typer.echo("Also accepted: --model PATH (a checkpoint directory) or --model hf-hub:ORG/NAME[@REVISION].")


@app.command("convert-clip")
@_errors
def convert_clip(
    src: Path = typer.Argument(..., help="OpenAI CLIP checkpoint directory (transformers format)."),
    out: Path = typer.Argument(..., help="Directory to write the FG-CLIP starting point to."),
) -> None:
    """Turn an OpenAI CLIP checkpoint into an FG-CLIP starting point (248 text positions)."""
    from fgsearch.model import convert_openai_clip

    path = convert_openai_clip(src, out)
    typer.echo(safe(f"wrote {path}"))


# ---- index ------------------------------------------------------------------------------------------


@app.command()
@_errors
def index(
    paths: list[str] = opt.PATHS_ARG,
    library: Path | None = opt.LIBRARY,
    model: str | None = opt.INDEX_MODEL,
    backend: str | None = opt.BACKEND,
    backend_opt: list[str] = opt.BACKEND_OPT,
    qdrant_url: str | None = opt.QDRANT_URL,
    qdrant_path: Path | None = opt.QDRANT_PATH,
    catalog: str | None = opt.CATALOG,
    catalog_password_env: str | None = opt.CATALOG_PASSWORD_ENV,
    shared: bool = opt.SHARED,
    regions: str | None = opt.REGIONS,
    max_regions: int | None = opt.MAX_REGIONS,
    sidecar: str | None = opt.SIDECAR,
    include: list[str] = opt.INCLUDE,
    exclude: list[str] = opt.EXCLUDE,
    ext: list[str] = opt.EXT,
    hidden: bool = opt.HIDDEN,
    prune: bool = opt.PRUNE,
    prune_unselected: bool = opt.PRUNE_UNSELECTED,
    follow_links: bool = opt.FOLLOW_LINKS,
    retry_failed: bool = opt.RETRY_FAILED,
    reindex: bool = opt.REINDEX,
    max_megapixels: float = opt.MAX_MEGAPIXELS,
    min_side: int = opt.MIN_SIDE,
    batch_size: int = opt.INDEX_BATCH,
    workers: int = opt.WORKERS,
    fast_decode: bool = opt.FAST_DECODE,
    pipeline: str = opt.PIPELINE,
    fast_text: bool = opt.FAST_TEXT,
    ray: str | None = opt.RAY,
    gpus_per_worker: float = opt.GPUS_PER_WORKER,
    cpus_per_worker: float = opt.CPUS_PER_WORKER,
    device: str = opt.DEVICE,
    precision: str = opt.PRECISION,
    runtime: str = opt.RUNTIME,
    quiet: bool = opt.QUIET,
    json_out: bool = opt.json_flag("Print the summary as JSON."),
) -> None:
    """Index image folders or object-store URLs: global and region vectors, incremental and resumable.

    Exit status: 0 every file indexed or unchanged; 3 some files failed in this run (listed, and
    by `fgsearch status --failed`); 4 files failed and none is indexed; 1 an error stopped the run.
    """
    import json
    from functools import partial

    from fgsearch.ingest import IndexOptions
    from fgsearch.library import Library
    from fgsearch.terminal import console, index_progress, print_index_report

    opt.check_paths_exist(paths)
    opt.check_index_limits(max_megapixels, min_side, batch_size, workers)
    opt.check_max_regions(regions, max_regions, sidecar)
    bk = opt.backend_settings(backend, qdrant_url, qdrant_path, backend_opt)
    rs = opt.region_settings(regions, max_regions, sidecar)
    fast = opt.fast_path(runtime, precision)
    mapper = opt.ray_mapper(ray, workers, gpus_per_worker, cpus_per_worker, batch_size, shared)
    opts = IndexOptions(
        include=tuple(include), exclude=tuple(exclude), extensions=tuple(ext), hidden=hidden, prune=prune,
        prune_unselected=prune_unselected, follow_links=follow_links, retry_failed=retry_failed,
        batch_size=batch_size, workers=workers, max_megapixels=max_megapixels, min_side=min_side,
        fast_decode=fast_decode, pipeline=pipeline,
    )  # fmt: skip
    out = console(stderr=json_out)
    folders: list[str | os.PathLike[str]] = [str(p) for p in paths]
    open_at = partial(Library.open, catalog=catalog, catalog_password_env=catalog_password_env, shared_writer=shared)
    with (
        open_at(library, model=model, backend=bk, regions=rs, reindex=reindex, device=device, fast=fast) as lib,
        index_progress(out, show=not (quiet or json_out)) as progress,
    ):
        report = (lib.index_shared if shared else partial(lib.index, mapper=mapper))(folders, opts, progress=progress)
        text_tower = opt.prepare_fast_text(lib) if fast_text else None
    if json_out:
        typer.echo(json.dumps({**report.to_dict(), **({"fast_text": text_tower} if text_tower else {})}, indent=2))
    else:
        print_index_report(out, report)
        if text_tower:
            out.print(opt.fast_text_line(text_tower), markup=False, highlight=False)
    if opt.INDEX_EXIT[report.outcome]:  # scripts tell "some files failed" from "nothing indexed"
        raise typer.Exit(opt.INDEX_EXIT[report.outcome])


# ---- query ------------------------------------------------------------------------------------------


@app.command()
@_errors
def query(
    text: str | None = opt.TEXT_ARG,
    library: Path | None = opt.LIBRARY,
    top: int = opt.TOP,
    image: Path | None = opt.IMAGE,
    box: str | None = opt.BOX,
    negative: str | None = opt.NOT,
    by: str = opt.BY,
    path_glob: str | None = opt.PATH_GLOB,
    path_prefix: str | None = opt.UNDER,
    captured_after: str | None = opt.TAKEN_AFTER,
    captured_before: str | None = opt.TAKEN_BEFORE,
    modified_after: str | None = opt.MODIFIED_AFTER,
    modified_before: str | None = opt.MODIFIED_BEFORE,
    min_score: float | None = opt.MIN_SCORE,
    w_global: float | None = opt.W_GLOBAL,
    w_region: float | None = opt.W_REGION,
    w_negative: float = opt.W_NOT,
    text_path: str | None = opt.TEXT_PATH,
    json_out: bool = opt.json_flag("Print results as JSON (schema in README)."),
    paths_out: bool = opt.PATHS_OUT,
    null: bool = opt.NULL,
    show: Path | None = opt.SHOW,
    html_out: Path | None = opt.HTML,
    device: str = opt.DEVICE_SHORT,
    via_server: bool = opt.VIA_SERVER,
    precision: str = opt.PRECISION,
    runtime: str = opt.RUNTIME,
) -> None:
    """Search the library: ranked images and the matching region."""
    from fgsearch.boxes import Box
    from fgsearch.library import Library
    from fgsearch.search import FusionWeights, QueryInfo, SearchQuery, check_query
    from fgsearch.terminal import console, hits_json, plain, print_hits, print_paths, write_pictures

    opt.check_query(top, paths_out, null)
    show, html_out = opt.picture_targets(show, html_out)
    taken, modified = (captured_after, captured_before), (modified_after, modified_before)
    filters = opt.filters(path_glob, path_prefix, taken, modified, min_score)
    q = SearchQuery(
        text=text, image=str(image) if image else None, box=Box.parse(box) if box is not None else None,
        negative=negative, k=top, by=by, filters=filters, text_path=text_path,
        weights=FusionWeights(global_=w_global, region=w_region, negative=w_negative),
    )  # fmt: skip
    check_query(q)  # before the library and the model are loaded
    info = QueryInfo()
    hits = opt.via_server(library, q, info) if via_server else None
    notes: list[str] = []
    if hits is None:
        fast = opt.fast_path(runtime, precision)
        with Library.open(library, read_only=True, device=device, text_only=image is None, fast=fast) as lib:
            hits = lib.search(query=q, info=info)
            notes = lib.notes
    out = console(stderr=json_out or paths_out)  # stdout holds only the JSON or the paths
    for notice in [*notes, *info.notices]:
        out.print(plain(f"notice: {notice}"))
    if filters.path_prefix and not os.path.isdir(filters.path_prefix):
        out.print(plain(f"warning: --under {filters.path_prefix}: no such folder on disk"))
    if json_out:
        from fgsearch.scan import display_path

        shown = display_path(str(image)) if image else None
        asked = {"text": text, "image": shown, "box": box, "not": negative, "by": by, "k": top}
        typer.echo(hits_json({**asked, "text_path": info.text_path, "region_walk": info.region_walk}, hits))
    elif paths_out:
        print_paths([h.path for h in hits], null)
    else:
        print_hits(out, hits)
    write_pictures(out, hits, text or (f"image {image}" if image else ""), show, html_out)


# ---- status, doctor ---------------------------------------------------------------------------------
@app.command()
@_errors
def status(
    library: Path | None = opt.LIBRARY,
    failed: bool = typer.Option(False, "--failed", help="List every file that could not be indexed, with the reason."),
    json_out: bool = opt.json_flag("Print as JSON."),
) -> None:
    """Counts, model, backend, sizes and failures of a library."""
    import json

    from fgsearch.library import Library
    from fgsearch.terminal import console, print_status

    with Library.open(library, read_only=True) as lib:
        st = lib.status()
        fails = lib.failures() if failed else []
    if json_out:
        if failed:
            from fgsearch.scan import display_path

            st["failures"] = [{"path": display_path(p), "reason": r} for p, r in fails]
        typer.echo(json.dumps(st, indent=2, default=str))
    elif failed:
        for p, r in fails:
            typer.echo(f"{safe(p)}\t{safe(r)}")
    else:
        print_status(console(), st)


@app.command()
@_errors
def doctor(
    library: Path | None = opt.LIBRARY,
    repair: bool = typer.Option(
        False, "--repair", help="Salvage a damaged catalog, fix disagreements, re-embed what was lost."
    ),
    full: bool = typer.Option(False, "--full", help="SQLite's full integrity_check (slower) instead of quick_check."),
) -> None:
    """Check the catalog file, that it and the vector indexes agree, and the index files' checksums."""
    from fgsearch.library.repair import examine
    from fgsearch.terminal import doctor_lines

    rep = examine(library, repair=repair, full=full)
    for line in doctor_lines(rep):
        typer.echo(safe(line))
    if not rep["catalog_check"]["ok"] and not rep["repaired"] and rep["salvage"] is None:
        typer.echo(f"the catalog is damaged: run `{rep['advice']}` to salvage it")
        raise typer.Exit(1)
    if rep["consistent"] and rep["salvage"] is None:
        typer.echo("ok: catalog and indexes agree")
    elif rep["repaired"] or rep["salvage"] is not None:
        more = f": run `{rep['advice']}` to re-embed the images whose vectors were lost" if rep["advice"] else ""
        typer.echo(safe(f"repaired{more}"))
    else:
        typer.echo(f"catalog and indexes disagree: run `fgsearch doctor --repair --library {rep['library']}`")
        raise typer.Exit(1)


# ---- training data and training ---------------------------------------------------------------------
@app.command("make-data")
@_errors
def make_data(
    kind: str = typer.Argument(..., help="Dataset to generate: fineshapes."),
    out: Path = typer.Argument(..., help="Output folder (FineHARD layout)."),
    n: int = typer.Option(2000, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same data)."),
    heldout: float = typer.Option(0.1, "--heldout", help="Fraction written to jsonfiles/heldout.json."),
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Generate a synthetic fine-grained dataset (FineShapes) in FineHARD format."""
    if kind != "fineshapes":
        _fail(f"unknown dataset {kind!r}; available: fineshapes")
    from fgsearch.trainer.fineshapes import make_fineshapes

    path = make_fineshapes(out, n=n, seed=seed, heldout=heldout, overwrite=overwrite)
    typer.echo(safe(f"wrote {n} images to {path} (jsonfiles/train.json, jsonfiles/heldout.json, images/)"))


@app.command()
@_errors
def train(
    data: str = opt.DATA,
    out: Path = opt.OUT,
    data_root: Path | None = opt.DATA_ROOT,
    init: str = opt.INIT,
    steps: int = opt.STEPS,
    batch_size: int = opt.TRAIN_BATCH,
    lr: float = opt.LR,
    weight_decay: float = opt.WEIGHT_DECAY,
    warmup: int = opt.WARMUP,
    grad_accum: int = opt.GRAD_ACCUM,
    clip_grad: float = opt.CLIP_GRAD,
    freeze: str = opt.FREEZE,
    losses: str = opt.LOSSES,
    region_weight: float = opt.REGION_WEIGHT,
    hardneg_weight: float = opt.HARDNEG_WEIGHT,
    save_every: int = opt.SAVE_EVERY,
    eval_every: int = opt.EVAL_EVERY,
    seed: int = opt.TRAIN_SEED,
    device: str = opt.DEVICE,
    resume: bool = opt.RESUME,
    tiny_image_size: int = opt.TINY_IMAGE_SIZE,
    tiny_patch: int = opt.TINY_PATCH,
    tiny_width: int = opt.TINY_WIDTH,
    tiny_layers: int = opt.TINY_LAYERS,
) -> None:
    """Fine-tune FG-CLIP (global, region and hard-negative losses); torchrun for several GPUs."""
    from fgsearch.terminal import console, train_progress
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
        losses=opt.loss_names(losses),
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
    term = console()
    notice = functools.partial(term.print, highlight=False, markup=False)  # messages are plain text
    with train_progress(term) as progress:
        path = run_train(cfg, progress=progress, notice=notice)
    typer.echo(safe(f"model saved in {path} (use it with --model {path}); log: {path / 'log.jsonl'}"))


# ---- demo, eval, serve ------------------------------------------------------------------------------
@app.command()
@_errors
def demo(
    folder: Path = opt.DEMO_FOLDER_ARG,
    n: int = typer.Option(60, "--n", help="Number of generated photos."),
) -> None:
    """Offline demo: generate FineShapes photos, index them with the shipped demo model, run queries."""
    from fgsearch.trainer.demo import run_demo

    run_demo(folder, n)


@app.command("eval")
@_errors
def eval_(
    task: str = typer.Argument(..., help="flickr30k, coco, dci, sharegpt4v, urban1k, fgovd, coco-boxcls, fineshapes."),
    data: Path = opt.EVAL_DATA,
    model: str = typer.Option("fg-clip-base", "--model", "-m", help=opt.MODEL_HELP),
    batch_size: int = typer.Option(32, "--batch-size", help="Images (or texts) per forward pass."),
    device: str = opt.DEVICE,
    precision: str = opt.PRECISION,
    runtime: str = opt.RUNTIME,
    limit: int | None = typer.Option(
        None, "--limit", help="Only the first N images (a quick check; not comparable when that leaves data out)."
    ),
    json_out: bool = opt.json_flag("Print the result as JSON."),
) -> None:
    """Reproduce the paper's benchmarks from local data; the paper's numbers are shown beside ours."""
    from fgsearch.eval import run_eval
    from fgsearch.terminal import console, print_eval, stage_progress

    out = console(stderr=json_out)
    with stage_progress(out) as progress:
        fast = opt.fast_path(runtime, precision)
        result = run_eval(task, data, model, batch_size, device, limit, progress, fast=fast)
    if json_out:
        typer.echo(result.to_json())
    else:
        print_eval(out, result, task)


@app.command()
@_errors
def serve(
    library: Path | None = opt.LIBRARY,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(7860, "--port", help="TCP port."),
    model: str | None = typer.Option(None, "--model", help=opt.MODEL_HELP + " Default: the library's own."),
    token: str | None = opt.TOKEN,
    cors: str | None = typer.Option(None, "--cors", help="Let pages from this origin (https://host) call the API."),
    device: str = opt.DEVICE_SHORT,
    precision: str = opt.PRECISION,
    runtime: str = opt.RUNTIME,
    decode_megapixels: float = typer.Option(
        100.0,
        "--decode-megapixels",
        help="Decoded pixels that uploads, image queries and thumbnails may hold at once (about 8 bytes "
        "each); a request that waits 5 s for its share is answered 503 with Retry-After.",
    ),
) -> None:
    """Serve the library: a web page at / and a JSON API (OpenAPI at /docs); the model loads once."""
    from fgsearch.serve import run_server
    from fgsearch.serve.engine import ServeSettings

    where = str(library) if library else None
    settings = ServeSettings(
        library=where, model=model, device=device, fast=opt.fast_path(runtime, precision), host=host, port=port,
        token=token, cors=cors, decode_megapixels=decode_megapixels,
    )  # fmt: skip
    typer.echo(f"fgsearch serve: loading the library and the model; then http://{host}:{port}/", err=True)
    run_server(settings)


def main() -> None:
    """Console-script entry point."""
    from fgsearch.errors import FgsearchError

    try:
        app()
    except FgsearchError as e:
        typer.echo(f"error: {safe(str(e))}", err=True)
        sys.exit(1)
