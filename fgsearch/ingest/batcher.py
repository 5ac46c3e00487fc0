"""The batching step of an index run: prepared files in, batches of new images embedded and
committed, copies linked after their original (:class:`Batcher`); and what the proposer said of
each new image (:class:`SeenBoxes`), for the run's end-of-run warnings.

:class:`Batcher` does the work in the calling thread; :class:`fgsearch.ingest.pipeline.PipelinedBatcher`
hands it to other threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fgsearch.ingest.embed import embed_batch

if TYPE_CHECKING:
    from fgsearch.ingest.commit import Committer
    from fgsearch.ingest.prepare import Prepared
    from fgsearch.model import Encoder
    from fgsearch.regions import ImageBoxes, Proposer


@dataclass
class Batcher:
    """Takes prepared files in walk order, decides new content or copy, and embeds and commits a
    batch whenever one is full.

    ``reserved`` holds the content already embedded plus the content queued for embedding by this
    run. Only this thread adds to it, as it assembles batches, so a second copy of the same bytes
    is always linked to the first (committed in its batch before any link is written), never
    reserved twice, however far ahead the workers decoded it."""

    encoder: Encoder
    proposer: Proposer
    committer: Committer
    batch_size: int
    reserved: set[str]
    batch: list[Prepared] = field(default_factory=list)
    copies: list[Prepared] = field(default_factory=list)
    seen: SeenBoxes = field(default_factory=lambda: SeenBoxes())  # what the proposer said of each new image

    def add(self, prep: Prepared) -> None:
        if prep.kind == "failed":
            self.failed(prep)
        elif prep.sha256 in self.reserved:  # a worker's "reuse", or a copy it decoded before its original was queued
            self.copies.append(prep)
        else:
            self.batch.append(prep)
            self.reserved.add(prep.sha256)
            if prep.boxes is not None:
                self.seen.add(prep.boxes)
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Hand the batch and its copies on (see :meth:`hand_off`), and start a new batch."""
        batch, copies = self.batch, self.copies
        self.batch, self.copies = [], []
        self.hand_off(batch, copies)

    def hand_off(self, batch: list[Prepared], copies: list[Prepared]) -> None:
        """Embed and commit the batch, then link the copies (their content is committed by now).
        :class:`fgsearch.ingest.pipeline.PipelinedBatcher` does this in other threads."""
        if batch:
            reuse = self.committer.store.reuse
            if reuse is not None:  # a rebuild without the catalog: recorded vectors where the hash matches
                before = len(reuse.used)
                emb = reuse.embed(batch, lambda rest: embed_batch(self.encoder, self.proposer, rest))
                self.committer.report.vectors_reused += len(reuse.used) - before
            else:
                emb = embed_batch(self.encoder, self.proposer, batch)
            self.committer.store_batch(batch, emb)
        self.committer.link_copies(copies)

    def failed(self, prep: Prepared) -> None:
        self.committer.failure(prep)

    def close(self) -> None:
        """Wait for everything handed off to be committed (nothing to wait for here)."""


class SeenBoxes(Sequence["ImageBoxes"]):
    """What the proposer said of each new image of a run, for its end-of-run warnings, without
    the boxes themselves (a run may have millions of images): entries that name no source and
    skipped nothing are only counted."""

    def __init__(self) -> None:
        self._notable: list[ImageBoxes] = []
        self._plain: ImageBoxes | None = None
        self._n_plain = 0

    def add(self, boxes: ImageBoxes) -> None:
        from dataclasses import replace

        import numpy as np

        light = replace(boxes, boxes=np.zeros((0, 4), np.float32))
        if boxes.source is not None or boxes.skipped:
            self._notable.append(light)
        else:
            self._plain = self._plain or light
            self._n_plain += 1

    def __len__(self) -> int:
        return len(self._notable) + self._n_plain

    def __getitem__(self, i: int) -> ImageBoxes:  # type: ignore[override]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i < len(self._notable):
            return self._notable[i]
        assert self._plain is not None
        return self._plain
