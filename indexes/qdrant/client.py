"""The Qdrant backend's client side: importing qdrant-client, connecting to a server or the embedded
files, which errors are worth a retry, and one-line texts of its (multi-line) errors."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..config import QdrantConfig
from ..errors import BackendUnavailableError, IndexInputError, IndexLockedError

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def qdrant() -> tuple[Any, Any]:
    """``(QdrantClient, models)``, or the one-line error naming the extra to install."""
    try:
        from qdrant_client import QdrantClient, models
    except ImportError as e:
        raise BackendUnavailableError("the qdrant backend needs qdrant-client: pip install 'fgsearch[qdrant]'") from e
    return QdrantClient, models


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: connection problems, timeouts, 5xx/429 answers."""
    try:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _RETRY_STATUS
    return isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError))


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (qdrant-client's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (an embedded collection's folder)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def connect(config: QdrantConfig) -> Any:
    """A client of the configured Qdrant: a server (checked reachable) or the embedded files
    (refused while another process holds them)."""
    client_cls, _ = qdrant()
    if config.url is None and config.path is None:
        raise IndexInputError("the qdrant backend needs a path (embedded mode) or QdrantConfig(url=...)")
    if config.url is not None:
        client = client_cls(url=config.url, api_key=config.api_key, timeout=int(config.timeout_s))
        try:
            client.get_collections()
        except Exception as e:
            client.close()
            raise BackendUnavailableError(
                f"cannot reach Qdrant at {config.url}: {one_line(e)}; "
                "check the URL, API key and that the server is running"
            ) from e
        return client
    Path(config.path).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
    try:
        return client_cls(path=config.path)
    except RuntimeError as e:
        if "already accessed" in str(e):
            raise IndexLockedError(
                f"embedded Qdrant at {config.path} is open in another process; embedded mode "
                "allows one process at a time (use a Qdrant server for concurrent access)"
            ) from e
        raise
