"""CPU capability checks (fgsearch.model.cpu) and CPU bf16 in the torch runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fgsearch.errors import InputError
from fgsearch.model import TorchEncoder, load_model
from fgsearch.model.cpu import cpu_flags, native_bf16, native_int8


def test_flags_from_the_environment_or_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "sse2, avx512_vnni")
    assert cpu_flags() == {"sse2", "avx512_vnni"}
    assert native_int8() and not native_bf16()
    assert native_bf16(frozenset({"amx_bf16"}))
    monkeypatch.delenv("FGSEARCH_CPU_FLAGS")
    with open("/proc/cpuinfo") as f:
        has = "avx512_bf16" in f.read()
    assert native_bf16() == (has or "amx_bf16" in cpu_flags())


def test_cpu_bf16_casts_a_copy_and_agrees_with_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "avx512_bf16")
    net, spec = load_model("demo")
    fp32 = TorchEncoder(net, spec, device="cpu", precision="fp32")
    bf16 = TorchEncoder(net, spec, device="cpu", precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert next(net.parameters()).dtype == torch.float32  # the caller's module is untouched
    img = [Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))]
    boxes = [np.array([[0, 0, 0.5, 0.5]], np.float32)]
    a, b = fp32.encode_images(img, boxes), bf16.encode_images(img, boxes)
    assert b.image.dtype == np.float32 and b.regions[0].dtype == np.float32
    assert float(a.image[0] @ b.image[0]) > 0.999 and float(a.regions[0][0] @ b.regions[0][0]) > 0.999
    ta, tb = fp32.encode_texts(["a red car"]), bf16.encode_texts(["a red car"])
    assert float(ta[0] @ tb[0]) > 0.999


def test_cpu_bf16_without_native_support_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "sse2 avx2")
    net, spec = load_model("demo")
    with pytest.raises(InputError, match="no native bf16 instructions"):
        TorchEncoder(net, spec, device="cpu", precision="bf16")


def test_cpu_bf16_keeps_the_float32_score_calibration(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """FG-CLIP 2's probability uses exp(logit_scale): read from bf16 weights it was off by 3e-3."""
    from fgsearch.model.tiny import write_fgclip2

    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "avx512_bf16")
    net, spec = load_model(write_fgclip2(tmp_path / "m", logit_scale=2.3, logit_bias=-5.0))
    fp32 = TorchEncoder(net, spec, device="cpu", precision="fp32").calibration
    bf16 = TorchEncoder(net, spec, device="cpu", precision="bf16").calibration
    assert fp32 is not None and bf16 == fp32
