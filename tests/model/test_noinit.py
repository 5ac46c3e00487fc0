"""Loading a checkpoint builds the modules without random initialisation (fgsearch.model.noinit)."""

from __future__ import annotations

import subprocess
import sys

import torch

from fgsearch.model.noinit import skip_init

_CHILD = """
import sys
from fgsearch.model import load_encoder
enc = load_encoder("demo", device="cpu")
enc.encode_texts(["a red circle"])
print("dynamo" if "torch._dynamo" in sys.modules else "clean")
"""


def test_loading_a_model_never_imports_dynamo() -> None:
    """Regression: building under torch.device("meta") ran the initialisers' Python meta kernels,
    which import torch._dynamo: 1.3-2.2 s of every cold query."""
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "clean", out.stderr[-2000:]


def test_skip_init_allocates_without_filling() -> None:
    with skip_init():
        lin = torch.nn.Linear(4, 3)
        emb = torch.nn.Parameter(torch.randn(5) * 2)
        noise = torch.rand(2, 2, generator=torch.Generator().manual_seed(0))
    assert lin.weight.shape == (3, 4) and lin.weight.device.type == "cpu"
    assert emb.shape == (5,) and noise.shape == (2, 2)
    torch.manual_seed(0)
    a = torch.randn(3)
    torch.manual_seed(0)
    with skip_init():
        torch.randn(1000)  # must not draw from the global generator
    assert torch.equal(torch.randn(3), a)


def test_skip_init_leaves_other_threads_and_later_code_alone() -> None:
    import threading

    seen: list[torch.Tensor] = []
    with skip_init():
        t = threading.Thread(target=lambda: seen.append(torch.ones(3).normal_()))
        t.start()
        t.join()
    assert not torch.equal(seen[0], torch.ones(3))  # the other thread's fill ran
    w = torch.zeros(100)
    torch.nn.init.uniform_(w, 1.0, 2.0)
    assert bool((w >= 1.0).all())
