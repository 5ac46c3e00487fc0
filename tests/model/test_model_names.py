"""One registry name per model (issue 30.2); the weights' fingerprint stays the model's identity."""

from __future__ import annotations

import shutil
from pathlib import Path

from fgsearch.model import REGISTRY, checkpoint_fingerprint, resolve_spec
from fgsearch.model.loading import registry_name


def test_a_registry_models_folder_resolves_to_its_registry_name() -> None:
    assert resolve_spec(REGISTRY["demo"].local_dir).name == "demo"
    assert resolve_spec(REGISTRY["demo"].local_dir) == REGISTRY["demo"]


def test_registry_name_by_hub_id_and_by_fingerprint(tmp_path: Path) -> None:
    assert registry_name("fg-clip-base") == "fg-clip-base"
    assert registry_name("hf-hub:qihoo360/fg-clip-base") == "fg-clip-base"
    assert registry_name("hf-hub:someone/fg-clip-base") == "hf-hub:someone/fg-clip-base"
    copy = tmp_path / "my-model"
    shutil.copytree(REGISTRY["demo"].local_dir, copy)
    assert resolve_spec(copy).name == "my-model"  # a folder elsewhere is not looked up by path...
    assert registry_name("my-model", checkpoint_fingerprint(copy)) == "demo"  # ...its weights say which
    assert registry_name("my-model", "0" * 16) == "my-model"
    assert registry_name(None) is None
