"""Distributed indexing with Ray: the prepare and embed stages run as Ray tasks on the cluster's
workers; planning, the new-or-copy decision and the commit stay in the driver (the one writer).

The driver plans from the catalog as a local run does (:func:`fgsearch.ingest.run_index`), cuts the
planned files into chunks (one batch each) and keeps ``workers`` chunks in flight. A task reads,
hashes, decodes and preprocesses its chunk with the local runner's :class:`Preparer` (same guarded
opener, decoder, size caps and failure reasons) and embeds it with :func:`embed_batch` on the
worker's copy of the model (loaded once per worker process; on a GPU with ``gpus_per_worker``).
Results come back to the driver, which commits them in plan order with the local runner's
:class:`Committer`, so a Ray run gives the same library as a local one.

Faults: a task lost with its node is retried by Ray (``max_retries``) and its result arrives once,
so nothing is lost or committed twice. A driver killed mid-run leaves at most the batch in commit
as ``pending`` rows that the next writer undoes; the next run plans only what is missing. Two
drivers on one library: the second cannot open it for writing (the library's writer lock).

Why tasks and not Ray Data, and why the driver writes: see docs/scale.md (measured on 2 cores:
tasks add no measurable cost over a process pool, Ray Data's actor pool 9-15 %; the commit is a
small share of a batch's time with the demo model and less with a real one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fgsearch.errors import FgsearchError, InputError

if TYPE_CHECKING:
    from fgsearch.ingest.commit import Committer
    from fgsearch.ingest.embed import Embedded
    from fgsearch.ingest.options import IndexOptions, ProgressFn
    from fgsearch.ingest.prepare import Prepared
    from fgsearch.library.store import LibraryStore
    from fgsearch.model import Encoder
    from fgsearch.regions import ImageBoxes, RegionSettings

logger = logging.getLogger(__name__)

RAY_EXTRA = 'pip install "fgsearch[ray]"'


class RayWorkerError(FgsearchError):
    """A Ray task failed for good (after its retries), or the cluster went away."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes.

    ``address``: ``auto`` joins the cluster named by ``RAY_ADDRESS`` or starts a local one; else a
    cluster address (``HOST:6379`` or ``ray://HOST:10001``). ``workers``: chunks in flight at once
    (0: one per ``cpus_per_worker`` CPUs of the cluster, or one per ``gpus_per_worker`` GPUs).
    ``cpus_per_worker``: CPUs a task asks Ray for, and its decode threads (a GPU worker wants
    several: ~10 per GPU for fg-clip-base, docs/scale.md). ``chunk``: files per task (0: the batch
    size). ``max_retries``: how often Ray retries a task whose worker or node died."""

    address: str = "auto"
    workers: int = 0
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    chunk: int = 0
    max_retries: int = 5

    def check(self) -> None:
        if self.workers < 0:
            raise InputError(f"--workers must be >= 0 (0: one per CPU of the cluster), got {self.workers}")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if not self.cpus_per_worker > 0:
            raise InputError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if not self.address.strip():
            raise InputError(
                "--ray needs an address: auto (local cluster or $RAY_ADDRESS), HOST:PORT or ray://HOST:PORT"
            )


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to prepare and embed exactly as the driver's library expects."""

    model: str
    device: str
    regions: RegionSettings
    opts: IndexOptions
    decode_threads: int = 1
    precision: str = "fp32"  # the driver's encoder path, so every worker embeds as the driver would
    runtime: str = "torch"


@dataclass
class ChunkResult:
    """A chunk after the prepare and embed stages: ``preps`` in plan order (pixels dropped),
    ``rows[i]`` the row of ``preps[i]`` in ``emb`` (-1: not embedded: failed, known content, or a
    repeat of bytes earlier in the chunk). ``node``: the Ray node that ran it."""

    preps: list[Prepared]
    rows: list[int]
    emb: Embedded | None
    node: str = ""


def import_ray() -> Any:
    """Ray, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError as e:
        raise InputError(f"--ray needs Ray, an optional extra: {RAY_EXTRA}") from e
    return ray


class RayMapper:
    """The Ray mapper for :func:`fgsearch.ingest.run_index` (see the module docstring)."""

    def __init__(self, options: RayOptions) -> None:
        options.check()
        self.options = options
        self.ray = import_ray()
        self.workers = 0  # resolved when the run starts
        self.chunk_nodes: list[str] = []  # the Ray node of each chunk committed, in plan order
        self.commit_seconds = 0.0  # the driver's time in the commit stage (the one writer's load)

    def __call__(
        self,
        store: LibraryStore,
        encoder: Encoder,
        committer: Committer,
        todo: list[tuple[str, Any]],
        reserved: set[str],
        opts: IndexOptions,
        progress: ProgressFn | None,
    ) -> Sequence[ImageBoxes]:
        from fgsearch.ingest.batcher import SeenBoxes

        ray, o = self.ray, self.options
        if opts.pipeline not in ("auto", "serial"):  # the local pipelines' threads do not apply to Ray workers
            raise InputError(f"--pipeline {opts.pipeline} is for a local run; leave it out with --ray")
        started = self._connect()
        try:
            self.workers = self._resolve_workers()
            device = "cuda" if o.gpus_per_worker > 0 else "cpu"
            runtime = "openvino" if "openvino" in type(encoder).__module__ else "torch"
            precision = str(getattr(encoder, "precision", "fp32"))
            threads = max(1, int(o.cpus_per_worker))
            spec = WorkerSpec(store.build.model, device, store.build.regions, opts, threads, precision, runtime)
            size = o.chunk or opts.resolved_batch_size(o.gpus_per_worker > 0)
            chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
            task = ray.remote(
                num_cpus=o.cpus_per_worker,
                num_gpus=o.gpus_per_worker,
                max_retries=o.max_retries,
                scheduling_strategy="SPREAD",  # across nodes: a lost node takes as little work as possible
            )(prepare_embed_chunk)
            known = [ray.put(frozenset(reserved))]  # in a list: the worker fetches it once per process
            seen = SeenBoxes()
            if progress:
                progress("index", 0, len(todo), 0)
            done = 0
            for result in self._results(task, spec, chunks, known):
                t0 = time.perf_counter()
                commit_chunk(committer, result, reserved, seen)
                self.commit_seconds += time.perf_counter() - t0
                self.chunk_nodes.append(result.node)
                done += len(result.preps)
                if progress:
                    progress("index", done, len(todo), committer.report.indexed)
            return seen
        finally:
            if started:
                ray.shutdown()

    def _results(self, task: Any, spec: WorkerSpec, chunks: list[list[Any]], known: list[Any]) -> Any:
        """Chunk results in plan order, ``workers`` tasks in flight, a bounded reorder buffer. A
        finished task is replaced before its result is committed, so workers never wait on the
        driver's commit."""
        ray = self.ray
        pending: dict[Any, int] = {}
        ready_results: dict[int, ChunkResult] = {}
        submitted = committed = 0

        def fill() -> None:
            nonlocal submitted
            while submitted < len(chunks) and len(pending) < self.workers and len(ready_results) < 4 * self.workers:
                pending[task.remote(spec, chunks[submitted], known)] = submitted
                submitted += 1

        try:
            while committed < len(chunks):
                fill()
                if committed not in ready_results:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        index = pending.pop(ref)  # finished: never cancelled, even when its result is an error
                        ready_results[index] = self._get(ref)
                    fill()
                while committed in ready_results:
                    yield ready_results.pop(committed)
                    committed += 1
        finally:
            self._cancel(list(pending))

    def _cancel(self, refs: list[Any]) -> None:
        """A failed or interrupted run leaves no work behind on the cluster: the tasks still running
        are cancelled. Only those: Ray 2.60's driver aborts ("Tried to complete task that was not
        pending") when a task that has finished is force-cancelled, so finished tasks are left out and
        the cancel is the cooperative one (the task is interrupted in its worker; a finished task is
        untouched and the worker process lives on)."""
        if not refs:
            return
        ray = self.ray
        _, running = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in running:
            ray.cancel(ref, force=False)

    def _get(self, ref: Any) -> ChunkResult:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            if isinstance(cause, FgsearchError):
                raise type(cause)(f"on a Ray worker: {cause}") from e
            raise RayWorkerError(f"a Ray worker failed: {type(cause).__name__}: {cause}; see the worker's log") from e
        except ray.exceptions.RayError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RayWorkerError(
                f"a Ray task was lost after {self.options.max_retries} retries ({first}); run the same command "
                "again to finish (committed batches are kept)"
            ) from e

    def _connect(self) -> bool:
        """Join (or start) the cluster; True when this call started the connection (and ends it)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        address = self.options.address
        kw: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False, "log_to_driver": False}
        try:
            if address == "auto":
                ray.init(**kw)  # $RAY_ADDRESS if set, else a local cluster on this machine
            else:
                ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise InputError(f"--ray {address}: cannot reach a Ray cluster there ({e}); check the address") from e
        return True

    def _resolve_workers(self) -> int:
        o = self.options
        if o.workers > 0:
            return o.workers
        res = self.ray.cluster_resources()
        if o.gpus_per_worker > 0:
            n = int(res.get("GPU", 0) // o.gpus_per_worker)
            if n < 1:
                raise InputError(
                    f"--gpus-per-worker {o.gpus_per_worker}: the Ray cluster has {res.get('GPU', 0)} GPU(s); "
                    "give --gpus-per-worker 0 to embed on CPUs"
                )
            return n
        return max(1, int(res.get("CPU", 1) // o.cpus_per_worker))


def commit_chunk(committer: Committer, result: ChunkResult, reserved: set[str], seen: Any) -> None:
    """The driver's half of a chunk, as the local runner does it: failures recorded, first
    occurrences of new bytes committed with their vectors, copies linked to committed content."""
    from fgsearch.ingest.embed import Embedded

    batch: list[Prepared] = []
    rows: list[int] = []
    copies: list[Prepared] = []
    for prep, row in zip(result.preps, result.rows, strict=True):
        if prep.kind == "failed":
            committer.failure(prep)
        elif prep.sha256 in reserved:
            copies.append(prep)
        else:
            if row < 0 or result.emb is None:  # the worker embeds every first occurrence of unknown bytes
                raise RayWorkerError(f"{prep.path}: the worker returned no vectors for new content")
            batch.append(prep)
            rows.append(row)
            reserved.add(prep.sha256)
            if prep.boxes is not None:
                seen.add(prep.boxes)
    if batch:
        assert result.emb is not None
        emb = result.emb
        picked = Embedded(emb.images[rows], [emb.regions[r] for r in rows], [emb.boxes[r] for r in rows])
        committer.store_batch(batch, picked)
    committer.link_copies(copies)


# ---- the worker's side ----------------------------------------------------------------------------

_KNOWN: dict[str, frozenset[str]] = {}
_WORKER_LOCK = threading.Lock()


def prepare_embed_chunk(spec: WorkerSpec, chunk: list[tuple[str, Any]], known: list[Any]) -> ChunkResult:
    """A Ray task: the prepare and embed stages of one chunk (pure: reads files, writes nothing)."""
    from concurrent.futures import ThreadPoolExecutor

    from fgsearch.decode import PixelBudget, routed_warnings
    from fgsearch.ingest.embed import embed_batch
    from fgsearch.ingest.prepare import Preparer, ordered
    from fgsearch.library.settings import shared_encoder
    from fgsearch.regions import make_proposer

    if spec.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError("Ray gave this worker a GPU but torch sees no CUDA device; install a CUDA build of torch")
    encoder = shared_encoder(spec.model, spec.device, spec.precision, spec.runtime)
    proposer = make_proposer(spec.regions)
    budget = PixelBudget(int(spec.opts.max_megapixels * 1e6))
    preparer = Preparer(encoder.transform, spec.opts, _known_hashes(known[0]), budget, proposer)
    with routed_warnings():
        if spec.decode_threads == 1:  # a 1-CPU worker decodes on its own thread: it uses the CPU Ray gave it
            preps = [preparer(item) for item in chunk]
        else:
            with ThreadPoolExecutor(max_workers=spec.decode_threads, thread_name_prefix="fgsearch-decode") as pool:
                preps = list(ordered(pool, preparer, chunk, ahead=2 * spec.decode_threads))
    rows: list[int] = []
    firsts: set[str] = set()
    new: list[Prepared] = []
    for p in preps:
        if p.kind == "new" and p.sha256 not in firsts:
            firsts.add(p.sha256)
            rows.append(len(new))
            new.append(p)
        else:
            rows.append(-1)
    emb = embed_batch(encoder, proposer, new) if new else None
    for p in preps:
        p.pixels = None  # the pixels stay on the worker
    import ray

    return ChunkResult(preps, rows, emb, ray.get_runtime_context().get_node_id())


def _known_hashes(ref: Any) -> frozenset[str]:
    """The library's content hashes at the start of the run, fetched once per worker process."""
    import ray

    key = ref.hex()
    with _WORKER_LOCK:
        if key not in _KNOWN:
            _KNOWN.clear()  # one run's set at a time
            _KNOWN[key] = ray.get(ref)
        return _KNOWN[key]
