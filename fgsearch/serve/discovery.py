"""A running server announces itself; ``fgsearch query --via-server`` finds it and asks it.

``fgsearch serve`` writes ``$FGSEARCH_HOME/servers/<library id>.json`` (its URL, process id and
whether it needs a token) while it runs and removes it when it stops. A query with
``--via-server`` reads the library's id from its catalog (no model, no torch), finds the record,
and checks the server in under a second: the process is alive and ``/api/status`` names the same
library id (a ``--reindex`` gives a library a new id, so a server still holding the old build is
not asked). A dead or stale server is ignored (its record removed when the process is gone) and
the query runs here, with a notice saying why. Only text queries go to the server: an image file
is the caller's to read. This module imports nothing heavy (urllib, sqlite3 through the catalog's peek).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 0.5  # a server that does not answer its status in this time is not used
SEARCH_TIMEOUT_S = 30.0


def record_path(library_id: str) -> Path:
    from fgsearch.library_paths import data_home

    return data_home() / "servers" / f"{library_id}.json"


@contextlib.contextmanager
def announce(library_id: str, host: str, port: int, token: bool) -> Iterator[Path]:
    """Write this server's record while the block runs (removed after, unless another server
    replaced it meanwhile)."""
    url_host = "127.0.0.1" if host in ("0.0.0.0", "localhost", "::", "") else host
    url_host = f"[{url_host}]" if ":" in url_host else url_host
    rec = {"url": f"http://{url_host}:{port}", "pid": os.getpid(), "library_id": library_id, "token": token}
    path = record_path(library_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, path)
    except OSError as e:  # a read-only data home: the server runs, queries just do not find it
        logger.warning("cannot announce the server for --via-server (%s)", e)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def find_server(library_dir: Path) -> tuple[str | None, str]:
    """``(url, "")`` of a live server for this library, or ``(None, why not)``."""
    from fgsearch.catalog import peek_library_id
    from fgsearch.library_paths import CATALOG_FILE

    library_id = peek_library_id(library_dir / CATALOG_FILE)
    if not library_id:
        return None, "the library has no id yet"
    path = record_path(library_id)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, "no running fgsearch serve for this library"
    if not _alive(int(rec.get("pid", 0))):
        with contextlib.suppress(OSError):
            path.unlink()
        return None, "the server recorded for this library is not running"
    if rec.get("token") and not os.environ.get("FGSEARCH_TOKEN"):
        return None, "the server needs a token; set FGSEARCH_TOKEN"
    try:
        status = _call(str(rec["url"]) + "/api/status", None, CHECK_TIMEOUT_S)
    except (OSError, ValueError) as e:
        return None, f"the server at {rec['url']} did not answer ({e})"
    if (status.get("server") or {}).get("library_id") != library_id:
        return None, f"the server at {rec['url']} serves another build of this library"
    return str(rec["url"]), ""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _call(url: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    token = os.environ.get("FGSEARCH_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:200]
        raise ValueError(f"HTTP {e.code}: {detail}") from e


def search_via_server(library_dir: Path, query: Any, info: Any) -> list[Any] | None:
    """The hits of a text ``query`` (a :class:`~fgsearch.search.SearchQuery`) from a running
    server for this library, or None (with a notice in ``info`` saying why) to search here."""
    if query.image is not None:
        info.notices.append("--via-server: image queries run here (the image file is read locally)")
        return None
    url, why = find_server(library_dir)
    if url is None:
        info.notices.append(f"--via-server: {why}; searching here")
        return None
    try:
        answer = _call(url + "/api/search", _request(query), SEARCH_TIMEOUT_S)
    except (OSError, ValueError) as e:
        info.notices.append(f"--via-server: the server at {url} failed ({e}); searching here")
        return None
    info.text_path = (answer.get("query") or {}).get("text_path")
    info.notices.extend(answer.get("notices") or [])
    return [_hit(h) for h in answer.get("results") or []]


def _request(q: Any) -> dict[str, Any]:
    f = q.filters

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "text": q.text,
        "negative": q.negative,
        "by": q.by,
        "k": q.k,
        "text_path": q.text_path,
        "filters": {
            "path": f.path_glob,
            "under": f.path_prefix,
            "taken_after": iso(f.captured_after),
            "taken_before": iso(f.captured_before),
            "modified_after": iso(f.modified_after),
            "modified_before": iso(f.modified_before),
            "min_score": f.min_score,
        },
        "weights": {"global": q.weights.global_, "region": q.weights.region, "negative": q.weights.negative},
    }


def _hit(d: dict[str, Any]) -> Any:
    from fgsearch.boxes import Box
    from fgsearch.search import SearchHit

    taken = d.get("captured_at")
    return SearchHit(
        rank=int(d["rank"]),
        score=float(d["score"]),
        global_score=d.get("global_score"),
        region_score=d.get("region_score"),
        path=str(d["path"]),
        paths=tuple(d.get("paths") or ()),
        box=Box(*d["box"]) if d.get("box") else None,
        region_id=d.get("region_id"),
        image_id=int(d["image_id"]),
        width=int(d["width"]),
        height=int(d["height"]),
        captured_at=datetime.fromisoformat(taken) if taken else None,
        probability=d.get("probability"),
        region_probability=d.get("region_probability"),
    )
