"""The OpenVINO runtime (fgsearch.model.openvino): both towers, dense maps and regions against fp32
PyTorch, FG-CLIP 2's NaFlex shapes in one dynamic graph, and int8 calibrated on given images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openvino")

from fgsearch.library.settings import CALIBRATION_CAPTIONS
from fgsearch.model import load_encoder
from fgsearch.model.gate import run_gate
from fgsearch.model.openvino import OpenVINOEncoder, ensure_int8, export_dir

ORACLE2 = str(Path(__file__).parents[1] / "fixtures" / "oracle2" / "visible" / "checkpoint")


@pytest.fixture(autouse=True)
def _shared_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One export per model for the whole session (each test gets a fresh FGSEARCH_HOME)."""
    monkeypatch.setenv("FGSEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "ov-cache"))


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(48, 64), (64, 48), (40, 120), (96, 96)]  # NaFlex: different grids in one batch
    return [Image.fromarray(rng.integers(0, 255, (*sizes[i % 4], 3), dtype=np.uint8)) for i in range(n)]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=-1)))


@pytest.mark.parametrize("model", ["demo", ORACLE2], ids=["fgclip-demo", "fgclip2-random"])
def test_fp32_graphs_match_pytorch(model: str) -> None:
    ref = load_encoder(model, device="cpu", precision="fp32")
    ov = OpenVINOEncoder(model, "fp32")
    assert ov.dim == ref.dim and ov.spec.fingerprint == ref.spec.fingerprint
    imgs = _images(6)
    boxes = [np.array([[0, 0, 1, 1], [0.1, 0.2, 0.6, 0.9]], np.float32)] * len(imgs)
    a, b = ref.encode_images(imgs, boxes, batch_size=3), ov.encode_images(imgs, boxes, batch_size=3)
    assert _cos(a.image, b.image) > 0.99999
    assert _cos(np.concatenate(a.regions), np.concatenate(b.regions)) > 0.99999
    for walk in ref.walks:
        texts = ["a red car", "two children on a beach at sunset " * 3]
        assert _cos(ref.encode_texts(texts, path=walk), ov.encode_texts(texts, path=walk)) > 0.99999
    # proposals from the graph's own dense maps: the same boxes and vectors as PyTorch's
    pv = ov.transform.prepare(imgs[:3])

    def propose(maps: list[np.ndarray]) -> list[np.ndarray]:
        return [np.array([[0, 0, 0.5, 0.5]], np.float32) if m.shape[0] > 1 else np.zeros((0, 4)) for m in maps]

    (got, gb), (want, wb) = ov.encode_proposed(pv, propose), ref.encode_proposed(pv, propose)
    assert [len(x) for x in gb] == [len(x) for x in wb]
    assert _cos(np.concatenate(got.regions), np.concatenate(want.regions)) > 0.99999


def test_int8_is_calibrated_once_cached_and_gated() -> None:
    imgs = _images(8, seed=3)
    calls: list[int] = []

    def sample() -> list[Image.Image]:
        calls.append(1)
        return imgs

    root = ensure_int8("demo", sample)
    assert (root / "int8" / "image.xml").exists() and root == export_dir(OpenVINOEncoder("demo").spec)
    ensure_int8("demo", sample)
    assert len(calls) == 1  # cached with the model: the second call calibrates nothing
    int8 = load_encoder("demo", device="cpu", precision="auto", runtime="openvino")
    assert int8.precision == "int8"
    rep = run_gate("openvino int8", int8, load_encoder("demo", device="cpu"), imgs, CALIBRATION_CAPTIONS[::5])
    assert rep.image_cosine > 0.98 and rep.text_cosine > 0.98, rep.line()  # int8 moves vectors, a little


def test_openvino_on_a_gpu_device_is_refused() -> None:
    from fgsearch.errors import InputError

    with pytest.raises(InputError, match="runs on the CPU"):
        load_encoder("demo", device="cuda", runtime="openvino")


def test_cli_index_query_and_status_with_the_openvino_runtime(tmp_path: Path) -> None:
    """End to end: int8 (calibrated on the library's photos if not yet), gated, recorded, shown."""
    import json

    from _library_data import make_folder
    from typer.testing import CliRunner

    from fgsearch.console.cli import app
    from fgsearch.model import REGISTRY

    make_folder(tmp_path / "photos", n_good=6, bad=False)
    lib, demo = str(tmp_path / "lib"), str(REGISTRY["demo"].local_dir)
    r = CliRunner().invoke(
        app, ["index", str(tmp_path / "photos"), "-l", lib, "-m", demo, "--runtime", "openvino", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["indexed"] == 6  # NNCF's progress bars went to stderr
    r = CliRunner().invoke(app, ["status", "-l", lib, "--json"])
    st = json.loads(r.stdout)
    assert st["precisions"] and st["precisions"][0].startswith("openvino ")
    assert st["gate"] and st["gate"][0].startswith("openvino int8: ")
    r = CliRunner().invoke(app, ["query", "a red car", "-l", lib, "--runtime", "openvino", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["results"]) == 6, r.output


def test_text_tower_runs_without_torch_once_exported() -> None:
    """What a fast query start can build on: tokenizer + compiled text graph + numpy, no torch."""
    import os
    import subprocess
    import sys

    from fgsearch.model.openvino import export

    export("demo")
    code = (
        "import sys; from fgsearch.model.openvino import OpenVINOEncoder; "
        "v = OpenVINOEncoder('demo').encode_texts(['a dog on a beach', 'a red car']); "
        "assert v.shape[0] == 2 and abs(float((v * v).sum(1).min()) - 1) < 1e-4; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True)
    assert out.stdout.strip() == "False", out.stderr
