"""Shared test setup: offline, temp data home, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
ORACLE = FIXTURES / "oracle"

# Tests never touch the network or the user's real data directories.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("fgsearch-home")
    monkeypatch.setenv("FGSEARCH_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))


@pytest.fixture(scope="session")
def oracle_checkpoint() -> Path:
    return ORACLE / "visible" / "checkpoint"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny FG-CLIP saved in the format load_model reads."""
    import torch

    from fgsearch.model import FGCLIP, FGCLIPConfig, save_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-model")
    save_model(FGCLIP(FGCLIPConfig.tiny()), out)
    return out


# catalog_target, catalog_dir: a test on both catalog dialects (SQLite, PostgreSQL): tests/_catalog_targets.py
# PostgreSQL fixtures (postgres_server, postgres_url): tests/_postgres.py
from _catalog_targets import catalog_dir, catalog_target  # noqa: E402,F401
from _postgres import postgres_server, postgres_url  # noqa: E402,F401
