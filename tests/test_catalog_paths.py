"""fgsearch.library_paths: --library PATH, then $FGSEARCH_HOME/default, then the user data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgsearch.library_paths import data_home, resolve_library_dir


def test_fgsearch_home_sets_the_default_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGSEARCH_HOME", str(tmp_path / "home"))
    assert data_home() == tmp_path / "home"
    assert resolve_library_dir(None) == (tmp_path / "home" / "default").resolve()


def test_explicit_library_wins_and_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert resolve_library_dir("libs/../mine") == (tmp_path / "mine").resolve()
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert resolve_library_dir("~/lib") == (tmp_path / "user" / "lib").resolve()


def test_without_fgsearch_home_the_platform_data_dir_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from platformdirs import user_data_dir

    monkeypatch.delenv("FGSEARCH_HOME", raising=False)
    expected = Path(user_data_dir("fgsearch", appauthor=False))
    assert data_home() == expected
    assert resolve_library_dir(None) == (expected / "default").resolve()
    monkeypatch.setenv("FGSEARCH_HOME", "")  # empty counts as unset
    assert data_home() == expected
