"""Where libraries live: ``--library PATH``, else ``$FGSEARCH_HOME/default``, else the user data dir."""

from __future__ import annotations

import os
from pathlib import Path

CATALOG_FILE = "catalog.sqlite"


def data_home() -> Path:
    """fgsearch's data home: ``$FGSEARCH_HOME`` or the platform's user data directory."""
    env = os.environ.get("FGSEARCH_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("fgsearch", appauthor=False))


def resolve_library_dir(path: str | os.PathLike[str] | None) -> Path:
    """The library directory for an explicit path, or the default library."""
    if path is not None:
        return Path(path).expanduser().resolve()
    return (data_home() / "default").resolve()
