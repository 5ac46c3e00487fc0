"""fgsearch: find things inside image collections from long, detailed descriptions.

The package is importable without torch being imported: heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fgsearch._version import __version__
from fgsearch.errors import FgsearchError

if TYPE_CHECKING:
    from fgsearch.library import Library

__all__ = ["FgsearchError", "Library", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Library":  # imported on first use: `import fgsearch` stays light
        from fgsearch.library import Library

        return Library
    raise AttributeError(f"module 'fgsearch' has no attribute {name!r}")
