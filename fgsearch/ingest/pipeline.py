"""The overlapped index run: stage, embed and commit in their own threads, joined by bounded queues.

``--pipeline serial`` (the CPU default) embeds and commits each batch in the thread that
assembles batches, so the model waits while the catalog and indexes are written. On a GPU the
commit (fsync of two indexes and the catalog) and the host side of decoding would otherwise idle
the device between batches. :class:`PipelinedBatcher` keeps the runner's rules (walk order, new
content vs copy, copies linked after their content is committed) and hands each batch through::

    batcher (runner thread) -> stage thread -> embed thread -> commit thread
                            queue          queue          queue      (each holds `depth` batches)

* stage: the batch's model input on the model's device (:class:`~fgsearch.ingest.device.DeviceStager`:
  JPEGs decoded there, on a side CUDA stream) or collated on the CPU (``overlap``);
* embed: the forward pass and the region proposals (:func:`~fgsearch.ingest.embed.embed_pixels`);
* commit: the one writer (:class:`~fgsearch.ingest.commit.Committer`), failures included, in order.

Only the commit thread touches the catalog and the indexes. A crash loses at most the batches in
flight (``depth`` per queue); ``pending`` rows are undone by the next writer as before. An error in
any thread stops the run: the batches before it are committed, the error is raised by
:meth:`PipelinedBatcher.close` (or by the next hand-off). Seconds per stage (thread busy time) and
the time the embed thread waited for the committer (``commit_wait``: the device stalled by
commits) are in :attr:`IndexReport.stage_seconds`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fgsearch.errors import InputError
from fgsearch.ingest.batcher import Batcher
from fgsearch.ingest.options import PIPELINES

if TYPE_CHECKING:
    from fgsearch.ingest.device import DeviceStager
    from fgsearch.ingest.options import IndexOptions
    from fgsearch.ingest.prepare import Prepared
    from fgsearch.model import Encoder

logger = logging.getLogger(__name__)

_END = None


def resolve_pipeline(opts: IndexOptions, encoder: Encoder) -> str:
    """``auto``: ``device`` on a CUDA encoder with a fixed-size transform and torchvision,
    ``serial`` elsewhere. ``device`` where the encoder's device cannot decode is an error."""
    from fgsearch.ingest.device import device_decode_supported

    name = opts.pipeline
    if name not in PIPELINES:
        raise InputError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {name!r}")
    fixed = getattr(encoder.transform, "image_size", None) is not None
    why = device_decode_supported(encoder.device_name)
    if name == "auto":
        return "device" if encoder.device_name.startswith("cuda") and fixed and why is None else "serial"
    if name == "device" and (why or not fixed):
        reason = why or f"the {encoder.family_name} family's images vary in shape (NaFlex)"
        raise InputError(f"--pipeline device: cannot decode on {encoder.device_name}: {reason}; use --pipeline overlap")
    return name


@dataclass
class StageTimes:
    """Seconds per stage, added from several threads."""

    seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds


@dataclass
class PipelinedBatcher(Batcher):
    """The runner's batcher with stage, embed and commit in threads (see the module docstring)."""

    stager: DeviceStager | None = None
    depth: int = 2
    times: StageTimes = field(default_factory=StageTimes)

    def __post_init__(self) -> None:
        self._error: BaseException | None = None
        self._failed_at: int | None = None  # which stage failed (0 stage, 1 embed, 2 commit)
        self._lock = threading.Lock()
        self._stage_q: queue.Queue[Any] = queue.Queue(self.depth)
        self._embed_q: queue.Queue[Any] = queue.Queue(self.depth)
        self._commit_q: queue.Queue[Any] = queue.Queue(self.depth)
        self._failed_sha: dict[str, str] = {}  # content no decoder could read: its copies fail too
        stages = {"stage": (self._stage_q, self._stage), "embed": (self._embed_q, self._embed)}
        stages["commit"] = (self._commit_q, self._commit)
        self._threads = [
            threading.Thread(target=self._loop, args=args, name=f"fgsearch-{name}", daemon=True)
            for name, args in stages.items()
        ]
        for t in self._threads:
            t.start()
        self._closed = False

    # ---- the runner's thread ---------------------------------------------------------------
    def hand_off(self, batch: list[Prepared], copies: list[Prepared]) -> None:
        self._raise_if_failed()
        if batch or copies:
            self._stage_q.put(("batch", batch, copies))

    def failed(self, prep: Prepared) -> None:
        self._raise_if_failed()
        self._stage_q.put(("failed", prep))

    def close(self) -> None:
        """Wait until everything handed off is committed; raise the first error of any stage."""
        if not self._closed:
            self._closed = True
            self._stage_q.put(_END)
            for t in self._threads:
                t.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # ---- the stage threads -----------------------------------------------------------------
    def _loop(self, inbox: queue.Queue[Any], work: Callable[[Any], Any]) -> None:
        """Take items in order; pass on what ``work`` returns; after an error, drain and pass the end."""
        order = [self._stage_q, self._embed_q, self._commit_q]
        me = order.index(inbox)
        outbox = order[me + 1] if me + 1 < len(order) else None
        while True:
            item = inbox.get()
            if item is _END:
                if outbox is not None:
                    outbox.put(_END)
                return
            if self._failed_at is not None and self._failed_at >= me:  # later stages finish what came before
                continue
            try:
                out = work(item)
            except BaseException as e:  # stop the run: the runner raises it
                logger.debug("index pipeline stage failed", exc_info=True)
                with self._lock:
                    if self._error is None:
                        self._error, self._failed_at = e, me
                continue
            if outbox is not None and out is not None:
                if outbox is self._commit_q:
                    t0 = time.perf_counter()
                    outbox.put(out)
                    self.times.add("commit_wait", time.perf_counter() - t0)
                else:
                    outbox.put(out)

    def _stage(self, item: Any) -> Any:
        if item[0] == "failed":
            return item
        _, batch, copies = item
        if not batch:
            return ("batch", batch, copies, None, None, [])
        with self.times.timed("device_decode" if self.stager is not None else "collate"):
            if self.stager is not None:
                pixels, bad, event = self.stager.stage(batch)
                if self.stager.stream is not None:  # honest timing: this thread alone waits for its stream
                    self.stager.stream.synchronize()
            else:
                pixels, bad, event = self.encoder.transform.collate([p.pixels for p in batch]), [], None
        failed = [batch[i] for i in bad]
        kept = [p for i, p in enumerate(batch) if i not in set(bad)]
        return ("batch", kept, copies, pixels, event, failed)

    def _embed(self, item: Any) -> Any:
        from fgsearch.ingest.embed import embed_pixels

        if item[0] == "failed":
            return item
        _, batch, copies, pixels, event, failed = item
        emb = None
        if batch:
            if self.stager is not None:
                self.stager.wait(event, pixels.pixels)
            t0 = time.perf_counter()
            on_device = True if self.stager is not None else None  # the device pipeline proposes there
            emb = embed_pixels(self.encoder, _TimedProposer(self.proposer, self.times), pixels, batch, on_device)
            self.times.add("forward", time.perf_counter() - t0)
        return ("batch", batch, copies, emb, failed)

    def _commit(self, item: Any) -> None:
        with self.times.timed("storage"):
            if item[0] == "failed":
                self.committer.failure(item[1])
                return
            _, batch, copies, emb, failed = item
            for p in failed:
                p.kind = "failed"
                self._failed_sha[p.sha256] = p.reason
                self.committer.failure(p)
            if batch:
                self.committer.store_batch(batch, emb)
            linked = []
            for p in copies:
                if p.sha256 in self._failed_sha:
                    p.kind, p.reason = "failed", self._failed_sha[p.sha256]
                    self.committer.failure(p)
                else:
                    linked.append(p)
            self.committer.link_copies(linked)


class _TimedProposer:
    """A proposer whose proposals from dense maps (``after``, or ``after_tensors`` on the device)
    add to the ``proposals`` stage; the embed thread subtracts them from ``forward``. On CUDA the
    clock starts when the forward pass has finished (one wait), so that its queued work is not
    counted as proposals; the proposer itself reads its result back, which ends the interval."""

    def __init__(self, inner: Any, times: StageTimes) -> None:
        self._inner, self._times = inner, times

    def __getattr__(self, name: str) -> Any:
        got = getattr(self._inner, name)  # AttributeError for a method the proposer lacks
        if name not in ("after", "after_tensors"):
            return got

        def timed(maps: Any) -> Any:
            _wait_for_device(maps)
            t0 = time.perf_counter()
            try:
                return got(maps)
            finally:
                dt = time.perf_counter() - t0
                self._times.add("proposals", dt)
                self._times.add("forward", -dt)

        return timed


def _wait_for_device(maps: Any) -> None:
    """Wait for the CUDA work that made ``maps`` (tensors; numpy maps were already copied)."""
    device = getattr(maps[0], "device", None) if len(maps) else None  # numpy 2 arrays have device "cpu"
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.current_stream(device).synchronize()
