"""The pgvector backend: vectors in a PostgreSQL table (the catalog's database, or another).

:mod:`.index` holds :class:`PgvectorIndex`; :mod:`.build` the HNSW build and its calibration;
:mod:`.sql` the connection, errors and binary encoding; this module the descriptor,
:class:`PgvectorBackend`, which names a library's tables. psycopg is imported only when an index
is opened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..base import VectorIndex
from ..errors import IndexInputError
from ..registry import Backend, PathLike, check_config, option_fields, parse_fields
from .config import PgvectorConfig
from .index import PgvectorIndex
from .sql import check_table_name, has_password, redact

#: The table name prefix when the options name none.
_DEFAULT_TABLE = "fgsearch"


def pgvector_config(path: PathLike | None, config: Any) -> PgvectorConfig:
    """The config to connect with (a pgvector index has no path: the database is ``config.url``)."""
    cfg: PgvectorConfig = check_config("pgvector", config)
    if path is not None:
        raise IndexInputError(
            f"a pgvector index lives in PostgreSQL, not at a path ({path}); pass PgvectorConfig(url=...) and path=None"
        )
    if not cfg.url:
        raise IndexInputError("the pgvector backend needs a database: PgvectorConfig(url='postgresql://...')")
    return cfg


class PgvectorBackend(Backend):
    """Descriptor of the pgvector backend: a library's indexes are the tables ``<table>_global``
    and ``<table>_regions`` of the database ``url`` (password from ``PGPASSWORD``/``~/.pgpass``)."""

    name = "pgvector"
    config_type = PgvectorConfig
    capabilities: frozenset[str] = frozenset({"tunable_breadth", "calibration", "catalog_database"})

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        opts = parse_fields(self.name, PgvectorConfig, raw, sorted(option_fields(PgvectorConfig)))
        url = opts.get("url")
        if url and has_password(url):
            raise IndexInputError(
                f"backend pgvector: the url {redact(url)} holds a password, which the library would store; "
                "remove it from the url and set PGPASSWORD (or ~/.pgpass)"
            )
        check_table_name(f"{opts.get('table') or _DEFAULT_TABLE}_regions")
        PgvectorConfig(**opts)  # the config's own checks
        return opts

    def config_for(self, name: str, options: Mapping[str, Any]) -> PgvectorConfig:
        if not options.get("url"):
            raise IndexInputError(
                "backend pgvector: give the database, --backend-opt url=postgresql://USER@HOST/DB "
                "(or keep the library's catalog in PostgreSQL: its database is then the default)"
            )
        cfg = PgvectorConfig(**dict(options))
        return dataclasses.replace(cfg, table=f"{cfg.table}_{name}")

    def open(
        self, home: Path, name: str, dim: int, options: Mapping[str, Any], *, read_only: bool, create: bool
    ) -> VectorIndex:
        from ..api import open_index

        return open_index(
            self.name, None, config=self.config_for(name, options), dim=dim, read_only=read_only, create=create
        )

    def owned_paths(self, home: Path, options: Mapping[str, Any]) -> dict[str, Path]:
        return {}  # nothing in the library folder: a --reindex empties the tables instead

    def location(self, home: Path, options: Mapping[str, Any]) -> str:
        table = options.get("table") or _DEFAULT_TABLE
        return f"pgvector at {redact(str(options.get('url')))} (tables {table}_global, {table}_regions)"

    def create_index(self, path: PathLike | None, dim: int, config: Any) -> VectorIndex:
        return PgvectorIndex.create(pgvector_config(path, config), dim)

    def open_index(
        self, path: PathLike | None, *, read_only: bool, config: Any, dim: int | None, create: bool
    ) -> VectorIndex:
        cfg = pgvector_config(path, config)
        if create:
            if dim is None:
                raise IndexInputError("create=True needs dim")
            return PgvectorIndex.create(cfg, dim, exist_ok=True)
        return PgvectorIndex.open(cfg, read_only=read_only, dim=dim)


__all__ = ["PgvectorBackend", "PgvectorConfig", "PgvectorIndex", "pgvector_config"]
