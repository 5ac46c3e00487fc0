"""Build a model's modules without initialising their weights (the checkpoint overwrites them).

Building under ``torch.device("meta")`` looked free but was not: a random initialiser on a meta
tensor runs a Python decomposition that imports ``torch._dynamo`` (measured 1.3-2.2 s of a cold
``fgsearch query``, more than the query itself). :func:`skip_init` instead builds on the CPU with
every initialiser a no-op and ``torch.randn``/``torch.rand`` replaced by ``torch.empty``: the
memory is allocated but never written (the kernel hands out untouched pages lazily), and
``load_state_dict(..., assign=True)`` then puts the checkpoint's tensors in its place.

The mode is a :class:`torch.overrides.TorchFunctionMode`, so it applies to the calling thread only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# in-place random fills a module's reset_parameters may call on a tensor
_FILLS = frozenset({"normal_", "uniform_", "random_", "exponential_", "bernoulli_", "cauchy_", "log_normal_"})
_RANDOM = {"randn": "empty", "rand": "empty", "randn_like": "empty_like", "rand_like": "empty_like"}


@contextmanager
def skip_init() -> Iterator[None]:
    """``with skip_init(): net = Family.build(cfg)``: parameters allocated, never filled."""
    import torch
    from torch.overrides import TorchFunctionMode

    class _SkipInit(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = dict(kwargs or {})
            name = getattr(func, "__name__", "")
            if getattr(func, "__module__", None) == "torch.nn.init" or name in _FILLS:
                return args[0] if args else kwargs["tensor"]
            if name in _RANDOM and func is getattr(torch, name, None):
                kwargs.pop("generator", None)
                return getattr(torch, _RANDOM[name])(*args, **kwargs)
            return func(*args, **kwargs)

    with _SkipInit():
        yield
