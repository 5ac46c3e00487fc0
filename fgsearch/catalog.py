"""The SQLite catalog (SQLAlchemy): files, image contents, regions, settings, runs.

Vectors are keyed by CONTENT, not by path: several files (duplicates, or a file that moved) share
one ``contents`` row, whose id is its global-vector id; each ``regions`` row id is a region-vector
id. Ids are AUTOINCREMENT, so an id is never reused after a delete and an orphan vector left by a
crash can never be mistaken for a new image.

Durability: WAL journal with ``synchronous=NORMAL``. A killed process never loses a committed
transaction in WAL mode; an OS crash may roll back the last commits, which the ingest protocol
tolerates (unconfirmed contents stay ``pending`` and are recovered). Readers work while a writer
writes (WAL), with a busy timeout for the short moments the writer holds the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from fgsearch.boxes import Box
from fgsearch.errors import LibraryError, LibraryLockedError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_CHUNK = 30_000  # SQLite bound-parameter limit is 32,766

metadata = sa.MetaData()
meta_t = sa.Table("meta", metadata, sa.Column("key", sa.String, primary_key=True), sa.Column("value", sa.Text))
contents_t = sa.Table(
    "contents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("captured_at", sa.DateTime, nullable=True),
    sa.Column("state", sa.String(8), nullable=False),  # pending | ok
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_contents_captured", "captured_at"),
    sqlite_autoincrement=True,
)
regions_t = sa.Table(
    "regions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("content_id", sa.Integer, sa.ForeignKey("contents.id", ondelete="CASCADE"), nullable=False),
    sa.Column("x1", sa.Float, nullable=False),
    sa.Column("y1", sa.Float, nullable=False),
    sa.Column("x2", sa.Float, nullable=False),
    sa.Column("y2", sa.Float, nullable=False),
    sa.Column("proposer", sa.String(16), nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("score", sa.Float, nullable=True),  # schema v2
    sa.Index("ix_regions_content", "content_id"),
    sqlite_autoincrement=True,
)
files_t = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False, unique=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("mtime_ns", sa.Integer, nullable=False),
    sa.Column("content_id", sa.Integer, sa.ForeignKey("contents.id", ondelete="SET NULL"), nullable=True),
    sa.Column("status", sa.String(8), nullable=False),  # ok | failed
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("seen_run", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Index("ix_files_content", "content_id"),
    sqlite_autoincrement=True,
)
runs_t = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    sa.Column("summary", sa.Text, nullable=True),
    sqlite_autoincrement=True,
)


def _pk(result: Any) -> int:
    """The primary key an INSERT produced."""
    return int(result.inserted_primary_key[0])


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _migrate_1_to_2(conn: sa.Connection) -> None:
    """v2 adds a proposal score to each region."""
    conn.exec_driver_sql("ALTER TABLE regions ADD COLUMN score FLOAT")


MIGRATIONS = {1: _migrate_1_to_2}


@dataclass(frozen=True)
class ModelInfo:
    """The model a library was built with; vectors from another model are never mixed in."""

    name: str
    ref: str  # revision or checkpoint fingerprint
    dim: int
    image_size: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "dim": self.dim, "image_size": list(self.image_size)}


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    status: str


@dataclass(frozen=True)
class ContentRow:
    """An indexed image: one representative path (the first by name) and every path with its bytes."""

    id: int
    path: str
    paths: tuple[str, ...]
    width: int
    height: int
    captured_at: datetime | None


def _under(root: str) -> Any:
    """SQL condition: a file row at ``root`` or inside it."""
    root = root.rstrip(os.sep) or os.sep
    prefix = root if root.endswith(os.sep) else root + os.sep  # "/" stays "/"
    return sa.or_(files_t.c.path == root, sa.func.substr(files_t.c.path, 1, len(prefix)) == prefix)


def _sqlite_datetime(value: str | None) -> datetime | None:
    """A DateTime column read through the raw SQLite connection (SQLAlchemy stores ISO text)."""
    return None if value is None else datetime.fromisoformat(value)


def _groups(keys: Any) -> list[tuple[int, int, int]]:
    """``(key, start, end)`` of each run of equal consecutive ``keys`` (a 1-D int array)."""
    import numpy as np

    if not len(keys):
        return []
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    return [(int(keys[a]), int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def read_only_uri(path: Path, *, immutable: bool = False) -> str:
    """An sqlite3 URI that opens ``path`` for reading only (any folder name: the path is quoted).

    ``immutable`` is for a library on a read-only mount or in a folder this user cannot write:
    SQLite then needs no ``-shm`` file (which it could not create), and reads the database file as
    it is (a clean writer leaves nothing in the WAL when it closes)."""
    return f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")


def cannot_write_here(err: BaseException) -> bool:
    """Whether an sqlite error on a read-only open means the folder or mount is not writable."""
    msg = str(err).lower()
    return "readonly database" in msg or "unable to open database file" in msg


class WriteLock:
    """Exclusive writer lock on ``<library>/lock`` (flock: released by the kernel if the holder dies)."""

    def __init__(self, lib_dir: Path) -> None:
        self.path = Path(lib_dir) / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LibraryError(
                f"cannot open the lock file {self.path}: {e.strerror or e}; check the --library folder"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)  # e.g. ENOLCK: the filesystem has no locks; nobody holds this one
                raise LibraryError(
                    f"cannot lock {self.path}: {e.strerror or e}; put the library on a local disk (--library)"
                ) from e
            try:
                pid = os.pread(fd, 32, 0).decode(errors="ignore").strip() or "?"
            finally:
                os.close(fd)
            raise LibraryLockedError(
                f"library {self.path.parent} is locked by PID {pid} (another fgsearch is indexing it); "
                "wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


class Catalog:
    """Typed access to one library's SQLite catalog. Writers are single-threaded; readers may be many."""

    def __init__(self, engine: sa.Engine, path: Path, read_only: bool) -> None:
        self.engine = engine
        self.path = path
        self.read_only = read_only
        self._pending_files: list[dict[str, Any]] = []
        self._pending_links: list[tuple[str, int, int, str, int]] = []
        self._pending_seen: list[tuple[list[str], int]] = []
        self.last_sweep_files = 0

    # ---- lifecycle -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], create: bool = False, read_only: bool = False) -> Catalog:
        p = Path(path)
        if not p.exists() and not create:
            raise LibraryError(f"no catalog at {p}; create the library with `fgsearch index PHOTOS`")
        # URL.create, not an f-string: a folder named "a?b", "a#b" or "a%20b" must open that folder
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
        if read_only:
            query = {"mode": "ro", "uri": "true", **({"immutable": "1"} if immutable else {})}
            url = sa.engine.URL.create("sqlite", database=f"file:{quote(str(p))}", query=query)
        else:
            url = sa.engine.URL.create("sqlite", database=str(p))
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            if not read_only:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        cat = cls(engine, p, read_only)
        try:
            cat._prepare_schema(create)
        except sa.exc.DatabaseError as e:
            engine.dispose()
            raise LibraryError(
                f"catalog {p} is not a readable SQLite database ({e.orig}); restore it from a backup or rebuild "
                f"the library with `fgsearch index PHOTOS --library {p.parent} --reindex`"
            ) from e
        except BaseException:
            engine.dispose()
            raise
        return cat

    def _prepare_schema(self, create: bool) -> None:
        with self.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        has_meta = "meta" in tables
        if not has_meta:
            if tables:
                raise LibraryError(
                    f"{self.path} is an SQLite file but not an fgsearch catalog (tables: "
                    f"{', '.join(sorted(tables)[:5])}); choose another --library folder"
                )
            if self.read_only or not create:
                raise LibraryError(
                    f"catalog {self.path} is empty (its records are lost); rebuild the library with "
                    f"`fgsearch index PHOTOS --library {self.path.parent} --reindex --model MODEL`"
                )
            with self.engine.begin() as conn:
                metadata.create_all(conn)
                conn.execute(sa.insert(meta_t).values(key="schema_version", value=json.dumps(SCHEMA_VERSION)))
            return
        version = int(self.get_meta().get("schema_version", 1))
        if version > SCHEMA_VERSION:
            raise LibraryError(
                f"catalog {self.path} has schema v{version}, newer than this fgsearch supports "
                f"(v{SCHEMA_VERSION}); upgrade fgsearch"
            )
        if version < SCHEMA_VERSION:
            if self.read_only:
                raise LibraryError(
                    f"catalog {self.path} has schema v{version}; run `fgsearch index` once to upgrade it "
                    f"to v{SCHEMA_VERSION}"
                )
            with self.engine.begin() as conn:
                # pysqlite runs DDL outside any transaction unless one is begun explicitly; without
                # this a crash between a step and the version bump would leave a half-migrated catalog
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                for v in range(version, SCHEMA_VERSION):
                    logger.info("migrating catalog %s: v%d -> v%d", self.path, v, v + 1)
                    MIGRATIONS[v](conn)
                conn.execute(
                    sa.update(meta_t).where(meta_t.c.key == "schema_version").values(value=json.dumps(SCHEMA_VERSION))
                )

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- settings --------------------------------------------------------------------------
    def get_meta(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(meta_t.c.key, meta_t.c.value)).all()
        return {k: json.loads(v) for k, v in rows}

    def set_meta(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            for k, v in values.items():
                stmt = sqlite_insert(meta_t).values(key=k, value=json.dumps(v))
                conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": stmt.excluded.value}))

    def init_library(self, model: ModelInfo, regions: dict[str, Any], backend: dict[str, Any]) -> None:
        from fgsearch import __version__

        self.set_meta(
            model_name=model.name,
            model_ref=model.ref,
            dim=model.dim,
            image_size=list(model.image_size),
            regions=regions,
            backend=backend,
            created_at=_now().isoformat(),
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

    # ---- runs ------------------------------------------------------------------------------
    def begin_run(self) -> int:
        with self.engine.begin() as conn:
            return _pk(conn.execute(sa.insert(runs_t).values(started_at=_now())))

    def end_run(self, run_id: int, summary: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(runs_t).where(runs_t.c.id == run_id).values(finished_at=_now(), summary=json.dumps(summary))
            )

    # ---- files -----------------------------------------------------------------------------
    def file_states(self, paths: Sequence[str]) -> dict[str, FileState]:
        out: dict[str, FileState] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(paths)):
                q = sa.select(files_t.c.path, files_t.c.size, files_t.c.mtime_ns, files_t.c.status).where(
                    files_t.c.path.in_(chunk)
                )
                for p, size, mtime, status in conn.execute(q):
                    out[p] = FileState(size, mtime, status)
        return out

    def record_failure(self, path: str, size: int, mtime_ns: int, reason: str, run_id: int) -> None:
        self._pending_files.append(
            {
                "path": path,
                "size": size,
                "mtime_ns": mtime_ns,
                "content_id": None,
                "status": "failed",
                "reason": reason,
                "seen_run": run_id,
            }
        )

    def mark_seen(self, paths: Sequence[str], run_id: int) -> None:
        if paths:
            self._pending_seen.append((list(paths), run_id))

    def link_file(self, path: str, size: int, mtime_ns: int, sha256: str, run_id: int) -> None:
        """Point a file at already-embedded content with the same bytes (rename, move, duplicate)."""
        self._pending_links.append((path, size, mtime_ns, sha256, run_id))

    def commit(self) -> None:
        """Write buffered failures, links and seen-marks in one transaction."""
        if not (self._pending_files or self._pending_links or self._pending_seen):
            return
        with self.engine.begin() as conn:
            rows = list(self._pending_files)
            for path, size, mtime, sha, run_id in self._pending_links:
                cid = conn.execute(
                    sa.select(contents_t.c.id).where(contents_t.c.sha256 == sha, contents_t.c.state == "ok")
                ).scalar()
                if cid is None:
                    rows.append(
                        {
                            "path": path,
                            "size": size,
                            "mtime_ns": mtime,
                            "content_id": None,
                            "status": "failed",
                            "reason": "content vanished during indexing; run again",
                            "seen_run": run_id,
                        }
                    )
                else:
                    rows.append(
                        {
                            "path": path,
                            "size": size,
                            "mtime_ns": mtime,
                            "content_id": cid,
                            "status": "ok",
                            "reason": None,
                            "seen_run": run_id,
                        }
                    )
            self._upsert_files(conn, rows)
            for paths, run_id in self._pending_seen:
                for chunk in _chunks(paths):
                    conn.execute(sa.update(files_t).where(files_t.c.path.in_(chunk)).values(seen_run=run_id))
        self._pending_files.clear()
        self._pending_links.clear()
        self._pending_seen.clear()

    @staticmethod
    def _upsert_files(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        now = _now()
        for r in rows:
            r["updated_at"] = now
        stmt = sqlite_insert(files_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["path"],
            set_={
                c: stmt.excluded[c]
                for c in ("size", "mtime_ns", "content_id", "status", "reason", "seen_run", "updated_at")
            },
        )
        for chunk in _chunks(rows, 2000):
            conn.execute(stmt, list(chunk))

    # ---- contents --------------------------------------------------------------------------
    def content_hashes(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(contents_t.c.sha256).where(contents_t.c.state == "ok")).scalars())

    def reserve_contents(self, items: Sequence[dict[str, Any]]) -> tuple[list[int], list[list[int]]]:
        """Insert contents (state ``pending``) and their regions; returns their ids (committed)."""
        now = _now()
        region_ids: list[list[int]] = []
        if not items:
            return [], []
        with self.engine.begin() as conn:
            rows = [
                {
                    "sha256": it["sha256"],
                    "width": it["width"],
                    "height": it["height"],
                    "captured_at": it.get("captured_at"),
                    "state": "pending",
                    "created_at": now,
                }
                for it in items
            ]
            ins = sa.insert(contents_t).returning(contents_t.c.id, sort_by_parameter_order=True)
            content_ids = [int(r[0]) for r in conn.execute(ins, rows)]
            region_rows = []
            for cid, it in zip(content_ids, items, strict=True):
                scores = it.get("scores") or [None] * len(it["boxes"])
                for rank, (b, sc) in enumerate(zip(it["boxes"], scores, strict=True)):
                    region_rows.append(
                        {
                            "content_id": cid,
                            "x1": float(b[0]),
                            "y1": float(b[1]),
                            "x2": float(b[2]),
                            "y2": float(b[3]),
                            "proposer": it["proposer"],
                            "rank": rank,
                            "score": sc,
                        }
                    )
            flat: list[int] = []
            if region_rows:
                ins_r = sa.insert(regions_t).returning(regions_t.c.id, sort_by_parameter_order=True)
                flat = [int(r[0]) for r in conn.execute(ins_r, region_rows)]
            pos = 0
            for it in items:
                region_ids.append(flat[pos : pos + len(it["boxes"])])
                pos += len(it["boxes"])
        return content_ids, region_ids

    def confirm_contents(self, content_ids: Sequence[int], files: Sequence[tuple[str, int, int]], run_id: int) -> None:
        """Mark contents ``ok`` and write their file rows, in one transaction."""
        with self.engine.begin() as conn:
            for chunk in _chunks(list(content_ids)):
                conn.execute(sa.update(contents_t).where(contents_t.c.id.in_(chunk)).values(state="ok"))
            self._upsert_files(
                conn,
                [
                    {
                        "path": p,
                        "size": s,
                        "mtime_ns": m,
                        "content_id": cid,
                        "status": "ok",
                        "reason": None,
                        "seen_run": run_id,
                    }
                    for cid, (p, s, m) in zip(content_ids, files, strict=True)
                ],
            )

    def pending_contents(self) -> tuple[list[int], list[int]]:
        with self.engine.connect() as conn:
            cids = list(conn.execute(sa.select(contents_t.c.id).where(contents_t.c.state == "pending")).scalars())
        return cids, self.region_ids_of(cids)

    def drop_contents(
        self, content_ids: Sequence[int], keep_files_for_reindex: bool = False
    ) -> tuple[list[int], list[int]]:
        """Delete contents (their regions go too). With ``keep_files_for_reindex`` their files are
        reset so the next index run embeds them again."""
        rids = self.region_ids_of(content_ids)
        with self.engine.begin() as conn:
            for chunk in _chunks(list(content_ids)):
                if keep_files_for_reindex:
                    conn.execute(
                        sa.update(files_t).where(files_t.c.content_id.in_(chunk)).values(mtime_ns=-1, content_id=None)
                    )
                conn.execute(sa.delete(regions_t).where(regions_t.c.content_id.in_(chunk)))
                conn.execute(sa.delete(contents_t).where(contents_t.c.id.in_(chunk)))
        return list(content_ids), rids

    def unseen_paths(self, run_id: int, roots: Sequence[str]) -> list[str]:
        """Paths of files under ``roots`` that run ``run_id`` has not seen (what :meth:`sweep` would delete)."""
        with self.engine.connect() as conn:
            return [
                p
                for root in roots
                for p in conn.execute(sa.select(files_t.c.path).where(_under(root), files_t.c.seen_run != run_id))
                .scalars()
                .all()
            ]

    def sweep(self, run_id: int, roots: Sequence[str]) -> tuple[list[int], list[int]]:
        """Delete files under ``roots`` not seen in ``run_id``, then contents no file uses any more.

        Returns the removed content ids and region ids (to remove from the vector indexes)."""
        removed_files = 0
        with self.engine.begin() as conn:
            for root in roots:
                res = conn.execute(sa.delete(files_t).where(_under(root), files_t.c.seen_run != run_id))
                removed_files += res.rowcount or 0
            orphan = sa.select(contents_t.c.id).where(
                contents_t.c.state == "ok",
                ~sa.exists().where(files_t.c.content_id == contents_t.c.id),
            )
            cids = list(conn.execute(orphan).scalars())
        self.last_sweep_files = removed_files
        if not cids:
            return [], []
        return self.drop_contents(cids)

    # ---- reading ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:

            def one(q: Any) -> int:
                return int(conn.execute(q).scalar() or 0)

            return {
                "files_ok": one(sa.select(sa.func.count()).select_from(files_t).where(files_t.c.status == "ok")),
                "files_failed": one(
                    sa.select(sa.func.count()).select_from(files_t).where(files_t.c.status == "failed")
                ),
                "images": one(sa.select(sa.func.count()).select_from(contents_t).where(contents_t.c.state == "ok")),
                "regions": one(sa.select(sa.func.count()).select_from(regions_t)),
                "bytes_indexed": one(sa.select(sa.func.sum(files_t.c.size)).where(files_t.c.status == "ok")),
                "catalog_bytes": self.path.stat().st_size if self.path.exists() else 0,
            }

    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        q = sa.select(files_t.c.path, files_t.c.reason).where(files_t.c.status == "failed").order_by(files_t.c.path)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [(p, r or "") for p, r in conn.execute(q)]

    def all_vector_ids(self, include_pending: bool = False) -> tuple[list[int], list[int]]:
        """Global and region vector ids of confirmed contents (also of reserved ones: ``include_pending``),
        read in one transaction."""
        states = ("ok", "pending") if include_pending else ("ok",)
        with self.engine.connect() as conn, conn.begin():
            cids = list(conn.execute(sa.select(contents_t.c.id).where(contents_t.c.state.in_(states))).scalars())
            rids = list(
                conn.execute(sa.select(regions_t.c.id).join(contents_t).where(contents_t.c.state.in_(states))).scalars()
            )
        return cids, rids

    @contextlib.contextmanager
    def _raw(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection's plain sqlite3 handle: rows come back as tuples, much faster than
        SQLAlchemy Row objects on the lookups a search makes per query."""
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            yield cast(sqlite3.Connection, raw)

    def _select_in(self, sql: str, ids: Iterable[int]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (whose ``{marks}`` is the ``IN`` list) for ``ids``, in chunks that stay
        within SQLite's parameter limit; an ``ORDER BY`` holds within each chunk."""
        out: list[tuple[Any, ...]] = []
        with self._raw() as raw:
            for chunk in _chunks([int(i) for i in ids]):
                out.extend(raw.execute(sql.format(marks=",".join("?" * len(chunk))), tuple(chunk)).fetchall())
        return out

    def region_ids_of(self, content_ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        with self.engine.connect() as conn:
            for chunk in _chunks(list(content_ids)):
                out.extend(conn.execute(sa.select(regions_t.c.id).where(regions_t.c.content_id.in_(chunk))).scalars())
        return out

    def contents_of_regions(self, region_ids: Sequence[int]) -> list[int]:
        """Content ids owning the given regions, unique, in the order of first appearance."""
        owner = dict(self._select_in("SELECT id, content_id FROM regions WHERE id IN ({marks})", region_ids))
        seen: dict[int, None] = {}
        for rid in region_ids:
            if rid in owner:
                seen.setdefault(owner[rid], None)
        return list(seen)

    def content_of_path(self, path: str) -> int | None:
        """The indexed image a file path holds (None when the path is not an indexed file)."""
        with self._raw() as raw:
            row = raw.execute(
                "SELECT f.content_id FROM files AS f JOIN contents AS c ON c.id = f.content_id "
                "WHERE f.path = ? AND f.status = 'ok' AND c.state = 'ok'",
                (path,),
            ).fetchone()
        return None if row is None else int(row[0])

    def contents_by_ids(self, ids: Sequence[int]) -> list[ContentRow]:
        """Indexed images for ids (in the given order), skipping ids without an ok file."""
        found: dict[int, tuple[int, int, datetime | None, list[str]]] = {}
        for cid, w, h, cap, path in self._select_in(
            "SELECT c.id, c.width, c.height, c.captured_at, f.path FROM contents AS c "
            "JOIN files AS f ON f.content_id = c.id "
            "WHERE c.id IN ({marks}) AND c.state = 'ok' AND f.status = 'ok' ORDER BY c.id, f.path",
            ids,
        ):
            if cid not in found:
                found[cid] = (w, h, _sqlite_datetime(cap), [])
            found[cid][3].append(path)
        return [
            ContentRow(cid, found[cid][3][0], tuple(found[cid][3]), found[cid][0], found[cid][1], found[cid][2])
            for cid in ids
            if cid in found
        ]

    def indexed_among(self, ids: Sequence[int]) -> list[int]:
        """Those of ``ids`` that are indexed images (an ok content with an ok file), ascending: what
        :meth:`contents_by_ids` would return rows for, without building the rows."""
        rows = self._select_in(
            "SELECT c.id FROM contents AS c WHERE c.id IN ({marks}) AND c.state = 'ok' "
            "AND EXISTS (SELECT 1 FROM files AS f WHERE f.content_id = c.id AND f.status = 'ok')",
            ids,
        )
        return sorted(r[0] for r in rows)

    def region_ids_by_content(self, content_ids: Sequence[int]) -> dict[int, Any]:
        """Region ids per content (int64 ``[K]``, rank order): a search scores every region of its
        candidate images and needs the boxes (:meth:`region_boxes`) only of the ones it returns."""
        import numpy as np

        pairs = self._select_in(
            "SELECT content_id, id FROM regions WHERE content_id IN ({marks}) ORDER BY content_id, rank", content_ids
        )
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return {cid: arr[a:b, 1] for cid, a, b in _groups(arr[:, 0])}

    def region_boxes(self, region_ids: Sequence[int]) -> dict[int, Box]:
        """The box of each known region id (float32 values, as :meth:`region_arrays` gives them)."""
        import numpy as np

        rows = self._select_in("SELECT id, x1, y1, x2, y2 FROM regions WHERE id IN ({marks})", region_ids)
        return {rid: Box.clipped(*np.asarray(xy, np.float32).tolist()) for rid, *xy in rows}

    def regions_for_contents(self, content_ids: Sequence[int]) -> dict[int, list[tuple[int, Box]]]:
        """Region ids and boxes per content, in rank order."""
        return {
            cid: [(int(r), Box(*map(float, b))) for r, b in zip(rids, boxes, strict=True)]
            for cid, (rids, boxes) in self.region_arrays(content_ids).items()
        }

    def region_arrays(self, content_ids: Sequence[int]) -> dict[int, tuple[Any, Any]]:
        """Like :meth:`regions_for_contents` as arrays (int64 ids ``[K]``, float32 boxes ``[K, 4]``):
        the fast path for search, which builds a Box only for the regions it returns."""
        import numpy as np

        rows = self._select_in(
            "SELECT content_id, id, x1, y1, x2, y2 FROM regions WHERE content_id IN ({marks}) "
            "ORDER BY content_id, rank",
            content_ids,
        )
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        return {
            cid: (arr[a:b, 1].astype(np.int64), arr[a:b, 2:6].astype(np.float32))
            for cid, a, b in _groups(arr[:, 0].astype(np.int64))
        }

    def regions_by_ids(self, region_ids: Sequence[int]) -> dict[int, tuple[Box, ContentRow]]:
        boxes: dict[int, tuple[int, Box]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(region_ids)):
                q = sa.select(
                    regions_t.c.id,
                    regions_t.c.content_id,
                    regions_t.c.x1,
                    regions_t.c.y1,
                    regions_t.c.x2,
                    regions_t.c.y2,
                ).where(regions_t.c.id.in_(chunk))
                for rid, cid, x1, y1, x2, y2 in conn.execute(q):
                    boxes[rid] = (cid, Box(x1, y1, x2, y2))
        rows = {r.id: r for r in self.contents_by_ids(sorted({c for c, _ in boxes.values()}))}
        return {rid: (box, rows[cid]) for rid, (cid, box) in boxes.items() if cid in rows}

    def filter_contents(
        self,
        *,
        path_glob: str | None = None,
        path_prefix: str | None = None,
        captured_after: datetime | None = None,
        captured_before: datetime | None = None,
        modified_after: datetime | None = None,
        modified_before: datetime | None = None,
    ) -> list[int]:
        """Content ids with at least one ok file matching every given condition."""
        conds = [contents_t.c.state == "ok", *_file_conditions(path_glob, path_prefix, modified_after, modified_before)]
        if captured_after:
            conds.append(contents_t.c.captured_at >= captured_after)
        if captured_before:
            conds.append(contents_t.c.captured_at < captured_before)
        q = sa.select(contents_t.c.id).distinct().join(files_t, files_t.c.content_id == contents_t.c.id).where(*conds)
        with self.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    def matching_paths(
        self,
        content_ids: Sequence[int],
        *,
        path_glob: str | None = None,
        path_prefix: str | None = None,
        modified_after: datetime | None = None,
        modified_before: datetime | None = None,
    ) -> dict[int, list[str]]:
        """Per content id, its ok paths (sorted) that pass the file conditions of :meth:`filter_contents`."""
        conds = _file_conditions(path_glob, path_prefix, modified_after, modified_before)
        out: dict[int, list[str]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(content_ids)):
                q = sa.select(files_t.c.content_id, files_t.c.path).where(files_t.c.content_id.in_(chunk), *conds)
                for cid, path in conn.execute(q.order_by(files_t.c.path)):
                    out.setdefault(int(cid), []).append(path)
        return out


def _mtime_ns(when: datetime) -> int:
    """A time as file mtime nanoseconds, clamped to SQLite's 64-bit integers (a date past 2262 or
    before 1677 means 'after/before every file', not an overflow)."""
    return max(-(2**63), min(2**63 - 1, int(when.timestamp() * 1e9)))


def _file_conditions(
    path_glob: str | None, path_prefix: str | None, modified_after: datetime | None, modified_before: datetime | None
) -> list[Any]:
    """SQL conditions on one file row: ok, and matching every given path and modification-time filter."""
    conds: list[Any] = [files_t.c.status == "ok"]
    if path_glob:
        conds.append(files_t.c.path.op("GLOB")(path_glob))
    if path_prefix:
        prefix = path_prefix.rstrip(os.sep) + os.sep
        conds.append(sa.func.substr(files_t.c.path, 1, len(prefix)) == prefix)
    if modified_after:
        conds.append(files_t.c.mtime_ns >= _mtime_ns(modified_after))
    if modified_before:
        conds.append(files_t.c.mtime_ns < _mtime_ns(modified_before))
    return conds


# ---- cheap read-only peeks at a catalog file (no SQLAlchemy, no schema checks) ----------------
def _peek_connection(catalog_file: Path) -> sqlite3.Connection:
    """A read-only plain-sqlite connection (immutable where the folder cannot be written)."""

    def connect(immutable: bool) -> sqlite3.Connection:
        con = sqlite3.connect(read_only_uri(catalog_file, immutable=immutable), uri=True)
        try:
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # opening is lazy: fail here, not later
        except BaseException:
            con.close()
            raise
        return con

    try:
        return connect(immutable=False)
    except sqlite3.Error as e:
        if not cannot_write_here(e) or not catalog_file.is_file():
            raise
    return connect(immutable=True)


def peek_meta(catalog_file: Path, keys: Sequence[str]) -> dict[str, Any]:
    """The JSON values of these meta keys; {} when the file cannot be read."""
    try:
        con = _peek_connection(catalog_file)
        try:
            marks = ",".join("?" * len(keys))
            rows = con.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", tuple(keys)).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    return {k: json.loads(v) for k, v in rows}


def peek_library_id(catalog_file: Path) -> str | None:
    """The build id recorded now: "" in the moment a --reindex replaces the catalog (no file, or
    no table yet), None when unset; a damaged catalog raises."""
    try:
        con = _peek_connection(catalog_file)
        try:
            row = con.execute("SELECT value FROM meta WHERE key='library_id'").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if not catalog_file.is_file() or "no such table" in str(e):
            return ""
        raise
    return json.loads(row[0]) if row else None


def peek_unfinished(catalog_file: Path) -> bool:
    """A catalog without a recorded model and without any image: a creation that did not finish.
    Unreadable files are not ours to judge (Catalog.open reports a damaged catalog clearly)."""
    try:
        con = _peek_connection(catalog_file)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables:
                return False  # not a catalog of ours: never wiped
            keys = {r[0] for r in con.execute("SELECT key FROM meta")}
            if "schema_version" not in keys or "dim" in keys:
                return False
            return "contents" not in tables or not con.execute("SELECT 1 FROM contents LIMIT 1").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return False
