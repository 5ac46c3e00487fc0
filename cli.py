"""The ``fgsearch`` command: parse arguments, call the library, render the result.

Installed as ``fgsearch.console.cli``. Nothing but argument handling and presentation lives here;
heavy modules (torch, faiss, the model) are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import sys

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


def main() -> None:
    """Console-script entry point."""
    from fgsearch.errors import FgsearchError

    try:
        app()
    except FgsearchError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
