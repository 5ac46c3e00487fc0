"""A text tower that runs without torch: FG-CLIP's text encoder in ONNX Runtime, for cold queries.

A text query spends ~12 ms encoding its text and seconds importing torch and reading a 600 MB
checkpoint. :func:`prepare_fast_text` (``fgsearch index --fast-text``) exports the text tower
once per checkpoint to ONNX (one graph for both walks: the transformer is shared, the walk picks
the position rows and the projection), checks it against the torch encoder on
:data:`CHECK_TEXTS` (short and long captions) and records the figures beside it in the cache
(``$FGSEARCH_HOME/text-runtime/<fingerprint>-v1/``). The ``onnx-text`` runtime
(:func:`load_fast_text`) then serves text-only callers (``fgsearch query "..."`` without an
image) when the check passed: cosine to torch >= :data:`MIN_COSINE` on every text and top-10
overlap >= :data:`MIN_TOP10` (each text ranking the others); otherwise, or when nothing is
cached, the caller loads torch as before. A tower that is cached but cannot be used (refused by
its check, or damaged: a file missing or of another size than recorded) raises
:class:`FastTextUnusable`, which callers say in one line before they load torch.

Both families are exported: FG-CLIP here (the token table inside the graph, ~250 MB float32 for
fg-clip-base), FG-CLIP 2 by :mod:`fgsearch.model.fast_text2` (its 256,000-row token table outside
the graph, memory-mapped; its three walks short, box and long in one graph).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.errors import InputError, ModelNotFoundError
from fgsearch.model.fast_text_files import GRAPH, FastTextUnusable, session_options
from fgsearch.model.protocol import TextPath

if TYPE_CHECKING:
    from fgsearch.model.registry import ModelSpec

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
MIN_COSINE = 0.9999  # fp32 export: the same arithmetic in another order (measured >= 0.99999)
MIN_TOP10 = 0.99  # mean top-10 overlap of each check text ranking the others
META = "meta.json"
FAMILIES = ("fgclip", "fgclip2")


_SHORT_TEXTS = (
    "a red car parked beside a yellow house|two children playing football on a beach|a cup of coffee on a "
    "wooden table|an old man reading a newspaper|a cat sleeping on a blue sofa|a plate of pasta with "
    "tomato sauce|a bicycle leaning against a brick wall|a street sign at night|a white tent in a green "
    "field|a birthday cake with candles|a woman in a blue dress holding an umbrella|a laptop and a phone "
    "on a desk|a horse running in the snow|a boat on a calm lake at sunset|a dog with a ball in its "
    "mouth|a bowl of fruit|a train at a station|a person skiing down a mountain|a small bird on a branch|"
    "a city skyline with tall buildings"
).split("|")
CHECK_TEXTS = (
    *_SHORT_TEXTS,
    "A wide photo of a busy market street in the late afternoon: on the left a man in a grey coat sells "
    "oranges and lemons from wooden crates, behind him a green awning shades a bakery window full of "
    "bread, in the middle two women with shopping bags talk beside a red bicycle, and on the right a "
    "small white dog sits next to a blue door under a hanging lamp.",
    "Close-up of a kitchen counter with a silver kettle, a glass jar of pasta, three brown eggs in a "
    "ceramic bowl, a chopping board with sliced carrots and a knife, a folded striped towel and a potted "
    "basil plant by the window, morning light falling from the left across the tiles.",
)


def cache_dir(fingerprint: str) -> Path:
    from fgsearch.library_paths import data_home

    return data_home() / "text-runtime" / f"{fingerprint}-v{CACHE_VERSION}"


# ---- export (torch) ------------------------------------------------------------------------------
def prepare_fast_text(encoder: Any, *, force: bool = False) -> dict[str, Any]:
    """Export ``encoder``'s text tower (a torch encoder) once and check it; returns the cache's
    meta (``passed``, ``cosine_min``, ``top10``, ``seconds``). Raises :class:`InputError` for a
    family that has no export, or when ``onnx``/``onnxruntime`` are missing."""
    family = encoder.family_name
    if family not in FAMILIES:
        raise InputError(f"--fast-text: the {family} family's text tower is not exported ({', '.join(FAMILIES)} are)")
    fingerprint = _fingerprint(encoder.spec)
    folder = cache_dir(fingerprint)
    meta_file = folder / META
    checkpoint = Path(encoder.spec.local_dir or ".")
    if meta_file.exists() and not force:
        # checked again against torch (a second or two): a damaged cache is exported again
        try:
            cached = dict(json.loads(meta_file.read_text()))
            check_files(folder, cached)
            again = agreement(encoder, _open(folder, cached, checkpoint))
            if again["passed"] == cached.get("passed"):
                return {**cached, **again}
            logger.warning("the cached fast text tower in %s no longer agrees with torch; exporting it again", folder)
        except (ValueError, KeyError, FastTextUnusable) as e:
            logger.warning("%s; exporting it again", e)
    for module, extra in (("onnx", "onnx"), ("onnxruntime", "onnxruntime")):
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise InputError(f"--fast-text needs {module}: pip install 'fgsearch[fast-start]' (or {extra})")
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    names = [GRAPH + ".data", GRAPH]
    try:
        if family == "fgclip2":
            from fgsearch.model import fast_text2

            fast_text2.export(encoder, staging)
            names += [fast_text2.EMBEDDINGS, fast_text2.POSITIONS]
        else:
            _export(encoder, staging / "raw.onnx")
        _optimise(staging / "raw.onnx", staging / GRAPH)  # the graph names its weights file: GRAPH.data
        (folder / META).unlink(missing_ok=True)
        for name in names:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    base = {**_meta_for(encoder, fingerprint), "files": {n: (folder / n).stat().st_size for n in names}}
    fast = _open(folder, base, checkpoint)
    meta = {**base, **agreement(encoder, fast)}
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    tmp_meta = folder / f".{META}.{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, meta_file)  # written last: a cache without it is never used
    return meta


def _fingerprint(spec: ModelSpec) -> str:
    from fgsearch.model.loading import checkpoint_fingerprint

    if spec.fingerprint:
        return spec.fingerprint
    if not spec.local_dir:
        raise InputError(f"model {spec.name} has no local checkpoint to fingerprint")
    return checkpoint_fingerprint(Path(spec.local_dir))


def _meta_for(encoder: Any, fingerprint: str) -> dict[str, Any]:
    s = encoder.spec
    cal = encoder.calibration
    extra: dict[str, Any] = {}
    if encoder.family_name == "fgclip2":
        from fgsearch.model.fast_text2 import meta_extra

        extra = meta_extra(encoder)
    return {
        **extra,
        "fingerprint": fingerprint,
        "name": s.name,
        "family": encoder.family_name,
        "dim": int(encoder.dim),
        "image_size": list(s.image_size or ()),
        "short_length": s.short_length,
        "long_length": s.long_length,
        "walks": list(encoder.walks),
        "calibration": cal.to_dict() if cal is not None else None,
        "eos_id": int(encoder.tokenizer.eos_id) if hasattr(encoder.tokenizer, "eos_id") else None,
    }


def _export(encoder: Any, out: Path) -> None:
    import torch

    wrapper = _TextGraph(encoder.model).eval()
    ids = encoder.tokenizer(["a red circle", "two dogs on grass"], TextPath.SHORT)
    import warnings

    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # the exporter warns that negative gather indices would be wrong: the EOS positions never are
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            wrapper,
            (ids, torch.tensor(False)),
            str(out),
            input_names=["input_ids", "long"],
            output_names=["features"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "features": {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )


def _optimise(raw: Path, out: Path) -> None:
    """ONNX Runtime's graph optimisations, done once and saved (loading the saved graph with them
    off took 0.6 s here instead of 2-8 s). EXTENDED, not ALL: ALL adds CPU-specific layouts that
    are not portable to another machine sharing the data home."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out)
    opts.log_severity_level = 3
    # the weights beside the graph: a small graph to parse, the weights read in one piece
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", out.name + ".data")
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])


def _text_graph_class() -> Any:
    import torch

    class TextGraph(torch.nn.Module):
        """FG-CLIP's text forward for both walks (``long`` picks the rows and the projection);
        runs over every given token (causal attention: padding after the EOS changes nothing)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.m = model
            tm = model.text_model
            n = tm.cfg.long_positions
            short = tm.embeddings.positions(tm.cfg.max_position_embeddings, TextPath.SHORT)
            self.register_buffer("short_rows", torch.nn.functional.pad(short, (0, 0, 0, n - short.shape[0])))
            self.register_buffer("long_rows", tm.embeddings.positions(n, TextPath.LONG).clone())

        def forward(self, ids: Any, long: Any) -> Any:
            tm = self.m.text_model
            length = ids.shape[1]
            is_eos = ids == tm.cfg.eos_token_id
            eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full_like(ids[:, 0], length - 1))
            long_rows: Any = self.long_rows
            short_rows: Any = self.short_rows
            rows = torch.where(long, long_rows[:length], short_rows[:length])
            x = tm.embeddings.token_embedding(ids) + rows
            for layer in tm.encoder.layers:
                x = layer(x, causal=True)
            pooled = tm.final_layer_norm(x)[torch.arange(x.shape[0]), eos]
            return torch.where(long, self.m.text_filip_projection(pooled), self.m.text_projection(pooled))

    return TextGraph


def _TextGraph(model: Any) -> Any:  # a class built on first use: torch is imported lazily
    return _text_graph_class()(model)


def agreement(reference: Any, fast: Any, texts: Sequence[str] = CHECK_TEXTS) -> dict[str, Any]:
    """``fast`` vs ``reference`` on ``texts``: cosine per text, and top-10 overlap of each text
    ranking the others; ``passed`` against :data:`MIN_COSINE` and :data:`MIN_TOP10`. Each walk
    a query takes is checked: the text rule (short / long), and FG-CLIP 2's box walk (region
    matching) on the texts that fit the short length; the figures are the worst of them."""
    from fgsearch.model.tokenizer import TextTruncatedWarning

    texts = list(texts)
    with warnings.catch_warnings():  # a check text longer than the long walk is cut alike on both sides
        warnings.simplefilter("ignore", TextTruncatedWarning)
        runs: list[tuple[np.ndarray, np.ndarray]] = [(reference.encode_texts(texts), fast.encode_texts(texts))]
        if "box" in getattr(reference, "walks", ()):
            short = [t for t in texts if reference.text_path(t) is TextPath.SHORT]
            runs.append((reference.encode_texts(short, "box"), fast.encode_texts(short, "box")))
    cmin, top = 1.0, 1.0
    for a, b in runs:
        cmin = min(cmin, float(np.sum(a * b, axis=1).min()))
        k = min(10, len(a) - 1)
        overlaps = []
        for i in range(len(a)):
            ra, rb = a @ a[i], b @ b[i]
            ra[i] = rb[i] = -np.inf
            overlaps.append(len(set(np.argsort(-ra)[:k]) & set(np.argsort(-rb)[:k])) / k)
        top = min(top, float(np.mean(overlaps)))
    return {
        "cosine_min": round(cmin, 7),
        "top10": round(top, 4),
        "texts": sum(len(a) for a, _ in runs),
        "passed": bool(cmin >= MIN_COSINE and top >= MIN_TOP10),
    }


# ---- the runtime (no torch) ----------------------------------------------------------------------
def load_fast_text(model: str, *, device: str = "auto", precision: str = "auto", threads: int | None = None) -> Any:
    """The ``onnx-text`` runtime: the cached text tower of ``model`` if it passed its check
    (:class:`ModelNotFoundError` when none was prepared, naming the command that prepares it;
    :class:`FastTextUnusable` when it was refused or is damaged). ``threads``: see
    :func:`session_options`."""
    from fgsearch.model.loading import checkpoint_dir, checkpoint_fingerprint, resolve_spec

    if device not in ("auto", "cpu") or precision not in ("auto", "fp32"):
        raise InputError("the onnx-text runtime runs on the CPU in fp32 only")
    spec = resolve_spec(model)
    checkpoint = checkpoint_dir(spec, download=False)
    folder = cache_dir(checkpoint_fingerprint(checkpoint))
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"no fast text tower for {model}; prepare it with `fgsearch index ... --fast-text`"
        ) from e
    if not meta.get("passed"):
        raise FastTextUnusable(
            f"the fast text tower of {model} failed its check against torch (cosine {meta.get('cosine_min')}, "
            f"top-10 overlap {meta.get('top10')}); queries use torch"
        )
    check_files(folder, meta)
    return _open(folder, meta, checkpoint, threads)


def check_files(folder: Path, meta: dict[str, Any]) -> None:
    """:class:`FastTextUnusable` when a file the export wrote is missing or of another size
    (a cache written before sizes were recorded is checked for its graph only)."""
    files = meta.get("files") or {GRAPH: None}
    for name, size in files.items():
        try:
            got = (folder / name).stat().st_size
        except OSError:
            got = None
        if got is None or (size is not None and got != size):
            what = "missing" if got is None else f"{got} bytes, not the {size} exported"
            raise FastTextUnusable(
                f"the fast text tower in {folder} is damaged ({name} {what}); queries use torch until "
                "`fgsearch index ... --fast-text` exports it again"
            )


def _open(folder: Path, meta: dict[str, Any], checkpoint: Path, threads: int | None = None) -> Any:
    """The family's encoder over a cache folder; a graph ONNX Runtime cannot read is damaged."""
    try:
        if meta["family"] == "fgclip2":
            from fgsearch.model.fast_text2 import OnnxText2Encoder

            return OnnxText2Encoder(folder, meta, checkpoint, threads=threads)
        return OnnxTextEncoder(folder, meta, threads=threads)
    except (ModelNotFoundError, InputError, ImportError):
        raise
    except Exception as e:  # onnxruntime raises its own exception types for an unreadable graph
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FastTextUnusable(
            f"the fast text tower in {folder} is damaged ({first[:200]}); queries use torch until "
            "`fgsearch index ... --fast-text` exports it again"
        ) from e


class OnnxTextEncoder:
    """The text half of the :class:`~fgsearch.model.protocol.Encoder` protocol on ONNX Runtime;
    image calls raise :class:`InputError` (the caller loads torch for those).

    ``threads``: ONNX Runtime's threads for one forward pass, which sleep between passes. None:
    its defaults (every physical core; idle threads spin a while, burning CPU), right for a lone
    query. A process that shares its cores, such as ``fgsearch serve`` (searches beside the text
    forwards), passes its model thread count: spinning threads take the CPU its searches need.
    """

    precision = "fp32"
    device_name = "cpu"
    on_accelerator = False

    def __init__(self, folder: Path, meta: dict[str, Any], *, threads: int | None = None) -> None:
        import onnxruntime as ort

        from fgsearch.model.protocol import ScoreCalibration
        from fgsearch.model.registry import ModelSpec
        from fgsearch.model.tokenizer import Tokenizer

        self.meta = meta
        self.tokenizer = Tokenizer(short_length=meta["short_length"], long_length=meta["long_length"])
        if int(self.tokenizer.eos_id) != int(meta["eos_id"]):
            raise FastTextUnusable("the fast text tower was exported with another vocabulary; prepare it again")
        opts = session_options(threads)
        self.session = ort.InferenceSession(str(folder / GRAPH), opts, providers=["CPUExecutionProvider"])
        size = meta.get("image_size") or None
        self.spec = ModelSpec(
            name=meta["name"],
            family=meta["family"],
            image_size=tuple(size) if size else None,
            short_length=meta["short_length"],
            long_length=meta["long_length"],
            fingerprint=meta["fingerprint"],
        )
        self.calibration = ScoreCalibration.from_dict(meta.get("calibration"))
        self.dim = int(meta["dim"])
        self.family_name = str(meta["family"])
        self.walks = tuple(meta["walks"])

    @property
    def transform(self) -> Any:
        raise InputError("the onnx-text runtime encodes texts only; images need the torch runtime")

    def text_path(self, text: str) -> TextPath:
        return self.tokenizer.choose_path(text)

    def region_walk(self, text: str) -> TextPath:
        return self.tokenizer.choose_path(text)  # FG-CLIP: the text rule (no box walk)

    def encode_texts(
        self, texts: Sequence[str], path: TextPath | str | None = None, batch_size: int = 64, normalize: bool = True
    ) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        paths = [TextPath(path) if path is not None else self.text_path(t) for t in texts]
        for bad in {p for p in paths if p.value not in self.walks}:
            raise InputError(f"the {self.family_name} family has no {bad.value!r} text walk ({', '.join(self.walks)})")
        for p in (TextPath.SHORT, TextPath.LONG):
            idx = [i for i, q in enumerate(paths) if q is p]
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                ids = np.asarray(self.tokenizer.rows([texts[i] for i in chunk], p), np.int64)
                eos = np.argmax(ids == self.meta["eos_id"], axis=1)
                ids = ids[:, : int(eos.max()) + 1]  # as torch does: nothing after the last EOS
                feed = {"input_ids": ids, "long": np.asarray(p is TextPath.LONG)}
                out[chunk] = self.session.run(None, feed)[0]
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _images(self, *_: Any, **__: Any) -> Any:
        raise InputError("the onnx-text runtime encodes texts only; images need the torch runtime")

    encode_pixels = encode_proposed = encode_images = _images
