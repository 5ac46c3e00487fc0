"""fgsearch.model.fast_text: the ONNX text tower agrees with torch, is refused when it does not,
and serves a text query without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _library_data import scene
from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.model import load_encoder
from fgsearch.model.fast_text import CHECK_TEXTS, META, agreement, cache_dir, load_fast_text, prepare_fast_text

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_export_agrees_with_torch_on_both_walks(tiny_model_dir: Path) -> None:
    torch_enc = load_encoder(str(tiny_model_dir), device="cpu")
    meta = prepare_fast_text(torch_enc)
    assert meta["passed"] and meta["cosine_min"] >= 0.9999 and meta["top10"] >= 0.99
    fast = load_fast_text(str(tiny_model_dir))
    texts = [*CHECK_TEXTS[:3], CHECK_TEXTS[-1], "word " * 300]  # short, long, and one truncated
    for path in (None, "short", "long"):
        a, b = torch_enc.encode_texts(texts, path), fast.encode_texts(texts, path)
        assert np.min(np.sum(a * b, axis=1)) > 0.9999, path
    assert [fast.text_path(t) for t in texts] == [torch_enc.text_path(t) for t in texts]
    with pytest.warns(UserWarning, match="truncated"):
        fast.encode_texts(["word " * 300])


def test_a_tower_that_disagrees_is_refused(tiny_model_dir: Path) -> None:
    """The check is real: a tower answering other vectors fails it, and load_fast_text refuses
    the cache that recorded the failure (queries keep torch)."""
    torch_enc = load_encoder(str(tiny_model_dir), device="cpu")

    class Noisy:
        def encode_texts(self, texts: list[str]) -> np.ndarray:
            v = torch_enc.encode_texts(texts) + np.random.default_rng(0).normal(0, 0.2, (len(texts), torch_enc.dim))
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    verdict = agreement(torch_enc, Noisy())
    assert not verdict["passed"] and verdict["cosine_min"] < 0.9999
    meta = prepare_fast_text(torch_enc)
    meta_file = cache_dir(meta["fingerprint"]) / META
    meta_file.write_text(json.dumps({**meta, **verdict}))
    with pytest.raises(Exception, match="failed its check against torch"):
        load_fast_text(str(tiny_model_dir))


def test_a_text_query_runs_without_torch(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        scene(i).save(photos / f"p{i}.png")
    lib = tmp_path / "lib"
    runner = CliRunner()
    out = runner.invoke(app, ["index", str(photos), "--library", str(lib), "--model", str(tiny_model_dir), "-q"])
    assert out.exit_code == 0, out.output
    child = (
        "import sys, json\n"
        "from fgsearch.console.cli import app\n"
        f"sys.argv = ['fgsearch', 'query', 'a red circle', '--library', {str(lib)!r}, '--json']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )

    def query() -> tuple[list[str], str]:
        p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=True)
        return [h["path"] for h in json.loads(p.stdout)["results"]], p.stderr.strip().splitlines()[-1]

    before, imported = query()
    assert imported == "TORCH"  # nothing prepared: the torch path
    out = runner.invoke(app, ["index", str(photos), "--library", str(lib), "-q", "--fast-text"])
    assert out.exit_code == 0 and "fast text path: cosine to torch" in out.output, out.output
    after, imported = query()
    assert imported == "NO-TORCH" and after == before
    from fgsearch.search import SearchQuery
    from fgsearch.serve.engine import SearchService, ServeSettings

    service = SearchService(ServeSettings(library=str(lib), device="cpu"))  # a CPU server: texts on the fast tower
    try:
        assert service.status()["server"]["text_runtime"] == "onnx-text"
        hits, _, _ = service.search(SearchQuery(text="a red circle", k=10), 0)
        assert [h.path for h in hits] == before
    finally:
        service.close()
