"""Fast paths behind the quality gate in a library (fgsearch.library.fastpath), and the CLI's
--precision / --runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _library_data import make_folder
from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.errors import InputError
from fgsearch.library import Library
from fgsearch.library.fastpath import FastPath
from fgsearch.model import REGISTRY, load_encoder, register_runtime

DEMO = str(REGISTRY["demo"].local_dir)


class _Damaged:
    """A runtime whose vectors are off (what a broken quantisation does): the gate must refuse it."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.rng = np.random.default_rng(0)
        self.precision = "fp32"

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def encode_images(self, images, boxes=None, batch_size=32):  # type: ignore[no-untyped-def]
        out = self.inner.encode_images(images, boxes, batch_size)  # type: ignore[attr-defined]
        out.image = out.image + 0.2 * self.rng.standard_normal(out.image.shape).astype(np.float32)
        out.image /= np.linalg.norm(out.image, axis=-1, keepdims=True)
        return out


def _damaged_loader(model: str, *, device: str, precision: str):  # type: ignore[no-untyped-def]
    return _Damaged(load_encoder(model, device=device, precision="fp32"))


@pytest.fixture(autouse=True)
def _bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "avx512_bf16 avx512_vnni")


def test_auto_takes_bf16_after_the_gate_and_records_it(tmp_path: Path) -> None:
    make_folder(tmp_path / "photos", n_good=6, bad=False)
    with Library.open(tmp_path / "lib", model=DEMO, fast=FastPath("torch", "auto")) as lib:
        report = lib.index([str(tmp_path / "photos")])
        assert lib.encoder_path == "torch bf16" and lib.encoder.precision == "bf16"
        assert report.indexed == 6 and not [w for w in report.warnings if "fast path" in w]
        st = lib.status()
    assert st["precisions"] == ["torch bf16"]
    assert len(st["gate"]) == 1 and st["gate"][0].startswith("torch bf16: passed")
    # a reader uses the writer's verdict: nothing measured again
    with Library.open(tmp_path / "lib", read_only=True, fast=FastPath("torch", "auto")) as lib:
        assert lib.search("a red car")
        assert lib.encoder_path == "torch bf16" and lib.notes == [] and lib.gates_measured == {}
    # a later fp32 run mixes paths within the gate's bound: both are listed
    make_folder(tmp_path / "more", n_good=2, bad=False, seed=7)
    with Library.open(tmp_path / "lib", fast=FastPath("torch", "fp32")) as lib:
        lib.index([str(tmp_path / "more")])
        assert lib.status()["precisions"] == ["torch bf16", "torch fp32"]


def test_a_refused_fast_path_falls_back_to_fp32_and_says_so(tmp_path: Path) -> None:
    register_runtime("damaged-test", _damaged_loader, replace=True)
    make_folder(tmp_path / "photos", n_good=6, bad=False)
    with Library.open(tmp_path / "lib", model=DEMO, fast=FastPath("damaged-test", "fp32")) as lib:
        report = lib.index([str(tmp_path / "photos")])
        assert lib.encoder_path == "torch fp32"
    refused = [w for w in report.warnings if w.startswith("fast path damaged-test fp32: REFUSED: image cosine")]
    assert len(refused) == 1 and "; using fp32" in refused[0]
    r = CliRunner().invoke(app, ["status", "--library", str(tmp_path / "lib")], terminal_width=200)
    assert r.exit_code == 0 and "gate     damaged-test fp32: REFUSED" in r.output, r.output
    assert "made by  torch fp32" in r.output


def test_cli_precision_and_runtime_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "photos", n_good=2, bad=False)
    base = ["index", str(tmp_path / "photos"), "--library", str(tmp_path / "lib"), "--model", DEMO, "--quiet"]
    for extra, message in [
        (["--precision", "int8"], "error: --precision int8 needs --runtime openvino"),
        (["--precision", "fp16"], "error: --precision must be one of auto, fp32, bf16, int8, got 'fp16'"),
        (["--runtime", "onnx"], "error: --runtime must be one of torch"),
    ]:
        r = CliRunner().invoke(app, [*base, *extra])
        assert r.exit_code == 1 and r.output.startswith(message) and r.output.count("\n") == 1, r.output
    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "avx2")
    r = CliRunner().invoke(app, [*base, "--precision", "bf16"])
    assert r.exit_code == 1 and "no native bf16 instructions" in r.output and r.output.count("\n") == 1
    with pytest.raises(InputError):
        FastPath("torch", "bf16").candidates("cpu")
    assert FastPath("torch", "auto").candidates("cpu") == []  # auto on a CPU without bf16: plain fp32
    assert FastPath("openvino", "auto").candidates("cpu") == [("openvino", "int8"), ("openvino", "fp32")]
    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "avx512_bf16")  # OpenVINO bf16 (2-3x fp32 here) before its fp32
    assert FastPath("openvino", "auto").candidates("cpu") == [
        ("openvino", "int8"),
        ("openvino", "bf16"),
        ("openvino", "fp32"),
    ]
    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "avx2")
    r = CliRunner().invoke(app, [*base, "--json"])  # auto there: fp32, no gate
    assert r.exit_code == 0 and json.loads(r.output)["indexed"] == 2


def test_eval_runs_the_gate_on_the_tasks_images(tmp_path: Path) -> None:
    from _eval_data import write_dci

    from fgsearch.eval import run_eval

    data = write_dci(tmp_path, [0, 1, 2, 2], ["a red square", "a green one", "blue", "two blue"])
    res = run_eval("dci", data, DEMO, device="cpu", fast=FastPath("torch", "auto"))
    assert res.settings["precision"] == "bf16"
    assert res.settings["notes"] and res.settings["notes"][0].startswith("torch bf16: passed")
    plain = run_eval("dci", data, DEMO, device="cpu", fast=FastPath("torch", "fp32"))
    assert plain.settings["precision"] == "fp32" and plain.settings["notes"] == []
