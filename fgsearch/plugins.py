"""Named extension points: one registry per kind of plugin (model family, encoder runtime, region
proposer), filled the same way for built-ins and third parties.

Each registry reads ``module:attr`` references from an entry-point group (``fgsearch.families``,
``fgsearch.runtimes``, ``fgsearch.proposers``; pyproject declares the built-ins there) and takes
objects registered at run time with :meth:`Registry.register`. The package also names its built-ins
in code, resolved by the same loader, so a source checkout whose install metadata is older than the
code still finds them. References are imported on first use, so listing names imports nothing
heavy. An unknown name is a one-line error naming the known ones, never a silent default.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from fgsearch.errors import FgsearchError

T = TypeVar("T")


def load_reference(ref: str) -> Any:
    """``package.module:attr`` -> the object it names."""
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Names -> plugins of one kind. ``unknown`` formats the error with ``{name}`` and ``{known}``."""

    def __init__(
        self,
        group: str,
        builtins: Mapping[str, str],
        *,
        error: type[FgsearchError],
        unknown: str,
        check: Callable[[str, Any], T] | None = None,
    ) -> None:
        self.group = group
        self._refs: dict[str, str] = dict(builtins)
        self._loaded: dict[str, T] = {}
        self._scanned = False
        self._error = error
        self._unknown = unknown
        self._check = check

    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._refs and ep.name not in self._loaded:
                self._refs[ep.name] = ep.value

    def register(self, name: str, obj: T, *, replace: bool = False) -> None:
        """Add ``obj`` under ``name``; an existing name is an error unless ``replace``."""
        self._scan()
        if not replace and name in self.names():
            raise self._error(f"{self.group}: {name!r} is registered already; pass replace=True to replace it")
        self._refs.pop(name, None)
        self._loaded[name] = obj

    def names(self) -> list[str]:
        """Every known name, built-ins first, in registration order."""
        self._scan()
        return list(dict.fromkeys([*self._refs, *self._loaded]))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def get(self, name: str) -> T:
        """The plugin registered under ``name`` (imported on first use)."""
        if name not in self:
            raise self._error(self._unknown.format(name=name, known=", ".join(self.names())))
        if name not in self._loaded:
            obj = load_reference(self._refs[name])
            self._loaded[name] = self._check(name, obj) if self._check else obj
        return self._loaded[name]
