"""fgsearch: find things inside image collections from long, detailed descriptions.

The package is importable without torch being imported: heavy modules load on first use.
"""

from __future__ import annotations

from fgsearch._version import __version__
from fgsearch.errors import FgsearchError

__all__ = ["FgsearchError", "__version__"]
