"""What both fast text towers share (:mod:`.fast_text` for FG-CLIP, :mod:`.fast_text2` for FG-CLIP 2):
the graph's file name, the error of a cached tower that cannot be used, ONNX Runtime's options."""

from __future__ import annotations

from typing import Any

from fgsearch.errors import InputError, ModelNotFoundError

GRAPH = "text.onnx"


class FastTextUnusable(ModelNotFoundError):
    """A fast text tower is cached but cannot be used (refused by its check, or damaged)."""


def session_options(threads: int | None) -> Any:
    """ONNX Runtime's options for a text tower: quiet, graph optimised when prepared. ``threads``:
    its threads for one forward pass, which then sleep between passes. None: its defaults (every
    physical core; idle threads spin a while, burning CPU), right for a lone query. A process that
    shares its cores, such as ``fgsearch serve`` (searches beside the text forwards), passes its
    model thread count: spinning threads take the CPU its searches need."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimised when prepared
    if threads is not None:
        if threads < 1:
            raise InputError(f"the onnx-text runtime needs at least 1 thread, got {threads}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts
