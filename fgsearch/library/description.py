"""A library description that travels: one small file naming where a library's catalog is.

A library whose catalog is a PostgreSQL database is opened, on any machine, by one name: its
folder, or the description file in it (``<library>/library.json``, or a copy of that file
anywhere). The file names the catalog (a URL without a password), the environment variable its
password comes from (else libpq's ``PGPASSWORD`` or ``~/.pgpass``), and, for people and tools, the
backend and model the catalog records (the catalog's own record is what the library uses)::

    {
      "fgsearch_library": 1,
      "catalog": "postgresql+psycopg://fgsearch@db.internal:5432/photos",
      "password_env": "PHOTOS_PG_PASSWORD",
      "backend": {"kind": "qdrant", "options": {"url": "http://qdrant:6333"}},
      "model": "fg-clip-base"
    }

A password never goes into the file: one in a ``--catalog`` URL is used by that command only, and
a description holding one is refused (it would travel with every copy). A library with an SQLite
catalog has no description (``catalog.sqlite`` in its folder is the whole story).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgsearch.errors import LibraryError

if TYPE_CHECKING:
    from fgsearch.catalog import Catalog
    from fgsearch.catalog.lock import AdvisoryLock

DESCRIPTION_FILE = "library.json"
FORMAT = 1


@dataclass(frozen=True)
class CatalogRef:
    """A PostgreSQL catalog as this process reaches it: the URL (holding a password only when one
    was given on this command line) and the environment variable named for its password."""

    url: str
    password_env: str | None = None

    @property
    def public(self) -> str:
        """The URL as it may be recorded, printed and logged (no password)."""
        from fgsearch.catalog.postgres import public_url

        return public_url(self.url)

    def open(self, home: Path, *, create: bool, read_only: bool) -> Catalog:
        from fgsearch.catalog import Catalog

        return Catalog.open(self.url, create=create, read_only=read_only, password_env=self.password_env, home=home)

    def lock(self, home: Path, *, shared: bool) -> AdvisoryLock:
        """The writer lock of the library (taken by the caller)."""
        from fgsearch.catalog.lock import AdvisoryLock
        from fgsearch.catalog.postgres import connect_url

        return AdvisoryLock(connect_url(self.url, self.password_env), str(home), shared=shared)

    def same_database(self, other: CatalogRef) -> bool:
        return self.public == other.public


def locate(path: str | os.PathLike[str] | None) -> tuple[Path, CatalogRef | None]:
    """The library folder ``--library`` names (a folder, or a description file: its folder), and
    the catalog its description names (``None``: no description, an SQLite library or a new one)."""
    from fgsearch.library_paths import resolve_library_dir

    given = resolve_library_dir(path)
    if given.is_file() and given.suffix == ".json":
        return given.parent, read_description(given)
    desc = given / DESCRIPTION_FILE
    if desc.is_file():
        return given, read_description(desc)
    return given, None


def read_description(file: Path) -> CatalogRef:
    """The catalog a description file names; a file that is not one is an error naming the fix."""
    from fgsearch.catalog.postgres import is_postgres_url, parse_url, redact

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LibraryError(
            f"cannot read the library description {file} ({e}); give --library the library's folder or its "
            f"{DESCRIPTION_FILE}"
        ) from None
    if not isinstance(data, dict) or "fgsearch_library" not in data:
        raise LibraryError(f"{file} is not an fgsearch library description; give --library the library's folder")
    if data["fgsearch_library"] != FORMAT:
        raise LibraryError(f"{file} is a library description of format {data['fgsearch_library']}; upgrade fgsearch")
    url = data.get("catalog")
    if not isinstance(url, str) or not is_postgres_url(url):
        raise LibraryError(f'{file} names no PostgreSQL catalog ("catalog": "postgresql+psycopg://...")')
    if parse_url(url).password is not None:
        raise LibraryError(
            f"the library description {file} holds a password ({redact(url, url)}); remove it from the file and "
            'give it through PGPASSWORD, ~/.pgpass or the variable named by "password_env"'
        )
    env = data.get("password_env")
    if env is not None and (not isinstance(env, str) or not env.isidentifier()):
        raise LibraryError(f'{file}: "password_env" must name an environment variable, got {env!r}')
    return CatalogRef(url, env)


def write_description(home: Path, ref: CatalogRef, backend: dict[str, Any], model: str) -> Path:
    """Write ``<home>/library.json`` for a new library (atomically; never a password)."""
    file = home / DESCRIPTION_FILE
    data = {"fgsearch_library": FORMAT, "catalog": ref.public, "password_env": ref.password_env}
    data |= {"backend": backend, "model": model}
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, file)
    return file
