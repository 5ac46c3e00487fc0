"""Every command's --help reads as users expect: plain metavars, help text for every option."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from fgsearch.console.cli import app

COMMAND = typer.main.get_command(app)
NAMES = sorted(COMMAND.commands)  # type: ignore[attr-defined]

# what Typer 0.27+ prints instead of TEXT / PATH / INTEGER and nothing for flags
ARTEFACTS = re.compile(r"<(?:bool|str|int|float|path|list\[[^\]]*\])>|\{\w+\}|list\[\w+\]", re.I)


@pytest.mark.parametrize("name", ["", *NAMES])
def test_help_has_no_metavar_artefacts(name: str) -> None:
    r = CliRunner().invoke(app, [name, "--help"] if name else ["--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    assert not ARTEFACTS.findall(r.output), r.output


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_has_help(name: str) -> None:
    cmd = COMMAND.commands[name]  # type: ignore[attr-defined]
    assert cmd.help, f"{name} has no description"
    bare = [p.name for p in cmd.params if not getattr(p, "help", None)]
    assert not bare, f"fgsearch {name}: no help text for {bare}"
