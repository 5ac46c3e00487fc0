"""GPU FAISS for the IVF tier: unfiltered searches run on a GPU clone when one is allowed and seen."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import FaissConfig
from ..errors import BackendUnavailableError
from ._lib import load_faiss

log = logging.getLogger(__name__)


def gpu_wanted(config: FaissConfig) -> bool:
    """True when GPU FAISS should be used: allowed by ``use_gpu``, and FAISS sees a GPU."""
    if config.use_gpu is False:
        return False
    faiss = load_faiss()
    return bool(faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)


def clone_to_gpu(config: FaissConfig, faiss_file: Path, nprobe: int) -> tuple[Any, Any] | None:
    """``(gpu index, its resources)`` for the IVF-PQ file, or None to search on CPU.

    ``use_gpu=True`` makes a missing or failing GPU an error; ``None`` falls back to CPU (logged).
    """
    faiss = load_faiss()
    want = config.use_gpu
    if want is False:
        return None
    if not gpu_wanted(config):
        if want is True:
            raise BackendUnavailableError(
                "use_gpu=True but FAISS sees no GPU; install fgsearch[gpu] on a CUDA machine or set use_gpu=None"
            )
        return None
    try:
        res = faiss.StandardGpuResources()
        co = faiss.GpuClonerOptions()
        co.useFloat16 = True  # float16 lookup tables: 32-bit ones overflow shared memory at 64 codes
        ram = faiss.read_index(str(faiss_file))
        gpu = faiss.index_cpu_to_gpu(res, 0, ram, co)
        faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", nprobe)
        log.info("faiss index cloned to GPU 0 for unfiltered searches")
        return gpu, res
    except Exception as e:  # GPU problems must never break search: fall back to CPU
        if want is True:
            raise BackendUnavailableError(f"cannot move the FAISS index to the GPU: {e}") from e
        log.warning("GPU FAISS unavailable (%s); searching on CPU", e)
        return None
