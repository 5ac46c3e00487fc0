"""Model families by name: each family is one module here plus one registration.

| family    | model_type      | preprocessing                     | walks             | scores            |
|-----------|-----------------|-----------------------------------|-------------------|-------------------|
| `fgclip`  | `clip`,`fgclip` | square bicubic resize, CLIP mean  | short, long       | cosine            |
| `fgclip2` | `fgclip2`       | NaFlex (aspect kept, patch budget)| short, box, long  | sigmoid(s*cos+b)  |

Built-ins and third parties register the same way: a ``name = "module:Class"`` entry in the
``fgsearch.families`` entry-point group, or :func:`register_family` at run time. An unknown name
is an error naming the known ones, never a default. A checkpoint's family comes from the model
registry (:attr:`~fgsearch.model.registry.ModelSpec.family`) or else from its config's
``model_type`` (:func:`family_for_config`).
"""

from __future__ import annotations

from typing import Any

from fgsearch.errors import CheckpointError
from fgsearch.model.families.base import ModelFamily
from fgsearch.plugins import Registry

BUILTIN_FAMILIES = {
    "fgclip": "fgsearch.model.families.fgclip:FGCLIPFamily",
    "fgclip2": "fgsearch.model.families.fgclip2:FGCLIP2Family",
}


def _instance(name: str, obj: Any) -> ModelFamily:
    """An entry point names a ModelFamily subclass (or instance); the registry keeps one instance."""
    fam = obj() if isinstance(obj, type) else obj
    if not isinstance(fam, ModelFamily):
        raise CheckpointError(f"model family {name!r} is a {type(fam).__name__}, not a ModelFamily")
    return fam


FAMILY_REGISTRY: Registry[ModelFamily] = Registry(
    "fgsearch.families",
    BUILTIN_FAMILIES,
    error=CheckpointError,
    unknown="unknown model family {name!r}; known families: {known}",
    check=_instance,
)


def register_family(family: ModelFamily | type[ModelFamily], *, replace: bool = False) -> None:
    """Make a family known under its ``name`` (a class is instantiated once)."""
    fam = _instance(getattr(family, "name", "?"), family)
    FAMILY_REGISTRY.register(fam.name, fam, replace=replace)


def family_names() -> list[str]:
    return FAMILY_REGISTRY.names()


def get_family(name: str) -> ModelFamily:
    """The family registered under ``name``; unknown names are an error naming the known ones."""
    return FAMILY_REGISTRY.get(name)


def family_for_config(raw: dict[str, Any], where: str = "config.json") -> ModelFamily:
    """The family whose ``model_types`` include the config's ``model_type`` (absent: CLIP)."""
    model_type = raw.get("model_type", "clip") if isinstance(raw, dict) else None
    for name in family_names():
        fam = get_family(name)
        if model_type in fam.model_types:
            return fam
    known = ", ".join(f"{t} ({n})" for n in family_names() for t in get_family(n).model_types)
    raise CheckpointError(f"{where} has model_type {model_type!r}; supported: {known}")


__all__ = ["FAMILY_REGISTRY", "ModelFamily", "family_for_config", "family_names", "get_family", "register_family"]
