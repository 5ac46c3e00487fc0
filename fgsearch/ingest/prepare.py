"""Prepare stage of an index run: read, hash, decode and preprocess one file (worker threads).

:class:`Preparer` is a plain callable from a planned ``(root, entry)`` to a :class:`Prepared`
item; it touches neither the catalog nor the model (only the model's image preprocessing), so any
runner can map it over files. A bad file never raises: the reason is in the result.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fgsearch.errors import FgsearchError

if TYPE_CHECKING:
    from fgsearch.decode import PixelBudget
    from fgsearch.ingest.options import IndexOptions
    from fgsearch.regions import ImageBoxes, Proposer

logger = logging.getLogger(__name__)

READ_WHOLE_BYTES = 64 << 20  # smaller files are read once into memory; bigger ones are streamed


@dataclass
class Prepared:
    """One planned file after the prepare stage."""

    kind: str  # "new", "reuse" (its bytes are known content: no decode), "failed"
    path: str
    size: int
    mtime_ns: int
    sha256: str = ""
    pixels: Any = None  # the model family's preprocessed item
    width: int = 0
    height: int = 0
    captured_at: Any = None
    boxes: ImageBoxes | None = None  # what the proposer knew of it before the forward pass (not 'auto')
    reason: str = ""


@dataclass
class Preparer:
    """What a prepare worker needs: read, hash, decode and preprocess one file at a time.

    ``known`` holds the hashes already embedded or queued for embedding; it only grows, so a hit
    means the decode can be skipped. A miss decides nothing: the runner decides new vs copy,
    because an earlier copy may be queued after this worker looked. ``budget`` bounds the pixels
    decoded at once by all workers together (peak memory). ``transform`` is the model's image
    preprocessing; ``proposer`` gives boxes known before the forward pass (grid, sidecar).
    ``opener`` opens a planned path (default :func:`fgsearch.ingest.sources.open_source`: local
    regular files, or object-store URLs through fsspec)."""

    transform: Any
    opts: IndexOptions
    known: set[str] | frozenset[str]
    budget: PixelBudget
    proposer: Proposer
    opener: Callable[[str], Any] | None = None

    def __call__(self, item: tuple[str, Any]) -> Prepared:
        """One file; never raises for a bad file (the reason is in the result)."""
        from fgsearch.decode import UnsafeFileError
        from fgsearch.ingest.sources import open_source

        root, entry = item
        base = Prepared("failed", entry.path, entry.size, entry.mtime_ns)
        try:
            with (self.opener or open_source)(entry.path) as f:
                source = read_and_hash(f, base)
                if base.sha256 in self.known:
                    base.kind = "reuse"
                    return base
                return self._decode(source, base, root)  # never raises
        except UnsafeFileError:
            base.reason = "not a regular file (a pipe, device or socket); it is never read"
        except PermissionError:
            base.reason = "permission denied; make the file readable (chmod +r)"
        except OSError as e:
            base.reason = f"cannot read: {e.strerror or e}"
        return base

    def _decode(self, source: bytes | Any, base: Prepared, root: str | None) -> Prepared:
        from fgsearch.decode import load_image

        try:
            with self.budget.hold() as reserve:  # the full-size image lives until item()
                loaded = load_image(
                    source,
                    max_megapixels=self.opts.max_megapixels,
                    min_side=self.opts.min_side,
                    draft=self.transform.image_size if self.opts.fast_decode else None,
                    reserve=reserve,
                )
                base.pixels = self.transform.item(loaded.image)
                base.width, base.height, base.captured_at = loaded.width, loaded.height, loaded.captured_at
                heard = loaded.warnings
                del loaded  # the full-size image is freed before its pixels go back to the budget
            for warning in heard:
                logger.info("%s: %s", base.path, warning)
            if not self.proposer.uses_dense:
                base.boxes = self.proposer.before(base.path, root, base.width, base.height)
        except FgsearchError as e:  # ImageError, or a sidecar's DataError
            base.reason = str(e)
            return base
        except Exception as e:  # a decoder bug on one odd file must not stop the run
            logger.debug("unexpected error on %s", base.path, exc_info=True)
            base.reason = f"cannot decode ({type(e).__name__}: {e})"
            return base
        base.kind = "new"
        return base


def read_and_hash(f: Any, base: Prepared) -> bytes | Any:
    """SHA-256 of the file into ``base.sha256``; returns what to decode from: the bytes themselves
    for ordinary files, or the file (rewound) for big ones, so a worker never holds a huge file."""
    digest = hashlib.sha256()
    head = f.read(READ_WHOLE_BYTES + 1)
    digest.update(head)
    if len(head) <= READ_WHOLE_BYTES:
        base.sha256 = digest.hexdigest()
        return head
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    base.sha256 = digest.hexdigest()
    f.seek(0)
    return f


def ordered(pool: Executor, fn: Callable[[Any], Prepared], items: Sequence[Any], ahead: int) -> Iterator[Prepared]:
    """Map ``fn`` over items in a pool, yielding in order with bounded look-ahead."""
    pending: list[Future[Prepared]] = []
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            break
    while pending:
        fut = pending.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))
        yield fut.result()
