"""Reading a checkpoint's small JSON files: neutral ground that families, tokenizers and loading
all use (no torch, no family imports), so none of them needs another to read a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fgsearch.errors import CheckpointError

FGSEARCH_META = "fgsearch.json"  # what fgsearch writes beside config + weights (preprocessing, source)


def read_json(file: Path, required: bool = True) -> dict[str, Any]:
    """A checkpoint's JSON file (``{}`` for a missing optional one); errors name the file."""
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as e:
        if not required:
            return {}
        raise CheckpointError(f"{file} is missing") from e
    except ValueError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
