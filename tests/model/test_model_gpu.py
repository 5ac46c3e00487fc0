"""The checks that need what the offline suite lacks (issue 30.10: the ``gpu`` and ``network``
markers deselected nothing). README's command leaves them out (``-m "not gpu and not network"``);
``pytest -m gpu`` on a machine with a CUDA GPU, ``pytest -m network`` with internet access. Selected
without what they need, they fail saying so, never skip quietly."""

from __future__ import annotations

import numpy as np
import pytest
from _library_data import scene

from fgsearch.model import REGISTRY


@pytest.mark.gpu
def test_the_demo_model_on_cuda_gives_the_cpu_vectors() -> None:
    import torch

    from fgsearch.model import load_encoder

    if not torch.cuda.is_available():
        pytest.fail("selected with -m gpu, but torch sees no CUDA GPU")
    cpu = load_encoder("demo", device="cpu")
    gpu = load_encoder("demo", device="cuda")
    images = [scene(i) for i in range(4)]
    texts = ["a large red circle on the left", "a small blue square"]
    for a, b in ((cpu.encode_images(images).image, gpu.encode_images(images).image),
                 (cpu.encode_texts(texts), gpu.encode_texts(texts))):  # fmt: skip
        cos = np.sum(np.asarray(a) * np.asarray(b), axis=1)
        assert cos.min() > 0.995, cos  # bf16/TF32 on the GPU: close, not bit-equal


@pytest.mark.network
def test_the_registrys_hub_models_exist_at_their_revisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each registry entry's hub id (and pinned revision) names a model the Hugging Face hub has,
    with a config and weights (metadata only: nothing is downloaded)."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # tests default to offline
    api = HfApi()
    hub = [spec for spec in REGISTRY.values() if spec.hub_id]
    assert hub
    for spec in hub:
        try:
            info = api.model_info(spec.hub_id, revision=spec.revision, files_metadata=False)
        except Exception as e:  # offline, or the model moved: say which
            pytest.fail(f"{spec.name}: hub model {spec.hub_id}@{spec.revision or 'main'}: {type(e).__name__}: {e}")
        files = {s.rfilename for s in info.siblings or []}
        assert "config.json" in files, (spec.name, sorted(files))
        assert files & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}, spec.name
