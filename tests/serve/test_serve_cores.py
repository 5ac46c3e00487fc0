"""How ``fgsearch serve`` shares its cores between text forwards and searches: the fast text
tower's threads sleep between forwards (and give the same vectors and answers as ONNX Runtime's
defaults), and numpy's BLAS threads are capped in a process whose requests share the cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _serve_data import DEMO_DIR, make_client, serve_library_fixture  # noqa: F401  (the fixture serve_library)

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TEXTS = ["a red circle", "a small blue square next to a green triangle", "shapes"]


def _spins(session) -> str:
    return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_fast_text_threads_sleep_and_give_the_same_vectors(tiny_model_dir: Path) -> None:
    from fgsearch.errors import InputError
    from fgsearch.model import load_encoder
    from fgsearch.model.fast_text import load_fast_text, prepare_fast_text

    prepare_fast_text(load_encoder(str(tiny_model_dir), device="cpu"))
    default = load_fast_text(str(tiny_model_dir))
    lean = load_fast_text(str(tiny_model_dir), threads=1)
    assert lean.session.get_session_options().intra_op_num_threads == 1
    assert _spins(lean.session) == "0"
    assert default.session.get_session_options().intra_op_num_threads == 0  # ORT's own choice, as before
    for path in ("short", "long"):
        np.testing.assert_allclose(lean.encode_texts(TEXTS, path), default.encode_texts(TEXTS, path), atol=1e-6)
    with pytest.raises(InputError, match="at least 1 thread"):
        load_fast_text(str(tiny_model_dir), threads=0)


def test_the_server_runs_its_fast_text_tower_on_its_model_threads(serve_library) -> None:
    """Regression: the server took the cold-query instance (a thread per core, spinning while
    idle), whose idle threads burned the core its searches run on. Its answers are the torch
    server's (same order, scores within the tower's agreement)."""
    from fgsearch.model import load_encoder
    from fgsearch.model.fast_text import prepare_fast_text

    lib_dir, _ = serve_library
    client, torch_service = make_client(lib_dir, model_threads=1)
    assert torch_service.text_runtime is None  # nothing prepared in this FGSEARCH_HOME yet
    torch_answers = [client.post("/api/search", json={"text": t, "k": 8}).json()["results"] for t in TEXTS]
    torch_service.close()

    prepare_fast_text(load_encoder(DEMO_DIR, device="cpu"))
    client, service = make_client(lib_dir, model_threads=1)
    try:
        fast = service.text_runtime
        assert fast is not None and client.get("/api/status").json()["server"]["text_runtime"] == "onnx-text"
        assert fast.session.get_session_options().intra_op_num_threads == 1
        assert _spins(fast.session) == "0"
        for text, want in zip(TEXTS, torch_answers, strict=True):
            got = client.post("/api/search", json={"text": text, "k": 8}).json()["results"]
            assert [h["image_id"] for h in got] == [h["image_id"] for h in want]
            np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-3)
    finally:
        service.close()


def test_share_cores_caps_blas_threads() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    from fgsearch.serve import share_cores

    if not [i for i in threadpool_info() if i["user_api"] == "blas"]:
        pytest.skip("numpy is linked to no BLAS that threadpoolctl can limit")
    with threadpool_limits(limits=None):  # the original BLAS limits come back when the block ends
        share_cores(1)
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
