"""Exceptions raised by the fgsearch library.

Every error the library raises on purpose is an :class:`FgsearchError` with a message that names
the thing that went wrong and how to fix it. Only the CLI turns them into exit codes.
"""

from __future__ import annotations


class FgsearchError(Exception):
    """Base class of every error fgsearch raises on purpose."""


class ModelNotFoundError(FgsearchError):
    """A model name, hub id or directory could not be resolved to weights."""


class CheckpointError(FgsearchError):
    """A checkpoint exists but cannot be loaded (bad config, missing or unknown keys)."""


class ImageError(FgsearchError):
    """An image file cannot be used (corrupt, truncated, too large, too small, unreadable)."""


class InputError(FgsearchError):
    """A caller passed a value that cannot be used (empty query, bad box, bad option)."""


class LibraryError(FgsearchError):
    """A library (catalog + vector index) is missing, locked, or built with another model."""


class LibraryLockedError(LibraryError):
    """Another process holds the library's write lock."""


class BusyError(FgsearchError):
    """A shared resource (the decoded-pixel budget of a server) stayed in use past the wait allowed;
    nothing is wrong with the request: retry it after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DataError(FgsearchError):
    """A training or evaluation data file is missing or malformed."""
