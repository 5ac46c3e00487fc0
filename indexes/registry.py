"""The backend registry: one :class:`Backend` descriptor per vector-store engine, looked up by name.

A descriptor says what a backend is (``name``, ``config_type``, ``capabilities``), turns the
library's options into a validated JSON-ready dict (:meth:`Backend.parse_options`), and opens the
index a library keeps under a name (:meth:`Backend.open`). The built-in backends (exact, faiss,
qdrant) are registered exactly as a third party's are: through the entry-point group
``fgsearch.backends`` (declared in pyproject.toml), or with :func:`register_backend` from code.
An unknown name is an error that lists the known ones, never a silent default.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import threading
import types
import typing
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .base import VectorIndex
from .errors import IndexInputError

log = logging.getLogger(__name__)

#: The entry-point group a package declares its backends in (``name = "module:descriptor"``).
ENTRY_POINT_GROUP = "fgsearch.backends"
#: The indexes a library keeps, by name: image vectors and region vectors.
INDEX_NAMES: tuple[str, ...] = ("global", "regions")
#: Capabilities a backend may declare (see :class:`Backend`).
CAPABILITIES: frozenset[str] = frozenset({"files", "tunable_breadth", "calibration", "catalog_database"})

PathLike = str | Path


class Backend(abc.ABC):
    """What a vector-store engine offers the library, and how to reach it.

    ``capabilities``: ``"files"`` (its indexes live in the library folder as files, so a damaged one
    can be replaced), ``"tunable_breadth"`` (a search breadth such as efSearch), ``"calibration"``
    (its indexes take ``set_calibration_queries``, see :class:`~.faiss.calibration.Calibratable`),
    ``"catalog_database"`` (its indexes can live in the library's PostgreSQL catalog database: its
    ``url`` option defaults to the catalog's, and its ``add`` takes the catalog's ``connection=``).
    """

    name: str
    config_type: type
    capabilities: frozenset[str] = frozenset()

    # ---- library level: options, placement -------------------------------------------------
    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Library options -> validated, typed, JSON-ready dict (strings from the CLI converted).

        The keys are the fields of :attr:`config_type`; an unknown key is an error naming the known ones.
        """
        options = parse_fields(self.name, self.config_type, raw, sorted(option_fields(self.config_type)))
        self.make_config(options)  # the config's own checks (ranges, conflicts)
        return options

    def make_config(self, options: Mapping[str, Any]) -> Any:
        """The :attr:`config_type` instance for parsed ``options`` (None: the stored or default one)."""
        if not options:
            return None
        return config_from_options(self.config_type, options)

    @abc.abstractmethod
    def open(
        self, home: Path, name: str, dim: int, options: Mapping[str, Any], *, read_only: bool, create: bool
    ) -> VectorIndex:
        """Open (``create``: or create) the library's index ``name`` (one of :data:`INDEX_NAMES`)."""

    @abc.abstractmethod
    def owned_paths(self, home: Path, options: Mapping[str, Any]) -> dict[str, Path]:
        """Index name -> the folder this backend created for it inside the library folder ``home``
        (only folders that exist and are the backend's own: never a folder the user named)."""

    def location(self, home: Path, options: Mapping[str, Any]) -> str:
        """How a user names where the library's vectors live (messages, ``status``)."""
        del home, options
        return f"backend {self.name}"

    # ---- index level: what create_index / open_index call (optional for a plugin) -----------
    def create_index(self, path: PathLike | None, dim: int, config: Any) -> VectorIndex:
        """Create a new, empty index at ``path`` (``config``: checked, never None)."""
        del path, dim, config
        raise IndexInputError(f"backend {self.name} serves libraries only; open it with fgsearch.Library")

    def open_index(
        self, path: PathLike | None, *, read_only: bool, config: Any, dim: int | None, create: bool
    ) -> VectorIndex:
        """Open the index at ``path`` (``config=None``: the stored one); ``create``: create it when missing."""
        del path, read_only, config, dim, create
        raise IndexInputError(f"backend {self.name} serves libraries only; open it with fgsearch.Library")


# ------------------------------------------------------------------------------ the registry
_backends: dict[str, Backend] = {}
_lock = threading.RLock()
_loaded = False


def register_backend(backend: Backend, *, replace: bool = False) -> None:
    """Make ``backend`` available under ``backend.name`` (``replace=True`` to override one)."""
    if not isinstance(backend, Backend):
        raise IndexInputError(f"register_backend takes a Backend instance, got {type(backend).__name__}")
    unknown = set(backend.capabilities) - CAPABILITIES
    if unknown:
        raise IndexInputError(
            f"backend {backend.name!r} declares unknown capabilities {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(sorted(CAPABILITIES))}"
        )
    with _lock:
        _load_entry_points()
        if backend.name in _backends and not replace and _backends[backend.name] is not backend:
            raise IndexInputError(f"a backend named {backend.name!r} is registered already; pass replace=True")
        _backends[backend.name] = backend


def unregister_backend(name: str) -> None:
    """Remove the backend ``name`` (tests that register a toy backend clean up with this)."""
    with _lock:
        _load_entry_points()
        _backends.pop(name, None)


def get_backend(kind: str) -> Backend:
    """The backend registered as ``kind``; an unknown name lists the known ones."""
    with _lock:
        _load_entry_points()
        backend = _backends.get(kind)
    if backend is None:
        raise IndexInputError(f"unknown backend {kind!r}; choose one of {', '.join(backend_names())}")
    return backend


def backend_names() -> tuple[str, ...]:
    """Names of every registered backend, sorted."""
    with _lock:
        _load_entry_points()
        return tuple(sorted(_backends))


#: The built-ins, declared as pyproject declares them in the entry-point group and loaded by the same
#: code: a source checkout whose install metadata is older than the code (or hidden by a stale
#: ``fgsearch.egg-info`` in the working directory) still has them.
BUILTIN_BACKENDS: dict[str, str] = {
    "exact": "fgsearch.indexes.exact:ExactBackend",
    "faiss": "fgsearch.indexes.faiss:FaissBackend",
    "qdrant": "fgsearch.indexes.qdrant:QdrantBackend",
    "pgvector": "fgsearch.indexes.pgvector:PgvectorBackend",
    "usearch": "fgsearch.indexes.usearch:UsearchBackend",
}


def _load_entry_points() -> None:
    """Register the built-ins and every backend declared in the ``fgsearch.backends`` entry-point
    group (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    declared = dict(BUILTIN_BACKENDS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        declared.setdefault(ep.name, ep.value)
    for name, ref in declared.items():
        try:
            obj = _load_reference(ref)
            backend = obj() if isinstance(obj, type) else obj
        except Exception as e:  # a broken plugin must not take the others down
            log.warning("cannot load the vector backend %r (%s): %s", name, ref, e)
            continue
        if not isinstance(backend, Backend) or backend.name != name:
            log.warning("entry point %r (%s) is not a Backend named %r; skipped", name, ref, name)
            continue
        _backends.setdefault(backend.name, backend)


def _load_reference(ref: str) -> Any:
    """``package.module:attr`` -> the object it names."""
    import importlib

    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def check_kind(kind: str) -> None:
    """Reject an unknown backend name with the list of known ones."""
    get_backend(kind)


def check_config(kind: str, config: Any) -> Any:
    """Return ``config`` (or the default) after checking that it belongs to backend ``kind``."""
    expected = get_backend(kind).config_type
    if config is None:
        return expected()
    if not isinstance(config, expected):
        raise IndexInputError(f"index kind {kind!r} takes a {expected.__name__}, got {type(config).__name__}")
    return config


# ------------------------------------------------------------------------------ option parsing
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null", ""}


def option_fields(config_type: type) -> dict[str, Any]:
    """Field name -> resolved type of a config dataclass."""
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type)}


def parse_fields(backend: str, config_type: type, raw: Mapping[str, Any], known: list[str]) -> dict[str, Any]:
    """Convert ``raw`` options for the fields ``known`` of ``config_type`` (strings parsed)."""
    types_ = option_fields(config_type)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise IndexInputError(f"backend {backend}: unknown option {key!r}; known options: {', '.join(known)}")
        out[key] = convert_option(backend, key, value, types_[key])
    return out


def convert_option(backend: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` as the JSON-ready value of a field typed ``hint`` (a string is parsed)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert_option(backend, key, value, inner[0] if len(inner) == 1 else str)
    if origin is typing.Literal:
        if value not in args:
            raise IndexInputError(
                f"backend {backend}: option {key} must be one of {', '.join(map(str, args))}, got {value!r}"
            )
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise IndexInputError(f"backend {backend}: option {key} takes a mapping of {hint.__name__} fields")
        names = sorted(option_fields(hint))
        return parse_fields(f"{backend} {key}", hint, value, names)
    return _convert_scalar(backend, key, value, hint)


def _convert_scalar(backend: str, key: str, value: Any, hint: Any) -> Any:
    bad = IndexInputError(f"backend {backend}: option {key} takes a {getattr(hint, '__name__', hint)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if hint in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                return hint(value.strip())
            except ValueError:
                raise bad from None
        if isinstance(value, int) or (hint is float and isinstance(value, float)):
            return hint(value)
        raise bad
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def config_from_options(config_type: type, options: Mapping[str, Any]) -> Any:
    """A ``config_type`` from parsed options (nested config dataclasses built from their dicts)."""
    kwargs = dict(options)
    for name, hint in option_fields(config_type).items():
        nested = isinstance(hint, type) and dataclasses.is_dataclass(hint)
        if nested and name in kwargs and isinstance(kwargs[name], Mapping):
            kwargs[name] = hint(**kwargs[name])
    return config_type(**kwargs)
