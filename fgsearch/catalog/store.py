"""The :class:`Catalog`: opening one library's catalog file, its settings, and its parts together.

``Catalog`` is one public class built from layers, each in its own module: region lookups
(:mod:`.regions`), contents (:mod:`.contents`), files and runs (:mod:`.files`); this module adds
opening (schema creation, migration, read-only fallbacks), the settings in the ``meta`` table and
the counts ``fgsearch status`` shows.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fgsearch.catalog.connect import cannot_write_here, create_engine, now
from fgsearch.catalog.files import FileRows
from fgsearch.catalog.health import open_error_message
from fgsearch.catalog.schema import (
    SCHEMA_VERSION,
    check_tables,
    check_version,
    create_schema,
    metadata,
    migrate,
    table_names,
)
from fgsearch.errors import LibraryError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """The model a library was built with; vectors from another model are never mixed in."""

    name: str
    ref: str  # revision or checkpoint fingerprint
    dim: int
    image_size: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "dim": self.dim, "image_size": list(self.image_size)}


class Catalog(FileRows):
    """Typed access to one library's catalog (an SQLite file, or a PostgreSQL database). Writers
    are single-threaded; readers may be many."""

    def __init__(self, engine: sa.Engine, path: Path, read_only: bool, *, location: str | None = None) -> None:
        super().__init__(engine)
        self.path = path
        self.read_only = read_only
        #: where the catalog is, as shown to people: the file, or the database URL without its password
        self.location = location or str(path)

    # ---- lifecycle -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        create: bool = False,
        read_only: bool = False,
        *,
        password_env: str | None = None,
        home: Path | None = None,
    ) -> Catalog:
        """Open (or with ``create`` make) the catalog at ``path``: an SQLite file, or a PostgreSQL
        database URL (``postgresql+psycopg://...``; ``password_env`` names the environment variable
        holding its password, ``home`` the library folder the messages name). A reader in a folder
        it cannot write (a read-only mount or directory) reads an SQLite file as immutable."""
        from fgsearch.catalog.postgres import is_postgres_url

        if is_postgres_url(path):
            return cls._open_pg(str(path), create, read_only, password_env=password_env, home=home)
        p = Path(path)
        if not p.exists() and not create:
            raise LibraryError(f"no catalog at {p}; create the library with `fgsearch index PHOTOS`")
        if read_only:
            try:
                return cls._open(p, create, read_only, immutable=False)
            except LibraryError as e:
                if not cannot_write_here(e.__cause__ or e):
                    raise
            logger.info("catalog %s is in a folder that cannot be written: reading it as immutable", p)
            return cls._open(p, create, read_only, immutable=True)
        p.parent.mkdir(parents=True, exist_ok=True)
        return cls._open(p, create, read_only, immutable=False)

    @classmethod
    def _open(cls, p: Path, create: bool, read_only: bool, *, immutable: bool) -> Catalog:
        engine = create_engine(p, read_only=read_only, immutable=immutable)
        cat = cls(engine, p, read_only)
        try:
            cat._prepare_schema(create)
        except sa.exc.DatabaseError as e:
            engine.dispose()
            raise LibraryError(open_error_message(p, e)) from e
        except BaseException:
            engine.dispose()
            raise
        return cat

    @classmethod
    def _open_pg(
        cls, url: str, create: bool, read_only: bool, *, password_env: str | None, home: Path | None
    ) -> Catalog:
        from fgsearch.catalog import postgres as pgmod

        shown = pgmod.public_url(url)
        engine = pgmod.create_pg_engine(pgmod.connect_url(url, password_env), read_only=read_only)
        cat = cls(engine, (home or Path.cwd()) / "catalog.postgres", read_only, location=shown)
        try:
            cat._prepare_schema(create)
        except sa.exc.OperationalError as e:
            engine.dispose()
            raise pgmod.connection_error(e, shown) from None  # the driver's text may quote the URL
        except sa.exc.DBAPIError as e:
            engine.dispose()
            raise LibraryError(f"cannot use the catalog {shown} ({pgmod.redact(str(e.orig), url)})") from None
        except BaseException:
            engine.dispose()
            raise
        return cat

    def _prepare_schema(self, create: bool) -> None:
        if self.pg:
            from fgsearch.catalog.postgres import table_names as pg_table_names

            with self.reading() as con:
                tables = pg_table_names(con)
        else:
            with self.reading() as con:
                tables = table_names(con)
        if self._needs_tables(tables, create=create and not self.read_only):
            create_schema(self.engine)
            return
        version = int(self.get_meta().get("schema_version", 1))
        check_version(self.location, version, read_only=self.read_only)
        if version < SCHEMA_VERSION:
            with self.writing() as con:
                migrate(con, self.location, version, pg=self.pg)

    def _needs_tables(self, tables: set[str], *, create: bool) -> bool:
        """Whether the catalog needs its tables created; a database of something else is an error."""
        if not self.pg:
            return check_tables(self.path, tables, create=create)
        if "meta" in tables:
            return False
        if not create:
            raise LibraryError(
                f"the catalog database {self.location} holds no fgsearch catalog; create the library with "
                f"`fgsearch index PHOTOS --library FOLDER --catalog {self.location}`"
            )
        ours = {t.name for t in metadata.sorted_tables}
        if tables & ours:  # e.g. a creation that failed half way, or another program's "files"
            raise LibraryError(
                f"the database {self.location} already has tables named like the catalog's "
                f"({', '.join(sorted(tables & ours))}) but no catalog; give the library its own database"
            )
        return True

    def drop_tables(self) -> None:
        """PostgreSQL: drop the catalog's tables (``--reindex`` starts the database over; the file of
        an SQLite catalog is deleted instead)."""
        if not self.pg:
            raise LibraryError(f"drop_tables is for a PostgreSQL catalog; delete {self.path} instead")
        with self.writing() as con:
            con.execute("DROP TABLE IF EXISTS work, files, regions, contents, runs, meta CASCADE")

    def library_id(self) -> str | None:
        """The build id the catalog holds now (``""``: none, e.g. while a ``--reindex`` recreates it)."""
        sql = (
            "SELECT value::text FROM meta WHERE key = 'library_id'"
            if self.pg
            else ("SELECT value FROM meta WHERE key = 'library_id'")
        )
        try:
            with self.reading() as con:
                row = con.execute(sql).fetchone()
        except sa.exc.ProgrammingError:  # no meta table: a --reindex between its drop and create
            return ""
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- settings --------------------------------------------------------------------------
    def get_meta(self) -> dict[str, Any]:
        sql = "SELECT key, value::text FROM meta" if self.pg else "SELECT key, value FROM meta"
        with self.reading() as con:
            return {k: json.loads(v) for k, v in con.execute(sql)}

    def set_meta(self, **values: Any) -> None:
        sql = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        with self.writing() as con:
            con.executemany(sql, [(k, json.dumps(v)) for k, v in values.items()])

    def init_library(self, model: ModelInfo, regions: dict[str, Any], backend: dict[str, Any]) -> None:
        from fgsearch import __version__

        self.set_meta(
            model_name=model.name,
            model_ref=model.ref,
            dim=model.dim,
            image_size=list(model.image_size),
            regions=regions,
            backend=backend,
            created_at=now().isoformat(),
            fgsearch_version=__version__,
        )

    def check_model(self, model: ModelInfo) -> None:
        """Refuse a model other than the one that built the library."""
        m = self.get_meta()
        same = (
            m.get("dim") == model.dim
            and m.get("model_ref") == model.ref
            and (m.get("model_name") == model.name or bool(model.ref))
        )
        if not same:
            raise LibraryError(
                f"library {self.path.parent} was built with model {m.get('model_name')} (dim {m.get('dim')}, ref "
                f"{m.get('model_ref') or '-'}); this run uses {model.name} (dim {model.dim}, ref {model.ref or '-'}). "
                "Use the same --model, --reindex to rebuild the library, or --library to choose another"
            )

    # ---- reading ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Files (ok, failed), images and regions (confirmed: their vectors are in the indexes), images
        and regions pending (reserved by a run that has not confirmed them: one in flight, or one
        that was interrupted), bytes indexed and the catalog file's size."""
        pending = "SELECT id FROM contents WHERE state = 'pending'"
        queries = {
            "files_ok": "SELECT count(*) FROM files WHERE status = 'ok'",
            "files_failed": "SELECT count(*) FROM files WHERE status = 'failed'",
            "images": "SELECT count(*) FROM contents WHERE state = 'ok'",
            "regions": "SELECT count(*) FROM regions",
            "images_pending": "SELECT count(*) FROM contents WHERE state = 'pending'",
            "regions_pending": f"SELECT count(*) FROM regions WHERE content_id IN ({pending})",  # by its index
            "bytes_indexed": "SELECT sum(size) FROM files WHERE status = 'ok'",
        }
        with self.reading() as con:  # one read transaction: the counts agree with each other
            con.execute("BEGIN")
            out = {k: int(con.execute(q).fetchone()[0] or 0) for k, q in queries.items()}
            out["regions"] -= out["regions_pending"]
            if self.pg:
                out["catalog_bytes"] = int(con.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        if not self.pg:
            out["catalog_bytes"] = self.path.stat().st_size if self.path.exists() else 0
        return out
