"""``fgsearch serve``: an HTTP API and a web page over one library, with the model loaded once.

:mod:`fgsearch.serve.engine` does the work (search, image metadata, verified file bytes,
thumbnails) without knowing HTTP; :mod:`fgsearch.serve.app` is the FastAPI application (routes,
JSON errors, the static page in ``static/``) behind :mod:`fgsearch.serve.guard` (bearer auth, the
body cap, security headers). They need the ``serve`` extra
(``pip install 'fgsearch[serve]'``); importing this package does not import them.
"""

from __future__ import annotations

import hmac
import signal
from typing import TYPE_CHECKING

from fgsearch.errors import InputError

if TYPE_CHECKING:
    from fgsearch.serve.engine import ServeSettings

__all__ = ["check_bind", "require_extra", "run_server", "share_cores", "tokens_match"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def require_extra() -> None:
    """Fail with the install command when the serve extra is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  # image uploads
        import threadpoolctl  # noqa: F401  # BLAS threads of the searches (share_cores)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise InputError(
            f"fgsearch serve needs the serve extra ({e.name} is missing): pip install 'fgsearch[serve]'"
        ) from e


def check_bind(host: str, token: str | None) -> None:
    """Only loopback may be served without a token: anything else exposes the library to a network."""
    if host not in LOOPBACK and not token:
        raise InputError(
            "{host} {got} makes the library reachable from other machines; give {token} TOKEN "
            "(or set FGSEARCH_TOKEN) so that every request must carry it",
            field="host",
            got=host,
        )
    if token is not None and len(token) < 8:
        raise InputError("{token} must be at least 8 characters long", field="token")


def tokens_match(given: str, expected: str) -> bool:
    """Constant-time comparison (a timing difference must not reveal the token byte by byte)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def share_cores(threads: int) -> None:
    """Settings of a process whose requests share its cores: numpy's BLAS gets ``threads``
    threads. A search multiplies one query vector (the exact global index); a second BLAS thread
    does not shorten that, and its idle threads spin on the core the text forward runs on
    (bench_serve, 8 clients: server CPU per request 62 -> 38 ms, p50 1.4x lower)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")  # process-wide, from here on


def run_server(settings: ServeSettings) -> None:
    """Load the library and the model, then serve until SIGINT/SIGTERM (requests in flight finish)."""
    check_bind(settings.host, settings.token)
    require_extra()
    import torch
    import uvicorn

    from fgsearch.serve.app import create_app
    from fgsearch.serve.engine import SearchService

    threads = settings.model_thread_count()
    torch.set_num_threads(threads)  # this process is the server's own
    share_cores(threads)
    service = SearchService(settings)
    app = create_app(service)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    # uvicorn drains the requests in flight on SIGINT/SIGTERM, then raises the signal again: handled
    # here, so a server stopped on purpose exits with status 0 (not "killed by SIGTERM")
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    from fgsearch.serve.discovery import announce  # `fgsearch query --via-server` finds this server

    try:
        with announce(service.library_id, settings.host, settings.port, token=bool(settings.token)):
            uvicorn.Server(config).run()
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stopped(Exception):
    pass


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped
