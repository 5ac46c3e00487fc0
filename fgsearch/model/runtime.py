"""Encoder runtimes by name: what runs a model behind the :class:`~fgsearch.model.protocol.Encoder`
protocol (built-in: ``"torch"``, :class:`~fgsearch.model.encoder.TorchEncoder`).

A runtime is one loader, ``loader(model, *, device, precision) -> Encoder``, registered with
:func:`register_runtime` or as a ``name = "module:function"`` entry in the ``fgsearch.runtimes``
entry-point group (where pyproject declares the built-in). :func:`load_encoder` is how the rest of
fgsearch gets a model.
"""

from __future__ import annotations

from typing import Protocol

from fgsearch.errors import InputError
from fgsearch.model.protocol import Encoder
from fgsearch.plugins import Registry


class EncoderLoader(Protocol):
    def __call__(self, model: str, *, device: str, precision: str) -> Encoder: ...


BUILTIN_RUNTIMES = {
    "torch": "fgsearch.model.encoder:load_torch_encoder",
    "onnx-text": "fgsearch.model.fast_text:load_fast_text",  # texts only, no torch (cold queries)
}
RUNTIME_REGISTRY: Registry[EncoderLoader] = Registry(
    "fgsearch.runtimes",
    BUILTIN_RUNTIMES,
    error=InputError,
    unknown="unknown encoder runtime {name!r}; known runtimes: {known}",
)


def register_runtime(name: str, loader: EncoderLoader, *, replace: bool = False) -> None:
    """Make ``load_encoder(..., runtime=name)`` call ``loader(model, device=..., precision=...)``."""
    RUNTIME_REGISTRY.register(name, loader, replace=replace)


def runtime_names() -> list[str]:
    return RUNTIME_REGISTRY.names()


def load_encoder(model: str, *, device: str = "auto", precision: str = "auto", runtime: str = "torch") -> Encoder:
    """A model (registry name, ``hf-hub:ORG/NAME`` or directory) loaded by the named runtime."""
    return RUNTIME_REGISTRY.get(runtime)(str(model), device=device, precision=precision)
