"""What a library records about how it was built: the backend (kind + options), the model and
the region settings, and the model-derived values stored beside them.

:class:`BackendSettings` is ``{kind, options}``: the kind names a backend of the
:mod:`fgsearch.indexes` registry and the options are validated by that backend's own config, so a
new backend needs no field here. Libraries written before options existed stored
``qdrant_url``/``qdrant_path``/``qdrant_collection`` keys; :meth:`BackendSettings.from_dict` reads both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgsearch.errors import LibraryError

if TYPE_CHECKING:
    from fgsearch.indexes import Backend, VectorIndex
    from fgsearch.model import Encoder

DEFAULT_MODEL = "fg-clip-base"
_LEGACY_KEYS = {"qdrant_url": "url", "qdrant_path": "path", "qdrant_collection": "collection"}

_ENCODERS: dict[tuple[str, str, str, str], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def shared_encoder(model: str, device: str = "auto", precision: str = "auto", runtime: str = "torch") -> Encoder:
    """The process-wide encoder for a model (loaded once, shared by every library and thread)."""
    from fgsearch.model import load_encoder

    key = (str(model), str(device), precision, runtime)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = load_encoder(model, device=device, precision=precision, runtime=runtime)
        return _ENCODERS[key]


def fast_text_encoder(model: str, notes: list[str] | None = None) -> Encoder | None:
    """The model's fast text tower (``onnx-text`` runtime), or None where it was not prepared,
    failed its check against torch, is damaged, or onnxruntime is missing: the caller then loads
    torch. A tower that was prepared but is refused or damaged is said in one line in ``notes``."""
    from fgsearch.errors import ModelNotFoundError
    from fgsearch.model import load_encoder
    from fgsearch.model.fast_text_files import FastTextUnusable

    key = (str(model), "cpu", "fp32", "onnx-text")
    with _ENCODERS_LOCK:
        if key in _ENCODERS:
            return _ENCODERS[key]
        try:
            enc = load_encoder(model, device="cpu", runtime="onnx-text")
        except (ModelNotFoundError, ImportError) as e:
            logging.getLogger(__name__).info("fast text path not used: %s", e)
            if notes is not None and isinstance(e, FastTextUnusable):
                notes.append(str(e))
            return None
        _ENCODERS[key] = enc
        return enc


def clear_shared_encoders() -> None:
    """Forget the process-wide encoders (the next use loads the model again, as a new process
    would): for an app whose model files changed on disk."""
    with _ENCODERS_LOCK:
        _ENCODERS.clear()


@dataclass(frozen=True)
class BackendSettings:
    """Which vector store a library uses, chosen when the library is created: a backend kind of
    the registry and its options (``--backend-opt KEY=VALUE``), checked by the backend."""

    kind: str = "faiss"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from fgsearch.indexes import IndexInputError

        try:
            parsed = _backend(self.kind).parse_options(dict(self.options))
        except IndexInputError as e:
            raise LibraryError(str(e)) from e
        object.__setattr__(self, "options", parsed)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackendSettings:
        """Settings as a catalog stored them (either format)."""
        kind = str(d.get("kind", "faiss"))
        opts = dict(d.get("options") or {})
        if kind == "qdrant":  # the old format kept qdrant's fields beside the kind, for every kind
            for old, new in _LEGACY_KEYS.items():
                if d.get(old) is not None:
                    opts.setdefault(new, d[old])
        return cls(kind=kind, options=opts)

    def open(
        self, home: Path, name: str, dim: int, *, read_only: bool, create: bool, database: str | None = None
    ) -> VectorIndex:
        """The library's ``name`` index ("global" or "regions") in this backend. ``database``: the
        library's PostgreSQL catalog URL, where a backend that can live there (``catalog_database``,
        pgvector) puts its tables when its options name no ``url`` (used, never recorded)."""
        options = dict(self.options)
        if database and self.has("catalog_database") and not options.get("url"):
            options["url"] = database
        return _backend(self.kind).open(home, name, dim, options, read_only=read_only, create=create)

    def owned_paths(self, home: Path) -> dict[str, Path]:
        """Index name -> the folder this backend created inside the library folder."""
        return _backend(self.kind).owned_paths(home, self.options)

    def location(self, home: Path) -> str:
        """The backend as a user names it ("backend faiss", "qdrant at /path (collection x)")."""
        return _backend(self.kind).location(home, self.options)

    def has(self, capability: str) -> bool:
        return capability in _backend(self.kind).capabilities


def _backend(kind: str) -> Backend:
    from fgsearch.indexes import IndexInputError, get_backend

    try:
        return get_backend(kind)
    except IndexInputError as e:
        raise LibraryError(str(e)) from e


def parse_backend_options(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line -> a dict (values stay strings: the backend converts)."""
    from fgsearch.errors import InputError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError("{backend_opt} takes KEY=VALUE, got {got!r}", field="backend_opt", got=pair)
        out[key.strip()] = value
    return out


def model_source(model_ref: str) -> str:
    """How to load the model again later: an absolute directory, or the name/hub id as given."""
    p = Path(model_ref).expanduser()
    return str(p.resolve()) if p.is_dir() else model_ref


def model_info(model_ref: str, enc: Encoder) -> Any:
    """What the catalog records of a model (name, weights fingerprint, dimension, image size)."""
    from fgsearch.catalog import ModelInfo
    from fgsearch.model import checkpoint_fingerprint
    from fgsearch.model.loading import registry_name

    ref = enc.spec.fingerprint or enc.spec.revision or ""
    if not ref and enc.spec.local_dir:
        ref = checkpoint_fingerprint(Path(enc.spec.local_dir))
    name = registry_name(enc.spec.name, ref) or enc.spec.name  # a copy of a registry model's folder too
    return ModelInfo(name=name, ref=ref, dim=enc.dim, image_size=tuple(enc.spec.image_size or ()))


def _calibration_captions() -> list[str]:
    """150 varied captions: an index build tunes its search breadth on them, the quality gate
    and int8 calibration use them as the text side."""
    things = "a dog|two children|a red car|an old man|a cup of coffee|a bicycle|a cat|a plate of pasta"
    things += "|a wooden boat|a woman in a blue dress|a birthday cake|a laptop|a horse|a street sign|a tent"
    where = "on a beach at sunset|in a snowy forest|on a kitchen table|next to a window|in a crowded market"
    where += "|under a bridge|at night under street lights|in a green field|on a white background|in a museum"
    return [f"{t} {w}" for t in things.split("|") for w in where.split("|")]


CALIBRATION_CAPTIONS = _calibration_captions()


def calibration_texts(load: Callable[[], Encoder]) -> Callable[[], dict[str, Any]]:
    """The model's embeddings of 150 varied captions, computed on first use (an index build tunes
    its search breadth on them); ``load`` gives the model, loaded only then if need be."""
    captions = CALIBRATION_CAPTIONS
    cache: dict[str, Any] = {}

    def sets() -> dict[str, Any]:
        if "sets" not in cache:  # once: a later build of the same library reuses them
            cache["sets"] = {"text": load().encode_texts(captions)}
        return cache["sets"]

    return sets
