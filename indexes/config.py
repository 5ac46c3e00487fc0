"""Frozen configuration of the index backends.

Each backend has one frozen dataclass (its descriptor in :mod:`.registry` names it as
``config_type``); :class:`IndexSpec` names a backend, a dimension and its
configuration so that callers (the catalog) can record and reopen exactly what they built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import IndexInputError


@dataclass(frozen=True)
class JournalConfig:
    """When the journal of a file-backed index is folded into a new snapshot.

    ``flush()`` appends the changes since the previous flush to the journal and fsyncs it (cost
    proportional to the changes). When the journal grows past ``max(compact_min_bytes,
    compact_ratio * snapshot_bytes)`` a flush also writes a new snapshot (amortized: each byte of
    the snapshot is rewritten after at most ``1/compact_ratio`` of its size in new changes).
    """

    compact_min_bytes: int = 64 * 1024 * 1024
    compact_ratio: float = 0.25
    auto_compact: bool = True

    def __post_init__(self) -> None:
        if self.compact_min_bytes < 0:
            raise IndexInputError(f"compact_min_bytes must be >= 0, got {self.compact_min_bytes}")
        if not self.compact_ratio > 0:
            raise IndexInputError(f"compact_ratio must be > 0, got {self.compact_ratio}")


@dataclass(frozen=True)
class ExactConfig:
    """Exact (brute-force numpy) backend: the yardstick for every other backend."""

    journal: JournalConfig = field(default_factory=JournalConfig)
    norm_tolerance: float = 0.01
    block_rows: int = 32768


@dataclass(frozen=True)
class FaissConfig:
    """FAISS backend: exact while small; an HNSW graph (or IVF-PQ) with exact re-ranking once large.

    * ``flat_threshold``: below this many vectors search is exact brute force (BLAS over the stored
      vectors). At or above it the next snapshot builds the approximate ``structure``.
    * ``structure``: ``"hnsw"`` (default): FAISS ``IndexHNSWSQ``, a graph of ``hnsw_m`` links per
      vector over scalar-quantised codes (``hnsw_codes``: ``"SQ8"``, 8 bits per dimension, the
      default, or ``"SQ4"``: half the memory, lower recall on text queries at 1M), built with
      ``hnsw_ef_construction`` and searched with FAISS's own HNSW search, started at the best of
      ``hnsw_entry_pivots`` pivots (``None``: n/256 within [1024, 4096]; ``0``: FAISS's greedy
      descent of the upper layers, see :mod:`.faiss.entry`); ``"ivfpq"``:
      ``IndexIVFPQ`` (``nlist`` cells, ``pq_m`` bytes per vector), kept for GPUs and comparison.
    * ``nlist`` (IVF cells): ``None`` derives a power of two near ``2 * sqrt(n)``, clamped to
      [64, 65536]; ``pq_m`` (bytes per vector): ``None`` derives ``dim // 4`` (``dim // 8`` when a
      GPU will search it: FAISS's GPU IVF-PQ takes at most 96 bytes per code).
    * ``ef_search`` (hnsw) / ``nprobe`` (ivfpq): ``None`` calibrates it when the structure is built:
      the smallest step (``ef_search``: 32, 48, 64, 96, ... up to ``max_ef_search``; ``nprobe``:
      powers of two up to
      ``nlist / 4``) whose recall@10 against exact search reaches ``recall_target +
      calibration_margin`` on EVERY calibration set (``calibration_queries`` image-like queries, and
      text-like ones: the caller's, see ``FaissIndex.set_calibration_queries``, or synthetic
      cross-modal ones, see :mod:`.calibration`), tried with re-rank depths ``rerank_factor * k``
      doubling up to 16x; the narrowest breadth wins, then the shallowest depth.
    * ``rerank_factor``/``min_rerank``: the approximate search returns ``max(k * rerank_factor,
      min_rerank)`` candidates (factor as calibrated), re-scored with exact inner products from the
      stored float32 vectors.
    * ``retrain_growth`` (ivfpq): re-train the IVF cells when the collection has grown this many
      times since they were trained. An HNSW graph takes every add; it is rebuilt only when new
      vectors fall outside its codes' trained value ranges.
    * ``recalibrate_growth``: calibrate the search again at a snapshot that finds the collection
      this many times larger than at the last calibration (adds go into the built structure).
    * ``filter_exact_max``: allowed-id filters with at most this many stored ids are answered
      exactly; ``None`` derives it from the graph's size, breadth and re-rank depth (where exact
      search over the allowed rows costs as much as the widened graph search, see
      :mod:`.filtered`).
    * ``use_gpu`` (ivfpq only): ``None`` uses a GPU when FAISS sees one; ``False`` never; ``True``
      requires one.
    * ``mmap``: search a snapshot's FAISS file memory-mapped (IVF lists, or the HNSW graph and
      codes) instead of reading it into memory; snapshots are immutable.
    * ``served_queries``: keep the vectors of at most this many recent queries (vectors only; see
      :mod:`.faiss.served`; ``0``: keep none, delete the record); once ``served_min`` are held,
      each snapshot measures recall@10 on them and calibrates again with them as a set when they
      miss the goal or clear it with room to narrow (they then replace the synthetic text sets).
    """

    journal: JournalConfig = field(default_factory=JournalConfig)
    norm_tolerance: float = 0.01
    block_rows: int = 32768
    flat_threshold: int = 50_000
    structure: Literal["hnsw", "ivfpq"] = "hnsw"
    recall_target: float = 0.97
    calibration_margin: float = 0.01
    calibration_queries: int = 400
    hnsw_m: int = 24
    hnsw_ef_construction: int = 100
    hnsw_codes: Literal["SQ4", "SQ8"] = "SQ8"
    #: ignored: fgsearch no longer adds level-0 links to FAISS's graph (issue 24); kept so that
    #: libraries and manifests that name it still open
    hnsw_fill_links: int = 0
    hnsw_entry_pivots: int | None = None
    ef_search: int | None = None
    max_ef_search: int = 2048
    nlist: int | None = None
    pq_m: int | None = None
    nprobe: int | None = None
    rerank_factor: int = 3
    min_rerank: int = 30
    retrain_growth: float = 4.0
    recalibrate_growth: float = 1.25
    max_tombstones: float = 0.1
    filter_exact_max: int | None = None
    train_sample: int | None = None
    use_gpu: bool | None = None
    mmap: bool = True
    served_queries: int = 2000
    served_min: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.flat_threshold < 1:
            raise IndexInputError(f"flat_threshold must be >= 1, got {self.flat_threshold}")
        if self.structure not in ("hnsw", "ivfpq"):
            raise IndexInputError(f"structure must be 'hnsw' or 'ivfpq', got {self.structure!r}")
        if not 0.0 < self.recall_target <= 1.0:
            raise IndexInputError(f"recall_target must be in (0, 1], got {self.recall_target}")
        if self.rerank_factor < 1 or self.min_rerank < 1:
            raise IndexInputError("rerank_factor and min_rerank must be >= 1")
        if self.retrain_growth <= 1.0:
            raise IndexInputError(f"retrain_growth must be > 1, got {self.retrain_growth}")
        if self.recalibrate_growth <= 1.0:
            raise IndexInputError(f"recalibrate_growth must be > 1, got {self.recalibrate_growth}")
        if not 0.0 <= self.max_tombstones < 1.0:
            raise IndexInputError(f"max_tombstones must be in [0, 1), got {self.max_tombstones}")
        if self.hnsw_codes not in ("SQ4", "SQ8"):
            raise IndexInputError(f"hnsw_codes must be 'SQ4' or 'SQ8', got {self.hnsw_codes!r}")
        if self.hnsw_entry_pivots is not None and self.hnsw_entry_pivots < 0:
            raise IndexInputError(f"hnsw_entry_pivots must be >= 0 or None, got {self.hnsw_entry_pivots}")
        if self.hnsw_fill_links < 0:
            raise IndexInputError(f"hnsw_fill_links must be >= 0, got {self.hnsw_fill_links}")
        if self.served_queries < 0 or self.served_min < 1:
            raise IndexInputError("served_queries must be >= 0 (0: off) and served_min >= 1")
        if self.hnsw_m < 2 or self.hnsw_ef_construction < 1 or self.max_ef_search < 1:
            raise IndexInputError("hnsw_m must be >= 2, hnsw_ef_construction and max_ef_search >= 1")
        for name in ("nlist", "pq_m", "nprobe", "ef_search"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise IndexInputError(f"{name} must be >= 1 or None, got {value}")


@dataclass(frozen=True)
class QdrantConfig:
    """Qdrant backend: embedded (``path``) or server (``url`` + ``api_key``) mode.

    Give exactly one of ``path`` (embedded, local files; brute force, for small libraries and tests)
    and ``url`` (a Qdrant server or cluster). Collection settings apply when the collection is
    created: ``on_disk`` vectors, ``on_disk_payload``, HNSW ``hnsw_m``/``hnsw_ef_construct``,
    ``quantization`` (``"none"``, ``"scalar"`` int8 or ``"binary"``, kept in RAM unless
    ``quantization_always_ram=False``, searched with re-scoring), and for a cluster
    ``shard_number``, ``replication_factor`` and ``write_consistency_factor`` (replicas that must
    confirm a write). Requests: ``write_ordering`` (``"weak"``, ``"medium"``, ``"strong"``: how a
    cluster orders concurrent updates of one point from several workers) and ``read_consistency``
    (``"all"``, ``"majority"``, ``"quorum"`` or a number of replicas a read must agree on). Upserts
    go in batches of ``batch_size`` with up to ``max_retries`` retries and exponential backoff.
    """

    path: str | None = None
    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    collection: str = "fgsearch"
    distance: Literal["dot", "cosine"] = "dot"
    on_disk: bool = True
    hnsw_m: int = 16
    hnsw_ef_construct: int = 128
    hnsw_ef: int | None = None
    quantization: Literal["none", "scalar", "binary"] = "scalar"
    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    on_disk_payload: bool = True
    quantization_always_ram: bool = True
    write_ordering: Literal["weak", "medium", "strong"] | None = None
    read_consistency: str | None = None
    batch_size: int = 256
    max_retries: int = 3
    retry_backoff_s: float = 0.5
    timeout_s: float = 30.0
    norm_tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.path is not None and self.url is not None:
            raise IndexInputError("QdrantConfig: give either path= (embedded) or url= (server), not both")
        if self.api_key is not None and self.url is None:
            raise IndexInputError("QdrantConfig: api_key is only used with url= (server mode)")
        if self.quantization not in ("none", "scalar", "binary"):
            raise IndexInputError(
                f"QdrantConfig: quantization must be none, scalar or binary, got {self.quantization!r}"
            )
        if self.distance not in ("dot", "cosine"):
            raise IndexInputError(f"QdrantConfig: distance must be dot or cosine, got {self.distance!r}")
        if self.batch_size < 1 or self.max_retries < 0:
            raise IndexInputError("QdrantConfig: batch_size must be >= 1 and max_retries >= 0")
        if self.write_ordering not in (None, "weak", "medium", "strong"):
            raise IndexInputError(
                f"QdrantConfig: write_ordering must be weak, medium or strong, got {self.write_ordering!r}"
            )
        rc = self.read_consistency
        if rc is not None and rc not in ("all", "majority", "quorum") and not (rc.isdigit() and int(rc) >= 1):
            raise IndexInputError(
                f"QdrantConfig: read_consistency must be all, majority, quorum or a number of replicas, got {rc!r}"
            )
        for name in ("shard_number", "replication_factor", "write_consistency_factor"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise IndexInputError(f"QdrantConfig: {name} must be >= 1, got {value}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-JSON form of a config (secrets dropped), for manifests and stats."""
    data = dataclasses.asdict(config)
    if "api_key" in data:
        data["api_key"] = None if data["api_key"] is None else "***"
    return data


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Inverse of :func:`config_to_dict` for config type ``cls`` (unknown keys are ignored, so old
    manifests still load)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    if "journal" in kwargs and isinstance(kwargs["journal"], dict):
        jnames = {f.name for f in dataclasses.fields(JournalConfig)}
        kwargs["journal"] = JournalConfig(**{k: v for k, v in kwargs["journal"].items() if k in jnames})
    return cls(**kwargs)


@dataclass(frozen=True)
class IndexSpec:
    """What to build: a backend ``kind``, the vector ``dim`` and the backend's configuration."""

    kind: str
    dim: int
    config: Any = None

    def __post_init__(self) -> None:
        from .registry import check_config, get_backend  # the registry knows each backend's config type

        get_backend(self.kind)
        if not isinstance(self.dim, int) or self.dim < 1:
            raise IndexInputError(f"dim must be a positive integer, got {self.dim!r}")
        object.__setattr__(self, "config", check_config(self.kind, self.config))
