"""The README and docs/ stay true of the code: the README's Python example runs as written, every
``fgsearch`` command they show names a real command and real options, and every relative link
(file and ``#section``) resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from _library_data import make_folder

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "bench" / "README.md", ROOT / "CHANGELOG.md"]
SCREENSHOT = ROOT / "docs" / "serve.png"


def test_readme_library_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example runs exactly as printed, with the shipped demo model, on generated photos."""
    text = README.read_text()
    block = re.search(r"## As a library\n\n```python\n(.*?)```", text, re.S)
    assert block, "README has no '## As a library' python example"
    make_folder(tmp_path / "photos", n_good=4, bad=False)
    from PIL import Image

    Image.open(next((tmp_path / "photos").glob("*.jpg"))).save(tmp_path / "query.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    assert (tmp_path / "lib" / "catalog.sqlite").exists()
    assert scope["report"].indexed == 4  # type: ignore[attr-defined]
    assert len(scope["hits"]) == 4  # type: ignore[arg-type]


def test_readme_is_short_and_shows_the_page() -> None:
    assert len(README.read_text().splitlines()) <= 250, "README is for newcomers: move details to docs/"
    assert "](docs/serve.png)" in README.read_text()
    assert SCREENSHOT.stat().st_size < 200 * 1024


def test_development_says_how_to_get_the_browser_tests_and_ci_requires_them() -> None:
    dev = README.read_text().split("## Development", 1)[1]
    assert "apt-get install chromium" in dev and "test_serve_browser.py" in dev
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'export FGSEARCH_REQUIRE_BROWSER="${FGSEARCH_REQUIRE_BROWSER:-1}"' in ci  # missing Chromium fails CI


def _commands() -> dict[str, set[str]]:
    """Each CLI command with every option spelling it accepts."""
    import typer

    from fgsearch.console.cli import app

    group = typer.main.get_command(app)
    return {
        name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for name, cmd in group.commands.items()  # type: ignore[attr-defined]
    }


def _shown_invocations(page: Path) -> list[list[str]]:
    """``fgsearch ...`` invocations in a page's shell blocks and inline code, as token lists."""
    text = page.read_text()
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = block.replace("\\\n", " ")  # continued lines
        lines += [re.sub(r"\s#\s.*$|^#.*$", "", line) for line in block.splitlines()]
    lines += re.findall(r"`(fgsearch [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    found = []
    for line in lines:
        for part in re.split(r"\|\s|&&|;", line):
            tokens = shlex.split(part.replace("[", " ").replace("]", " "), posix=True)
            if "fgsearch" in tokens:
                found.append(tokens[tokens.index("fgsearch") + 1 :])
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shown_commands_and_options_exist(page: Path) -> None:
    commands = _commands()
    for tokens in _shown_invocations(page):
        if not tokens or tokens[0].startswith("-") or tokens[0].isupper():  # --help, COMMAND, ...
            continue
        name = tokens[0]
        assert name in commands, f"{page.name}: `fgsearch {name}` is not a command"
        for tok in tokens[1:]:
            option = tok.split("=", 1)[0]
            if re.fullmatch(r"--[a-z][a-z0-9-]*|-[a-zA-Z0-9]", option):
                assert option in commands[name], f"{page.name}: `fgsearch {name}` has no option {option}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: link to {target}: no such section"


def test_benchmark_tables_are_dated() -> None:
    """Every section of bench/README.md with a table names its date, machine and commit."""
    text = (ROOT / "bench" / "README.md").read_text()
    sections = re.split(r"^##+ ", text, flags=re.M)[1:]  # after the title and the list of scripts
    tables = [s for s in sections if "|---" in s]
    assert len(tables) >= 6
    for section in tables:
        assert re.search(r"Date 20\d\d-\d\d-\d\d; machine: .+?; commit [0-9a-f]{7}", section, re.S), section[:60]
