"""Rebuilding a library whose catalog is gone, reusing the vectors its file-backed indexes recorded.

The exact and FAISS backends keep, per vector, a record the library gives them (written with each
snapshot, see ``indexes/store/journaled.py``):

* global vector: the image content's SHA-256 (the catalog's ``contents.sha256``) and its number of
  regions (``GLOBAL_RECORD``);
* region vector: its content's SHA-256, its box (normalised x1, y1, x2, y2) and its rank among the
  content's regions (``REGION_RECORD``).

and, once per snapshot, what made the vectors (model name and weights fingerprint, region settings).
``fgsearch index FOLDERS --library L --reindex`` on a library whose catalog is missing or unreadable
reads these before the old indexes are removed (:func:`harvest`); the index run then takes an image
whose bytes hash to a recorded content from the record, with no forward pass (:meth:`Reuse.embed`),
and embeds only the rest.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fgsearch.errors import LibraryError

if TYPE_CHECKING:
    from fgsearch.ingest.embed import Embedded
    from fgsearch.ingest.prepare import Prepared
    from fgsearch.library.settings import BackendSettings
    from fgsearch.regions import RegionSettings

_GLOBAL = struct.Struct("<32sI")  # content sha256, number of regions
_REGION = struct.Struct("<32s4fI")  # content sha256, box, rank
GLOBAL_RECORD = _GLOBAL.size
REGION_RECORD = _REGION.size


def global_record(sha256_hex: str, n_regions: int) -> bytes:
    return _GLOBAL.pack(bytes.fromhex(sha256_hex), n_regions)


def region_record(sha256_hex: str, box: Sequence[float], rank: int) -> bytes:
    return _REGION.pack(bytes.fromhex(sha256_hex), *map(float, box), rank)


def records_for(index: Any, shas: Sequence[str], boxes: Sequence[np.ndarray]) -> tuple[list[bytes], list[bytes]] | None:
    """The records of a batch's global vectors and (flattened, in rank order) region vectors, for
    an index that keeps them (file backends); None for one that does not."""
    if not getattr(index, "keeps_records", False):
        return None
    images = [global_record(s, len(b)) for s, b in zip(shas, boxes, strict=True)]
    regions = [region_record(s, box, k) for s, b in zip(shas, boxes, strict=True) for k, box in enumerate(b)]
    return images, regions


def record_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """What a snapshot's records say made its vectors, from the catalog's meta."""
    return {"model": meta.get("model_name"), "model_ref": meta.get("model_ref"), "regions": meta.get("regions")}


@dataclass
class Reuse:
    """The recorded vectors of a library's previous build, by content hash."""

    images: dict[str, np.ndarray]  # sha256 hex -> global vector
    regions: dict[str, tuple[np.ndarray, np.ndarray]]  # sha256 hex -> (boxes [n, 4], vectors [n, D])
    counts: dict[str, int]  # sha256 hex -> number of regions the global record says it had
    used: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.images)

    def lookup(self, sha256_hex: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The global vector, boxes and region vectors of that content, or None when not all of
        them were recorded (then the image is embedded again)."""
        vec = self.images.get(sha256_hex)
        if vec is None:
            return None
        boxes, rvecs = self.regions.get(sha256_hex, (np.zeros((0, 4), np.float32), np.zeros((0, vec.size), np.float32)))
        if len(boxes) != self.counts[sha256_hex]:
            return None
        return vec, boxes, rvecs

    def embed(self, batch: Sequence[Prepared], embed: Callable[[Sequence[Prepared]], Embedded]) -> Embedded:
        """The batch's vectors: recorded ones where the content hash matches, ``embed`` (one
        forward pass) for the rest."""
        from fgsearch.ingest.embed import Embedded

        found = [self.lookup(p.sha256) for p in batch]
        rest = [p for p, f in zip(batch, found, strict=True) if f is None]
        fresh = embed(rest) if rest else None
        images, regions, boxes = [], [], []
        j = 0
        for p, f in zip(batch, found, strict=True):
            if f is None:
                assert fresh is not None
                images.append(fresh.images[j])
                regions.append(fresh.regions[j])
                boxes.append(fresh.boxes[j])
                j += 1
            else:
                self.used.add(p.sha256)
                images.append(f[0])
                boxes.append(f[1])
                regions.append(f[2])
        return Embedded(np.stack(images).astype(np.float32, copy=False), regions, boxes)


def harvest(
    lib_dir: Path, backend: BackendSettings, model: Any, regions: RegionSettings | None, dim: int
) -> Reuse | None:
    """The recorded vectors of the library's file-backed indexes (None: none recorded, not a file
    backend, or an index that cannot be read). Raises when they were made with another model."""
    from fgsearch.indexes import IndexBackendError
    from fgsearch.indexes.api import open_index

    paths = backend.owned_paths(lib_dir) if backend.has("files") else {}
    if set(paths) != {"global", "regions"}:
        return None
    try:  # opened without a dimension: vectors of another model are refused by name below
        gidx = open_index(backend.kind, paths["global"], read_only=True)
    except IndexBackendError:
        return None
    try:
        ridx = open_index(backend.kind, paths["regions"], read_only=True)
    except IndexBackendError:
        gidx.close()
        return None
    try:
        if not hasattr(gidx, "records"):
            return None
        gids, grecs, meta = gidx.records()
        if not meta or grecs.shape[1] != GLOBAL_RECORD:
            return None  # a snapshot written before records were kept
        _check_model(lib_dir, meta, model)
        if gidx.dim != dim or ridx.dim != dim:
            return None
        if regions is not None and meta.get("regions") != regions.to_dict():
            return None  # other region settings: the recorded boxes do not apply
        gids, grecs = _intact(gidx, gids, grecs)
        gvecs = np.asarray(gidx.get(gids)) if gids.size else np.zeros((0, dim), np.float32)
        shas = [bytes(r[:32]).hex() for r in grecs]
        counts = grecs[:, 32:36].copy().view("<u4").ravel()
        images = {s: gvecs[i] for i, s in enumerate(shas)}
        n_regions = {s: int(c) for s, c in zip(shas, counts, strict=True)}
        rids, rrecs, _ = cast(Any, ridx).records()
        by_sha: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if rrecs.shape[1] == REGION_RECORD:
            rids, rrecs = _intact(ridx, rids, rrecs)
            rvecs = np.asarray(ridx.get(rids)) if rids.size else np.zeros((0, dim), np.float32)
            rshas = np.array([bytes(r[:32]).hex() for r in rrecs], dtype=object)
            boxes = rrecs[:, 32:48].copy().view("<f4")
            ranks = rrecs[:, 48:52].copy().view("<u4").ravel()
            order = np.lexsort((ranks, rshas.astype(str))) if rids.size else np.zeros(0, np.int64)
            start = 0
            while start < order.size:
                end = start
                sha = rshas[order[start]]
                while end < order.size and rshas[order[end]] == sha:
                    end += 1
                sel = order[start:end]
                by_sha[sha] = (boxes[sel], rvecs[sel])
                start = end
        return Reuse(images, by_sha, n_regions)
    finally:
        gidx.close()
        ridx.close()


def _intact(idx: Any, ids: np.ndarray, recs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids (and records) of vectors with a record whose rows match their checksums: a vector
    damaged on disk is embedded again, and a damaged records file is not used at all."""
    bad, damaged = idx.verify()
    if any(name.startswith("records.") for name in bad):
        return ids[:0], recs[:0]
    keep = recs.any(axis=1) & ~np.isin(ids, damaged)
    return ids[keep], recs[keep]


def _check_model(lib_dir: Path, meta: dict[str, Any], model: Any) -> None:
    """The model of this rebuild is the one the recorded vectors were made with."""
    if meta.get("model_ref") and model.ref:
        same = meta.get("model_ref") == model.ref
    else:
        same = meta.get("model") == model.name
    if not same:
        made = f"{meta.get('model')} (ref {meta.get('model_ref') or '-'})"
        now = f"{model.name} (ref {model.ref or '-'})"
        raise LibraryError(
            f"the vector files of {lib_dir} were made with model {made} but this rebuild uses {now}; "
            f"pass --model {meta.get('model')} to reuse them, or delete the library's index folder to "
            "embed every image again"
        )
