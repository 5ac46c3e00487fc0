"""What an index run is asked to do (:class:`IndexOptions`) and what it did (:class:`IndexReport`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fgsearch.errors import InputError
from fgsearch.scan import display_path

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int, int], None]  # (stage, files done, files to do, images embedded)

#: how the stages of a run are arranged (:mod:`fgsearch.ingest.pipeline`)
PIPELINES = ("auto", "serial", "overlap", "device")


@dataclass(frozen=True)
class IndexOptions:
    """What ``fgsearch index`` does; defaults are what a user expects."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()  # extra file extensions to walk (Pillow-readable ones are walked anyway)
    hidden: bool = False
    prune: bool = True
    retry_failed: bool = False
    batch_size: int = 0  # images per forward pass and per commit; 0 = 32 on a CPU, 256 on a GPU
    workers: int = 0  # decode threads; 0 = min(8, CPU count)
    max_megapixels: float = 100.0
    min_side: int = 16
    fast_decode: bool = False  # JPEG draft decoding: faster, not bit-exact with the reference resize
    follow_links: bool = False  # follow symbolic links that lead outside the indexed folders
    prune_unselected: bool = False  # also drop files still on disk that include/exclude/hidden left out
    # serial | overlap (stage/embed/commit threads) | device (overlap + JPEGs decoded on the model's
    # device) | auto (device on CUDA, serial elsewhere): see fgsearch.ingest.pipeline
    pipeline: str = "auto"

    def check(self) -> None:
        """Reject bad options before a run records anything (``--ext``, ``--batch-size``)."""
        from fgsearch.scan import readable_extensions

        readable_extensions(self.extensions)
        self.resolved_batch_size(False)
        if self.pipeline not in PIPELINES:
            raise InputError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")

    def resolved_workers(self) -> int:
        return self.workers if self.workers > 0 else min(8, os.cpu_count() or 2)

    def resolved_batch_size(self, on_accelerator: bool) -> int:
        """An accelerator gets bigger batches: the per-batch commit (fsync of both indexes and the
        catalog) would otherwise cost as much as its forward pass."""
        if self.batch_size < 0:
            raise InputError(
                "{batch_size} must be >= 1 (or 0 for automatic), got {got}", field="batch_size", got=self.batch_size
            )
        if self.batch_size > 0:
            return self.batch_size
        return 256 if on_accelerator else 32


@dataclass
class IndexReport:
    """Counts of one run, and the failures it recorded (path, reason).

    The counts partition the files scanned: ``scanned == indexed + reused + unchanged + failed``.
    ``unchanged`` are files indexed before and not changed since; ``failed`` are all files that are
    failed after this run, of which ``failed_unchanged`` failed before and did not change (they are
    not read again unless ``--retry-failed``)."""

    scanned: int = 0
    unchanged: int = 0
    indexed: int = 0
    reused: int = 0
    failed: int = 0
    failed_unchanged: int = 0
    pruned: int = 0
    regions: int = 0
    #: of ``indexed``: images whose vectors a rebuild took from the old vector files (no forward pass)
    vectors_reused: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # things a user should hear about (not failures)
    failures_listed: int = 20  # how many failures are kept in ``failures`` (all are counted)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # pipelined runs: busy seconds per stage

    @property
    def outcome(self) -> str:
        """``"none"``: files failed and none of the folders' files is indexed (e.g. the only file
        is not an image); ``"partial"``: files failed in this run (new or changed files, or ones
        tried again), others are indexed; ``"complete"``: no file failed in this run (files that
        failed before and did not change are not counted again: a nightly run reports a bad file
        once). The CLI's exit status follows it (docs/indexing.md#exit-status)."""
        if self.failed and not (self.indexed + self.reused + self.unchanged):
            return "none"
        return "partial" if self.failed > self.failed_unchanged else "complete"

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def note_failure(self, path: str, reason: str) -> None:
        """Count a file that could not be indexed (rclip's ``skipping <path>: <reason>``)."""
        self.failed += 1
        if len(self.failures) < self.failures_listed:
            self.failures.append((path, reason))
        logger.info("skipping %s: %s", path, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "unchanged": self.unchanged,
            "indexed": self.indexed,
            "reused": self.reused,
            "failed": self.failed,
            "failed_unchanged": self.failed_unchanged,
            "outcome": self.outcome,
            "pruned": self.pruned,
            "regions": self.regions,
            "vectors_reused": self.vectors_reused,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "failures": [{"path": display_path(p), "reason": r} for p, r in self.failures],
            "warnings": list(self.warnings),
            **({"stage_seconds": dict(self.stage_seconds)} if self.stage_seconds else {}),
        }
