"""The family registry (fgsearch.model.families): built-ins, a toy family added from here, errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

from fgsearch.errors import CheckpointError
from fgsearch.model import ModelFamily, family_for_config, family_names, get_family, register_family
from fgsearch.model.families import BUILTIN_FAMILIES
from fgsearch.model.protocol import TextPath

ROOT = Path(__file__).resolve().parents[2]


class ToyFamily(ModelFamily):
    """A family defined in the test module alone: it only has to be registrable and found."""

    name = "toyfam"
    model_types = ("toytype",)
    walks = ("short",)
    description = "a toy"

    def read_config(self, raw: dict[str, Any]) -> Any:
        return dict(raw)

    def build(self, cfg: Any) -> Any:
        raise NotImplementedError

    def resolve_spec(self, path: Path, spec: Any, cfg: Any) -> Any:
        return spec

    def sizes(self, cfg: Any) -> str:
        return "toy"

    def transform(self, spec: Any) -> Any:
        return None

    def tokenizer(self, spec: Any) -> Any:
        return None

    def embed_dim(self, model: Any) -> int:
        return 3

    def encode_image(self, model: Any, batch: Any) -> Any:
        raise NotImplementedError

    def encode_image_and_dense(self, model: Any, batch: Any) -> Any:
        raise NotImplementedError


def test_builtins_are_found_by_name_and_model_type() -> None:
    assert family_names()[:2] == ["fgclip", "fgclip2"]
    assert get_family("fgclip").walks == ("short", "long")
    assert get_family("fgclip2").walks == ("short", "box", "long")
    assert family_for_config({}) is get_family("fgclip")  # no model_type: CLIP
    assert family_for_config({"model_type": "fgclip2"}) is get_family("fgclip2")


def test_unknown_family_and_model_type_are_one_line_errors() -> None:
    with pytest.raises(CheckpointError, match=r"unknown model family 'nope'; known families: fgclip, fgclip2"):
        get_family("nope")
    with pytest.raises(CheckpointError, match=r"model_type 'bert'; supported: clip \(fgclip\)"):
        family_for_config({"model_type": "bert"}, "x/config.json")


def test_a_toy_family_registers_from_outside_the_package() -> None:
    register_family(ToyFamily, replace=True)
    fam = get_family("toyfam")
    assert isinstance(fam, ToyFamily) and "toyfam" in family_names()
    assert family_for_config({"model_type": "toytype"}) is fam
    assert fam.region_walk(type("T", (), {"choose_path": lambda self, t: TextPath.SHORT})(), "x") is TextPath.SHORT
    with pytest.raises(CheckpointError, match="registered already"):
        register_family(ToyFamily)
    with pytest.raises(CheckpointError, match="not a ModelFamily"):
        register_family(object())  # type: ignore[arg-type]


def test_pyproject_declares_the_builtins_as_entry_points() -> None:
    """Built-ins register the way a third party does: through the entry-point groups."""
    from fgsearch.model.runtime import BUILTIN_RUNTIMES
    from fgsearch.regions.base import BUILTIN_PROPOSERS

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert eps["fgsearch.families"] == BUILTIN_FAMILIES
    assert eps["fgsearch.runtimes"] == BUILTIN_RUNTIMES
    assert eps["fgsearch.proposers"] == BUILTIN_PROPOSERS


def test_the_neutral_modules_import_no_torch() -> None:
    """The protocol, the JSON reader and the proposers load without torch (a non-torch runtime)."""
    import subprocess

    code = (
        "import sys; import fgsearch.model.protocol, fgsearch.model.files, fgsearch.plugins; "
        "import fgsearch.regions.base, fgsearch.regions.auto, fgsearch.regions.grid, fgsearch.regions.sidecar; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_model_name_resolves() -> None:
    import fgsearch.model as m

    for name in m.__all__:
        assert getattr(m, name) is not None
