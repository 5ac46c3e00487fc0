"""Exceptions raised by the vector index backends.

``fgsearch.indexes`` does not import the rest of fgsearch, so its errors have their own base class,
:class:`IndexBackendError`. Every message is one line that names the index, the bad value and what
to do about it. Bad arguments also derive from :class:`ValueError` so generic callers can catch them.
"""

from __future__ import annotations


class IndexBackendError(Exception):
    """Base class of every error the index backends raise on purpose."""


class IndexInputError(IndexBackendError, ValueError):
    """A caller passed a value that cannot be used (conflicting arguments, bad ids, bad k)."""


class DimensionMismatchError(IndexInputError):
    """Vectors (or an existing index/collection) have another dimension than expected."""


class InvalidVectorError(IndexInputError):
    """A vector contains NaN/inf or is not L2-normalized."""


class DuplicateIdError(IndexInputError):
    """An id is repeated within one call, or already stored and ``upsert`` was not requested."""


class UnknownIdError(IndexInputError):
    """An id asked for (remove, get) is not stored in the index."""


class IndexNotFoundError(IndexBackendError):
    """No index exists at the given path (or no collection of that name)."""


class IndexExistsError(IndexBackendError):
    """An index already exists where a new one was to be created."""


class IndexCorruptError(IndexBackendError):
    """Files on disk are missing, truncated or inconsistent beyond what recovery can repair."""


class IndexLockedError(IndexBackendError):
    """Another process holds the index's write lock."""


class IndexReadOnlyError(IndexBackendError):
    """A write was attempted on an index opened with ``read_only=True``."""


class IndexClosedError(IndexBackendError):
    """The index was used after :meth:`close`."""


class BackendUnavailableError(IndexBackendError):
    """An optional package is not installed, or a server cannot be reached."""


class CollectionMismatchError(IndexBackendError):
    """An existing Qdrant collection has another vector size or distance than the index expects."""


__all__ = [
    "BackendUnavailableError",
    "CollectionMismatchError",
    "DimensionMismatchError",
    "DuplicateIdError",
    "IndexBackendError",
    "IndexClosedError",
    "IndexCorruptError",
    "IndexExistsError",
    "IndexInputError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexReadOnlyError",
    "InvalidVectorError",
    "UnknownIdError",
]
