"""Fixtures for tests that run on both catalog dialects: ``catalog_target`` (an SQLite file or a
PostgreSQL URL) and ``catalog_dir`` (a folder or a URL). Registered in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_target(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Where a test's catalog goes: a new SQLite file, or a fresh PostgreSQL database (its URL)."""
    if request.param == "sqlite":
        return tmp_path / "catalog.sqlite"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Like ``catalog_target``, as ``_new`` of test_catalog.py takes it: a folder, or a URL."""
    if request.param == "sqlite":
        return tmp_path
    return request.getfixturevalue("postgres_url")
