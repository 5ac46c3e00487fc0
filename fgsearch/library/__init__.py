"""A library: one folder holding the catalog and the two vector indexes, opened as
:class:`Library` (the package's public entry point).

Layers, each a module: :mod:`~fgsearch.library.facade` (``Library``, the composition root),
:mod:`~fgsearch.library.store` (catalog + indexes + reader consistency, what ingest and search
receive), :mod:`~fgsearch.library.lifecycle` (create, open, ``--reindex``, wipe),
:mod:`~fgsearch.library.doctor` (check, repair, recover), :mod:`~fgsearch.library.locks`
(thread safety in one process), :mod:`~fgsearch.library.settings` (backend, model and region
settings recorded with a build).
"""

from fgsearch.library.facade import Library
from fgsearch.library.settings import DEFAULT_MODEL, BackendSettings, clear_shared_encoders, shared_encoder
from fgsearch.library.store import LibraryStore

__all__ = ["DEFAULT_MODEL", "BackendSettings", "Library", "LibraryStore", "clear_shared_encoders", "shared_encoder"]
