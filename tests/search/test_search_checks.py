"""A query that cannot be answered is refused before the model loads (issue 30.1): `fgsearch query ""`
answered `error: empty query` only after ~3 s of importing torch and loading the model. Each refusal
runs in a fresh interpreter, which then says whether it imported torch; the CLI and the library API
are both checked (the server's early refusal: tests/serve/test_serve_api.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _library_data import demo_cli_library

PROBE = r"""
import sys, json
what, lib, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = []
for args in cases:  # torch in sys.modules after each case: the first True is the case that imported it
    if what == "cli":
        from typer.testing import CliRunner
        from fgsearch.console.cli import app
        r = CliRunner().invoke(app, ["query", *args, "--library", lib])
        said, code = r.output.strip(), r.exit_code
    else:
        from fgsearch import FgsearchError, Library
        from fgsearch.search import FusionWeights, SearchQuery
        q = SearchQuery(**{k: (FusionWeights(**v) if k == "weights" else v) for k, v in args.items()})
        try:
            with Library.open(lib, read_only=True) as opened:
                opened.search(query=q)
            said, code = "answered", 0
        except FgsearchError as e:
            said, code = str(e), 1
    out.append({"said": said, "code": code, "torch": "torch" in sys.modules})
print(json.dumps(out))
"""


def _refused(what: str, lib: str, cases: list) -> list[dict]:
    """Run every case in one fresh interpreter (one start-up for all)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, what, lib, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> str:
    return demo_cli_library(tmp_path_factory.mktemp("checks"), n_good=1)


CLI_CASES = [
    ([""], "empty query: give TEXT, --image, or both"),
    (["   "], "empty query"),
    ([], "empty query"),
    (["x", "--image", "/no/such/photo.jpg"], "cannot read query image /no/such/photo.jpg: file does not exist"),
    (["x", "--min-score", "nan"], "--min-score must be a finite number"),
    (["x", "--by", "pixel"], "--by must be image or region"),
    (["x", "--text-path", "medium"], "--text-path must be short, long or box"),
    (["x", "--w-global", "0", "--w-region", "0"], "--w-global and --w-region are both 0"),
    (["x", "--box", "0,0,1,1"], "--box needs --image"),
]


def test_cli_refuses_before_importing_torch(tmp_path: Path) -> None:
    """The CLI checks the query before it opens the library: a library that does not exist is
    not even reached (then that is the error, still without torch)."""
    cases = CLI_CASES[:6]
    nowhere = str(tmp_path / "nowhere")
    for (args, message), out in zip(cases, _refused("cli", nowhere, [a for a, _ in cases]), strict=True):
        assert out["code"] == 1 and out["said"].startswith(f"error: {message}"), (args, out)
        assert not out["torch"], f"fgsearch query {args} imported torch before refusing: {out}"
    (unknown,) = _refused("cli", nowhere, [["red"]])
    assert unknown["code"] == 1 and unknown["said"].startswith("error: no library at"), unknown
    assert not unknown["torch"]


LIBRARY_CASES = [
    ({"text": ""}, "empty query: give text, image, or both"),
    ({"image": "/no/such/photo.jpg"}, "cannot read query image"),
    ({"text": "x", "k": 0}, "k must be at least 1"),
    ({"text": "x", "weights": {"global_": 0, "region": 0}}, "global_ and region are both 0"),
]


def test_library_refuses_before_importing_torch(library: str) -> None:
    outs = _refused("library", library, [q for q, _ in LIBRARY_CASES])
    for (query, message), out in zip(LIBRARY_CASES, outs, strict=True):
        assert out["code"] == 1 and out["said"].startswith(message), (query, out)
        assert not out["torch"], f"Library.search({query}) imported torch before refusing: {out}"


def test_cli_words_every_query_check_with_its_flags(tmp_path: Path) -> None:
    """In process (no torch check): each query check, worded with the CLI's flags."""
    from typer.testing import CliRunner

    from fgsearch.console.cli import app

    for args, message in CLI_CASES:
        r = CliRunner().invoke(app, ["query", *args, "--library", str(tmp_path / "nowhere")])
        assert r.exit_code == 1 and r.output.startswith(f"error: {message}"), (args, r.output)


def test_truncation_notices_reach_only_their_own_query_when_threads_encode_at_once() -> None:
    """A server encodes many queries at once: each query's notices are its own (before, the
    process-wide ``warnings.catch_warnings`` let one thread's notice land in another's, or vanish)."""
    import threading
    import time

    from fgsearch.model import load_encoder
    from fgsearch.search.encode import encode_query
    from fgsearch.search.query import QueryInfo, SearchQuery

    class Slow:  # widens the window in which two threads are inside their encodes together
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def encode_texts(self, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.01)
            out = self._inner.encode_texts(*args, **kwargs)
            time.sleep(0.01)
            return out

    enc = Slow(load_encoder("demo", device="cpu"))
    long_text = " ".join(["a red circle on a grey floor beside a blue square"] * 60)
    got: dict[str, list[list[str]]] = {"long": [], "short": []}

    def run(kind: str, text: str) -> None:
        for _ in range(15):
            info = QueryInfo()
            encode_query(enc, SearchQuery(text=text), info)
            got[kind].append(list(info.notices))

    threads = [
        threading.Thread(target=run, args=("long", long_text)),
        threading.Thread(target=run, args=("short", "a red circle")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(n == [] for n in got["short"]), got["short"]
    assert all(len(n) >= 1 and all("truncated" in m for m in n) for n in got["long"]), got["long"]
