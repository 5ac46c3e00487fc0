"""The ``fgsearch`` command: parse arguments, call the library, render the result.

Installed as ``fgsearch.console.cli``. Nothing but argument handling and presentation lives here;
heavy modules (torch, faiss, the model) are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


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
def models() -> None:
    """List the model registry and which models are present on this machine."""
    from rich.console import Console
    from rich.table import Table

    from fgsearch.model import REGISTRY, is_cached

    table = Table("name", "source", "image size", "present", "description")
    for spec in REGISTRY.values():
        size = "x".join(map(str, spec.image_size)) if spec.image_size else "from checkpoint"
        table.add_row(spec.name, spec.source, size, "yes" if is_cached(spec) else "no", spec.description)
    Console().print(table)
    typer.echo("Also accepted: --model PATH (a checkpoint directory) or --model hf-hub:ORG/NAME[@REVISION].")


@app.command("convert-clip")
def convert_clip(
    src: Path = typer.Argument(..., help="OpenAI CLIP checkpoint directory (transformers format)."),
    out: Path = typer.Argument(..., help="Directory to write the FG-CLIP starting point to."),
) -> None:
    """Turn an OpenAI CLIP checkpoint into an FG-CLIP starting point (248 text positions)."""
    from fgsearch.model import convert_openai_clip

    path = convert_openai_clip(src, out)
    typer.echo(f"wrote {path}")


def main() -> None:
    """Console-script entry point."""
    from fgsearch.errors import FgsearchError

    try:
        app()
    except FgsearchError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
