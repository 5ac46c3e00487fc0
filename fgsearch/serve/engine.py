"""What the server does, without HTTP: search, image metadata, verified file bytes, thumbnails.

:class:`SearchService` owns one read-only :class:`~fgsearch.library.Library` and one model for the
whole process. It is safe to call from many threads at once:

* **Text encoding** goes through :class:`~fgsearch.serve.batching.BatchingEncoder`: one worker thread owns the model and
  encodes the short-path texts of concurrent requests as one batch (a batch of 8 costs far less
  than 8 single forwards); long or forced-path texts are encoded one at a time so a truncation
  notice reaches the request it belongs to. Image encoding takes the same model lock.
* **New vectors** written by an ``fgsearch index`` running in another process are picked up
  without a restart: every search runs through :meth:`Library.consistent`, which first reloads
  what the writer has committed (and reopens a library rebuilt with ``--reindex``) and searches one
  consistent state of catalog and indexes.
* **Decoded pixels share one budget** (:class:`~fgsearch.decode.PixelBudget`, as the indexer's
  workers do): an upload, a query by a library image and a thumbnail each reserve their pixels
  before decoding and keep them until the request is done with the image. A request that cannot
  get its pixels within ``decode_wait_s`` fails with :class:`~fgsearch.errors.BusyError` (HTTP
  503 with ``Retry-After``), so concurrent big uploads never hold more than the budget decoded.
* **Files are served only by catalog id.** The bytes read from an image's recorded path are served
  only when their SHA-256 is the content hash the catalog recorded when the image was indexed:
  a file replaced since (by another photo, or by a symlink to ``/etc/passwd``) is refused, so no
  client-supplied path and no symlink can make the server read anything else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgsearch.errors import BusyError, FgsearchError, ImageError, InputError
from fgsearch.scan import display_path
from fgsearch.serve.batching import BatchingEncoder

if TYPE_CHECKING:
    from fgsearch.decode import PixelBudget
    from fgsearch.library import Library
    from fgsearch.library.fastpath import FastPath
    from fgsearch.search import QueryInfo, SearchHit, SearchQuery

logger = logging.getLogger(__name__)

# library images passed the indexer's --max-megapixels (100 by default, which a user may raise); the
# catalog does not record the limit used, so the server bounds decoding memory with a generous one
_INDEXED_MEGAPIXELS = 1000.0
THUMB_SIZES = (128, 256, 512, 1024)  # a requested size is rounded up to one of these (bounded cache)


class NotFoundError(FgsearchError):
    """An image id the catalog does not know, or whose file is gone or changed since indexing."""


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``fgsearch serve`` can be told; limits guard the server against large requests."""

    library: str | None = None
    model: str | None = None
    device: str = "auto"
    fast: FastPath | None = None  # runtime + precision behind the quality gate (None: fp32 PyTorch)
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    cors: str | None = None
    max_results: int = 1000  # deepest result a search may ask for (offset + k)
    max_k: int = 200  # results per request
    max_text_chars: int = 4000  # 248 tokens are read; this only bounds the work of tokenising
    max_upload_bytes: int = 20 * 1024 * 1024
    max_upload_megapixels: float = 50.0
    max_file_bytes: int = 512 * 1024 * 1024  # largest original file served (read whole to verify its hash)
    batch_window_ms: float = 4.0  # how long the text worker waits for more texts to batch
    max_batch: int = 32
    model_threads: int | None = None  # CPU threads of a forward pass; None: all cores but one (see model_thread_count)
    # decoded pixels that uploads, queries by a library image and thumbnails may hold at once (a
    # 50 MP upload holds 0.5-0.6 GB while decoded); a request waits decode_wait_s for its share,
    # then is answered 503 with Retry-After
    decode_megapixels: float = 100.0
    decode_wait_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.decode_megapixels > 0:
            raise InputError(
                "{decode_megapixels} must be positive, got {got:g}",
                field="decode_megapixels",
                got=self.decode_megapixels,
            )
        if not self.decode_wait_s >= 0:
            raise InputError(
                "{decode_wait_s} must be 0 or more seconds, got {got:g}", field="decode_wait_s", got=self.decode_wait_s
            )

    def model_thread_count(self) -> int:
        """``model_threads``, else every core this process may use but one: searches (one core,
        mostly Python) run beside the text encoding of the next requests, and a forward pass that
        wants every core stalls whenever a search takes one (bench_serve, 8 clients on 2 cores:
        p50 226 ms with 2 threads, 193 ms with 1; 1 client: 50 vs 52 ms)."""
        if self.model_threads is not None:
            if self.model_threads < 1:
                raise InputError(
                    "{model_threads} must be at least 1, got {got}", field="model_threads", got=self.model_threads
                )
            return self.model_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores - 1)

    @property
    def max_body_bytes(self) -> int:
        """An upload plus room for the multipart framing and the JSON query."""
        return self.max_upload_bytes + 256 * 1024


class SearchService:
    """One library and one model, shared by every request of a server process."""

    def __init__(self, settings: ServeSettings) -> None:
        from fgsearch.library import Library, shared_encoder

        self.settings = settings
        # the model named by --model, else the library's own; loaded once, before the first request
        probe = Library.open(
            settings.library, model=settings.model, read_only=True, device=settings.device, fast=settings.fast
        )
        try:
            gated = settings.model is None or settings.fast is not None
            base = probe.encoder if gated else shared_encoder(settings.model or "", settings.device)
            for note in probe.notes:
                logger.warning("%s", note)
        finally:
            probe.close()
        # texts on the fast text tower where it was prepared for this model and passed its check
        self.text_runtime = _fast_text_for(base, settings.model_thread_count())
        self.encoder = BatchingEncoder(
            base, window_ms=settings.batch_window_ms, max_batch=settings.max_batch, text=self.text_runtime
        )
        self.lib: Library = Library.open(
            settings.library,
            model=settings.model,
            read_only=True,
            device=settings.device,
            encoder=self.encoder,
        )
        self._search_lock = threading.Lock()
        self.pixels = _pixel_budget(settings)
        self.thumb_dir = self.lib.path / "thumbs"
        self._thumb_cache_ok = True
        self.started = time.time()

    # ---- search ----------------------------------------------------------------------------
    def check(self, q: SearchQuery, offset: int = 0) -> None:
        """The server's limits and the query's own checks (:func:`~fgsearch.search.check_query`):
        before an upload is decoded or the model runs. An image query not decoded yet passes a
        placeholder object as its image."""
        from fgsearch.search import check_query

        s = self.settings
        if q.k < 1 or q.k > s.max_k:
            raise InputError("{k} must be between 1 and {most}, got {got}", field="k", most=s.max_k, got=q.k)
        if offset < 0 or offset + q.k > s.max_results:
            raise InputError(
                "{offset} + {k} must stay within the first {most} results, got {got}",
                field="offset", most=s.max_results, got=offset + q.k,
            )  # fmt: skip
        for name, text in (("text", q.text), ("negative", q.negative)):
            if text is not None and len(text) > s.max_text_chars:
                raise InputError(
                    "{field} is {n} characters; at most {most} are accepted",
                    field=name, n=len(text), most=s.max_text_chars,
                )  # fmt: skip
        check_query(q)

    def search(self, q: SearchQuery, offset: int = 0) -> tuple[list[SearchHit], QueryInfo, bool]:
        """Results ``offset .. offset + k`` of the ranking, the query info, and whether more follow."""
        from fgsearch.search import QueryInfo

        self.check(q, offset)
        info = QueryInfo()
        wide = replace(q, k=offset + q.k + 1)  # one more than asked: is there a next page?
        # Searches are mostly Python and hold the GIL: run side by side they share one core and
        # all finish at the end of the round; one at a time (after the batched text encoding),
        # the first results go back early (bench_serve, 8 clients: p50 295 -> 254 ms).
        hits = self.lib.search(query=wide, info=info, search_lock=self._search_lock)
        more = len(hits) > offset + q.k
        return hits[offset : offset + q.k], info, more

    @contextmanager
    def decoding(self) -> Iterator[Callable[[int], None]]:
        """``with service.decoding() as reserve:`` a share of the decoded-pixel budget for what the
        block decodes (pass ``reserve`` to :meth:`decode_upload` or :meth:`image_for_query`),
        given back when the block ends: drop the image before that. :class:`BusyError` when the
        pixels are not free within ``decode_wait_s``."""
        s = self.settings
        with self.pixels.hold(wait=s.decode_wait_s) as reserve:

            def reserve_or_busy(n: int) -> None:
                try:
                    reserve(n)
                except BusyError as e:
                    raise BusyError(
                        f"the server is busy decoding other images (at most {s.decode_megapixels:g} "
                        f"megapixels at once); retry in {e.retry_after} s",
                        retry_after=e.retry_after,
                    ) from e

            yield reserve_or_busy

    def decode_upload(self, data: bytes, reserve: Callable[[int], None] | None = None) -> Any:
        """An uploaded query image through the indexer's guarded decoder (size, bomb and corruption
        checks before any pixel is decoded). The one place the server decodes client bytes.
        ``reserve``: from :meth:`decoding` (every server request passes one)."""
        s = self.settings
        if len(data) > s.max_upload_bytes:
            raise ImageError(
                f"uploaded image is {len(data)} bytes, over the {s.max_upload_bytes} byte limit; send a smaller image"
            )
        try:
            # no flag to name: a client cannot raise the limit (the bomb's reason names the server's)
            return _decode(data, s.max_upload_megapixels, limit_flag=None, reserve=reserve)
        except ImageError as e:
            raise ImageError(f"uploaded image: {e}") from e

    def image_for_query(self, image_id: int, reserve: Callable[[int], None] | None = None) -> Any:
        """A library image, decoded, as the query image of "more like this" or a drawn box
        (``reserve``: as for :meth:`decode_upload`)."""
        return _decode(self.file_bytes(image_id)[0], _INDEXED_MEGAPIXELS, reserve=reserve)

    # ---- images ----------------------------------------------------------------------------
    def _row(self, image_id: int) -> Any:
        rows = self.lib.catalog.contents_by_ids([image_id])
        if not rows:
            raise NotFoundError(f"image {image_id} is not in the library")
        return rows[0]

    def image(self, image_id: int) -> dict[str, Any]:
        """Metadata and every region (id, box, rank) of one image."""
        row = self._row(image_id)
        regions = self.lib.catalog.regions_for_contents([image_id]).get(image_id, [])
        return {
            "image_id": row.id,
            "path": display_path(row.path),
            "paths": [display_path(p) for p in row.paths],
            "width": row.width,
            "height": row.height,
            "captured_at": row.captured_at.isoformat() if row.captured_at else None,
            "regions": [
                {"region_id": rid, "rank": i, "box": [round(v, 5) for v in box.as_tuple()]}
                for i, (rid, box) in enumerate(regions)
            ],
        }

    def _content_hash(self, image_id: int) -> str:
        h = self.lib.catalog.content_sha256(image_id)
        if h is None:
            raise NotFoundError(f"image {image_id} is not in the library")
        return str(h)

    def file_bytes(self, image_id: int) -> tuple[bytes, str]:
        """The original file of an image and the path it was read from: the first of its recorded
        paths whose bytes still hash to the indexed content."""
        row = self._row(image_id)
        want = self._content_hash(image_id)
        for path in row.paths:
            data = self._read_if_small(path)
            if data is not None and hashlib.sha256(data).hexdigest() == want:
                return data, path
        raise NotFoundError(
            f"image {image_id}'s file is gone or has changed since it was indexed; run `fgsearch index` again"
        )

    def _read_if_small(self, path: str) -> bytes | None:
        """The bytes of a regular file of at most ``max_file_bytes``; None for anything else (a FIFO
        would block a plain ``open`` forever, a device would be read until memory runs out)."""
        from fgsearch.decode import UnsafeFileError, open_regular

        limit = self.settings.max_file_bytes
        try:
            with open_regular(path) as f:
                data = f.read(limit + 1)
        except (OSError, UnsafeFileError):
            return None
        return data if len(data) <= limit else None

    def thumbnail(self, image_id: int, size: int) -> bytes:
        """A JPEG no larger than ``size`` (rounded up to one of THUMB_SIZES) on its longer side,
        EXIF-rotated; cached under ``<library>/thumbs/SIZE/`` by content hash."""
        if size < 1:
            raise InputError(f"thumbnail size must be positive, got {size}")
        size = next((t for t in THUMB_SIZES if t >= size), THUMB_SIZES[-1])
        self._row(image_id)  # known and indexed (not a pending or dropped content)
        want = self._content_hash(image_id)
        cached = self.thumb_dir / str(size) / f"{want}.jpg"
        try:
            return cached.read_bytes()
        except OSError:
            pass
        data, _ = self.file_bytes(image_id)
        with self.decoding() as reserve:
            out = _thumbnail_jpeg(data, size, reserve)  # the decoded image is gone when this returns
        self._store_thumb(cached, out)
        return out

    def _store_thumb(self, path: Path, data: bytes) -> None:
        if not self._thumb_cache_ok:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:  # a read-only library still serves thumbnails, made each time
            self._thumb_cache_ok = False
            logger.warning("thumbnails are not cached: cannot write %s (%s)", path.parent, e)

    # ---- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.lib.status()
        s = self.settings
        st["server"] = {
            "version": _version(),
            "uptime_s": round(time.time() - self.started, 1),
            "max_k": s.max_k,
            "max_results": s.max_results,
            "max_upload_bytes": s.max_upload_bytes,
            "max_upload_megapixels": s.max_upload_megapixels,
            "decode_megapixels": s.decode_megapixels,
            "thumb_sizes": list(THUMB_SIZES),
            "model_threads": _torch_threads(),
            "text_batches": self.encoder.batches,
            "batched_texts": self.encoder.batched_texts,
            "text_runtime": "onnx-text" if self.text_runtime is not None else "torch",
            "library_id": self.library_id,  # `fgsearch query --via-server` checks it (fgsearch.serve.discovery)
        }
        return st

    @property
    def library_id(self) -> str:
        return str(self.lib.store.build.epoch)

    def close(self) -> None:
        self.encoder.close()
        self.lib.close()


def _fast_text_for(base: Any, threads: int) -> Any:
    """The fast text tower of ``base``'s checkpoint (a CPU server only), or None where it was not
    prepared, failed its check, or onnxruntime is missing (texts then run on torch).

    The server's own instance, not the process-wide one of cold queries: ``threads`` (the model
    thread count) threads that sleep between forwards. ONNX Runtime's defaults (a thread per
    core, spinning when idle) took the core the searches run on (bench_serve, 8 clients)."""
    from fgsearch.errors import ModelNotFoundError
    from fgsearch.model.fast_text import load_fast_text

    if base.device_name != "cpu" or not base.spec.local_dir:
        return None
    try:
        fast = load_fast_text(base.spec.local_dir, threads=threads)
    except (ModelNotFoundError, ImportError) as e:
        logger.info("fast text path not used: %s", e)
        return None
    if fast.spec.fingerprint != base.spec.fingerprint:
        return None
    return fast


def _pixel_budget(s: ServeSettings) -> PixelBudget:
    """The decoded-pixel budget that every decode of the server shares (checked by ServeSettings)."""
    from fgsearch.decode import PixelBudget

    return PixelBudget(int(s.decode_megapixels * 1e6))


def _decode(
    data: bytes,
    max_megapixels: float,
    draft: int | None = None,
    limit_flag: str | None = "--max-megapixels",
    reserve: Callable[[int], None] | None = None,
) -> Any:
    """Bytes -> an EXIF-oriented RGB image, through the indexer's guarded decoder (pixel count checked
    before any pixel is decoded, truncation and corruption refused; ``reserve(pixels)`` called just
    before the pixels are decoded). Every decode of the server."""
    from fgsearch.decode import load_image

    return load_image(
        data,
        max_megapixels=max_megapixels,
        min_side=1,
        draft=(draft, draft) if draft else None,
        reserve=reserve,
        limit_flag=limit_flag,
    ).image


def _thumbnail_jpeg(data: bytes, size: int, reserve: Callable[[int], None]) -> bytes:
    """The JPEG bytes of an image file's thumbnail, at most ``size`` px on its longer side."""
    import io

    img = _decode(data, _INDEXED_MEGAPIXELS, draft=size, reserve=reserve)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _version() -> str:
    from fgsearch._version import __version__

    return __version__
