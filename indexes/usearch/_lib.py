"""usearch itself, imported lazily (an optional extra): a clear one-line error where it is missing."""

from __future__ import annotations

from typing import Any

from ..errors import BackendUnavailableError


def load_usearch() -> Any:
    """The ``usearch.index`` module; :class:`BackendUnavailableError` naming the extra when missing."""
    try:
        import usearch.index
    except ImportError as e:
        raise BackendUnavailableError(
            "the usearch backend needs usearch: pip install 'fgsearch[usearch]' (or pip install 'usearch>=2.16,<3')"
        ) from e
    version = str(getattr(usearch.index, "__version__", None) or _package_version())
    if not version.startswith("2."):
        raise BackendUnavailableError(
            f"the usearch backend reads usearch 2's file format, found usearch {version}: "
            "pip install 'usearch>=2.16,<3'"
        )
    return usearch.index


def _package_version() -> str:
    from importlib.metadata import version

    return version("usearch")
