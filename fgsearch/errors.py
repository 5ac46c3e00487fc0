"""Exceptions raised by the fgsearch library.

Every error the library raises on purpose is an :class:`FgsearchError` with a message that names
the thing that went wrong and how to fix it. Only the CLI turns them into exit codes.
"""

from __future__ import annotations

from collections.abc import Callable
from string import Formatter
from typing import Any


class FgsearchError(Exception):
    """Base class of every error fgsearch raises on purpose."""


class ModelNotFoundError(FgsearchError):
    """A model name, hub id or directory could not be resolved to weights."""


class CheckpointError(FgsearchError):
    """A checkpoint exists but cannot be loaded (bad config, missing or unknown keys)."""


class ImageError(FgsearchError):
    """An image file cannot be used (corrupt, truncated, too large, too small, unreadable)."""


class InputError(FgsearchError):
    """A caller passed a value that cannot be used (empty query, bad box, bad option).

    With ``field``, the message is a template whose ``{name}`` slots name the parameters at fault
    by their library names (``"{filters.min_score} must be finite, got {got}"``; ``{field}`` is
    the ``field`` itself); values quoted in it come as keywords (``got=x``), so a caller's text
    never becomes a slot. ``fields`` lists every parameter the message names, ``field`` first. Each front end words the
    same error in its own terms with :meth:`worded` (the CLI its flags, the HTTP API its JSON
    fields); ``str(e)`` names the library's parameters (the last part of a dotted name). Without
    ``field`` the message is plain text, used as it is.
    """

    def __init__(self, message: str, /, *, field: str | None = None, **values: Any) -> None:
        self.template = message
        self.values = values
        self.field = field
        slots = [name for _, name, _, _ in Formatter().parse(message) if name] if field is not None else []
        named = (n for n in slots if n not in values and n != "field")
        self.fields: tuple[str, ...] = tuple(dict.fromkeys([field, *named])) if field is not None else ()
        if field is None and values:
            raise TypeError("InputError: values without a field; pass field= to make the message a template")
        super().__init__(self.worded(parameter_name))

    def worded(self, name_of: Callable[[str], str]) -> str:
        """The message with each field named by ``name_of`` (a front end's spelling)."""
        if self.field is None:
            return self.template
        parts: list[str] = []
        for literal, name, spec, conv in Formatter().parse(self.template):
            parts.append(literal)
            if name is None:
                continue
            if name in self.values:
                value: Any = self.values[name]
            else:
                value = name_of(self.field if name == "field" else name)
            if conv:
                value = _CONVERSIONS[conv](value)
            parts.append(format(value, spec or ""))
        return "".join(parts)


_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "a": ascii, "s": str}


def parameter_name(field: str) -> str:
    """A field as the library's caller spells it: the last part of a dotted name
    (``filters.min_score`` -> ``min_score``)."""
    return field.rsplit(".", 1)[-1]


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
