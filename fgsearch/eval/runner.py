"""Run a benchmark end to end: read the data, encode with the model layer, score, record.

``run_eval(task, data, model)`` returns an :class:`EvalResult` (metrics in percent, the paper's
numbers where the seed table has them, and the settings that produced them). Encoding goes
through :class:`fgsearch.model.Encoder`, the same batching and device handling as indexing
(GPU and bf16 when present). Region features come from the same forward pass as the global
vector. The library never prints: progress is reported through an optional callback.

Text paths follow the reference evaluation scripts: MSCOCO, Flickr30K, FG-OVD and box
classification use the short path (77 tokens, longer captions truncated); DCI, ShareGPT4V-1k and
Urban-1K use the long path (248 tokens). FineShapes uses the long path for its long captions and
the short path for region expressions, as in training. Region expressions (FG-OVD, box
classification, FineShapes regions) take the family's box walk where it has one (FG-CLIP 2).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgsearch.errors import DataError, FgsearchError, InputError
from fgsearch.eval import datasets as ds
from fgsearch.eval.metrics import Ties, hard_negative_accuracy, retrieval_metrics, topk_accuracy
from fgsearch.eval.paper import paper_numbers
from fgsearch.eval.tasks import LONG, SHORT, TASKS, EvalResult, EvalTask

if TYPE_CHECKING:
    from fgsearch.library.fastpath import FastPath
    from fgsearch.model import Encoder

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as work advances (``stage`` is a short label)."""


# Prompts for box classification (class name in the braces), averaged per class as CLIP does.
# The reference averages over CLIP's 80 ImageNet templates; ours is a shorter set of our own, so
# box-classification numbers can differ slightly from the paper's.
BOX_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a {} in the scene.",
)


# ---- encoding ------------------------------------------------------------------------------------
def _report(progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def _region_path(enc: Encoder) -> str:
    """The walk for region expressions: the family's box walk, else the short path."""
    return "box" if "box" in enc.walks else SHORT


def _load_pixels(enc: Encoder, paths: Sequence[Path]) -> Any:
    from PIL import Image

    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                arrays.append(enc.transform.item(im))
        except (OSError, ValueError, Image.DecompressionBombError, FgsearchError) as e:
            raise DataError(f"cannot read evaluation image {p} ({e}); re-download the dataset's images") from e
    return enc.transform.collate(arrays)


def encode_images(
    enc: Encoder,
    paths: Sequence[Path],
    boxes: Sequence[np.ndarray] | None = None,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    stage: str = "images",
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paths -> L2-normalised global vectors ``[N, P]`` and per-image region vectors (one pass each).

    Decoding the next batch runs in a thread while the current one is encoded.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    starts = list(range(0, len(paths), batch_size))
    globals_: list[np.ndarray] = []
    regions: list[np.ndarray] = []
    _report(progress, stage, 0, len(paths))
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt: Future[Any] | None = pool.submit(_load_pixels, enc, paths[:batch_size]) if starts else None
        for k, s in enumerate(starts):
            assert nxt is not None
            pv = nxt.result()
            nxt = (
                pool.submit(_load_pixels, enc, paths[starts[k + 1] : starts[k + 1] + batch_size])
                if k + 1 < len(starts)
                else None
            )
            out = enc.encode_pixels(pv, None if boxes is None else boxes[s : s + batch_size])
            globals_.append(out.image)
            if boxes is not None:
                regions.extend(out.regions)
            _report(progress, stage, min(s + batch_size, len(paths)), len(paths))
    image = np.concatenate(globals_) if globals_ else np.zeros((0, enc.dim), np.float32)
    return image, regions


def encode_texts(
    enc: Encoder,
    texts: Sequence[str],
    path: str,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    stage: str = "texts",
) -> tuple[np.ndarray, int]:
    """Texts on a FORCED path -> (L2-normalised ``[N, P]``, how many were truncated)."""
    from fgsearch.model import TextTruncatedWarning

    out = np.zeros((len(texts), enc.dim), np.float32)
    truncated = 0
    step = max(1, batch_size) * 4
    _report(progress, stage, 0, len(texts))
    for s in range(0, len(texts), step):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TextTruncatedWarning)
            out[s : s + step] = enc.encode_texts(list(texts[s : s + step]), path=path, batch_size=batch_size)
        truncated += sum(1 for w in caught if issubclass(w.category, TextTruncatedWarning))
        _report(progress, stage, min(s + step, len(texts)), len(texts))
    return out, truncated


def _unique(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct texts (first-seen order) and, per input, its index among them."""
    index: dict[str, int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        inverse[i] = index.setdefault(t, len(index))
    return list(index), inverse


# ---- scoring ---------------------------------------------------------------------------------------
def score_retrieval(
    enc: Encoder,
    data: ds.RetrievalSet,
    text_path: str,
    batch_size: int,
    progress: ProgressFn | None,
    ties: Ties = "pessimistic",
) -> tuple[dict[str, float], dict[str, Any]]:
    img, _ = encode_images(enc, data.images, None, batch_size, progress)
    txt, truncated = encode_texts(enc, data.texts, text_path, max(batch_size, 64), progress)
    metrics = retrieval_metrics(img @ txt.T, data.text_images, (1, 5, 10), ties)
    sizes = {"images": len(data.images), "texts": len(data.texts), "texts_truncated": truncated}
    return metrics, sizes


def _region_vectors(
    enc: Encoder,
    images: Sequence[Path],
    boxes: Sequence[tuple[int, ds.Box4]],
    batch_size: int,
    progress: ProgressFn | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Global vectors and one region vector per ``(image, box)``, in the order given."""
    per_image: list[list[ds.Box4]] = [[] for _ in images]
    slot: list[tuple[int, int]] = []
    for i, b in boxes:
        slot.append((i, len(per_image[i])))
        per_image[i].append(b)
    arrays = [np.asarray(b, np.float32).reshape(-1, 4) for b in per_image]
    img, regs = encode_images(enc, images, arrays, batch_size, progress, "images + regions")
    out = np.stack([regs[i][k] for i, k in slot]) if slot else np.zeros((0, enc.dim), np.float32)
    return img, out


def _hardneg(region: np.ndarray, items: Sequence[ds.RegionItem], text_vec: np.ndarray, tindex: dict[str, int]) -> float:
    scores = []
    for r, it in zip(region, items, strict=True):
        ids = [tindex[it.positive], *(tindex[t] for t in it.negatives)]
        scores.append(text_vec[ids] @ r)
    return hard_negative_accuracy(scores)


def score_regions(
    enc: Encoder, data: ds.RegionTextSet, batch_size: int, progress: ProgressFn | None
) -> tuple[dict[str, float], dict[str, Any]]:
    items = [it for it in data.items if it.negatives]
    if not items:
        raise DataError(f"{data.name}: no region has hard negatives ({data.source})")
    _, region = _region_vectors(enc, data.images, [(it.image, it.box) for it in items], batch_size, progress)
    texts, _ = _unique([t for it in items for t in (it.positive, *it.negatives)])
    tvec, truncated = encode_texts(enc, texts, _region_path(enc), max(batch_size, 64), progress)
    tindex = {t: i for i, t in enumerate(texts)}
    metrics = {"hardneg_acc": _hardneg(region, items, tvec, tindex)}
    subsets = sorted({it.subset for it in items})
    if len(subsets) > 1:
        for sub in subsets:
            sel = [k for k, it in enumerate(items) if it.subset == sub]
            metrics[f"hardneg_acc[{sub}]"] = _hardneg(region[sel], [items[k] for k in sel], tvec, tindex)
    sizes = {"images": len(data.images), "regions": len(items), "texts": len(texts), "texts_truncated": truncated}
    return metrics, sizes


def class_embeddings(
    enc: Encoder, class_names: Sequence[str], templates: Sequence[str] = BOX_TEMPLATES, batch_size: int = 64
) -> tuple[np.ndarray, int]:
    """One L2-normalised vector per class: the mean of its normalised prompt vectors (short path)."""
    prompts = [t.format(c) for c in class_names for t in templates]
    vec, truncated = encode_texts(enc, prompts, _region_path(enc), batch_size)
    mean = vec.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12), truncated


def score_boxcls(
    enc: Encoder, data: ds.BoxClassSet, batch_size: int, progress: ProgressFn | None, ties: Ties = "pessimistic"
) -> tuple[dict[str, float], dict[str, Any]]:
    if not data.boxes:
        raise DataError(f"{data.name}: no usable boxes in {data.source}")
    _, region = _region_vectors(enc, data.images, [(b.image, b.box) for b in data.boxes], batch_size, progress)
    cls, truncated = class_embeddings(enc, data.class_names, BOX_TEMPLATES, max(batch_size, 64))
    scores = region @ cls.T
    labels = [b.label for b in data.boxes]
    k5 = min(5, len(data.class_names))
    metrics = {
        "top1_acc": topk_accuracy(scores, labels, 1, ties),
        f"top{k5}_acc": topk_accuracy(scores, labels, k5, ties),
    }
    sizes = {
        "images": len(data.images),
        "boxes": len(data.boxes),
        "boxes_skipped": data.skipped,
        "classes": len(data.class_names),
        "templates": len(BOX_TEMPLATES),
        "texts_truncated": truncated,
    }
    return metrics, sizes


def score_fineshapes(
    enc: Encoder, data: ds.FineShapesSet, batch_size: int, progress: ProgressFn | None, ties: Ties = "pessimistic"
) -> tuple[dict[str, float], dict[str, Any]]:
    """Retrieval on long captions; hard negatives and region->text over the regions' short expressions.

    Region->text: each region against every distinct region expression of the split; correct when
    its own expression ranks first (pessimistic ties).
    """
    r, items = data.retrieval, data.regions.items
    img, region = _region_vectors(enc, r.images, [(it.image, it.box) for it in items], batch_size, progress)
    cap, trunc_long = encode_texts(enc, r.texts, LONG, max(batch_size, 64), progress, "captions")
    metrics = retrieval_metrics(img @ cap.T, r.text_images, (1, 5, 10), ties)
    sizes: dict[str, Any] = {"images": len(r.images), "captions": len(r.texts), "regions": len(items)}
    if items:
        texts, _ = _unique([t for it in items for t in (it.positive, *it.negatives)])
        tvec, trunc_short = encode_texts(enc, texts, _region_path(enc), max(batch_size, 64), progress, "region texts")
        tindex = {t: i for i, t in enumerate(texts)}
        hard = [k for k, it in enumerate(items) if it.negatives]
        if hard:
            metrics["hardneg_acc"] = _hardneg(region[hard], [items[k] for k in hard], tvec, tindex)
        positives, label = _unique([it.positive for it in items])
        pvec = tvec[[tindex[t] for t in positives]]
        metrics["region_text_acc"] = topk_accuracy(region @ pvec.T, label, 1, ties)
        sizes.update(region_texts=len(positives), hardneg_regions=len(hard), texts_truncated=trunc_long + trunc_short)
    else:
        sizes["texts_truncated"] = trunc_long
    return metrics, sizes


# ---- entry point -----------------------------------------------------------------------------------
def _model_record(enc: Encoder) -> dict[str, Any]:
    from fgsearch.model import checkpoint_fingerprint

    spec = enc.spec
    rec: dict[str, Any] = {
        "name": spec.name,
        "source": spec.source,
        "family": enc.family_name,
        "image_size": list(enc.transform.image_size or ()),  # FG-CLIP 2: none (NaFlex keeps each image's shape)
    }
    if spec.local_dir:
        try:
            rec["fingerprint"] = checkpoint_fingerprint(Path(spec.local_dir))
        except (OSError, ValueError) as e:  # a record, not a reason to fail
            logger.debug("no checkpoint fingerprint for %s: %s", spec.local_dir, e)
    return rec


def _dataset_size(dataset: Any) -> int:
    """Images plus texts, items or boxes: what a limit can leave out of any of the task datasets."""
    if hasattr(dataset, "retrieval"):  # FineShapes: a retrieval set and a region set
        return _dataset_size(dataset.retrieval) + _dataset_size(dataset.regions)
    parts = ("images", "texts", "items", "boxes")
    return sum(len(getattr(dataset, name)) for name in parts if hasattr(dataset, name))


def _limit_left_out(reader: Any, data: Path, kept: Any) -> bool:
    """Whether a limited read left anything out (a limit above the data's size changes nothing).
    Data that cannot be read whole (a partial download: --limit is the quick check on one) counts
    as left out."""
    try:
        whole = reader(data, None)
    except DataError:
        return True
    return _dataset_size(whole) > _dataset_size(kept)


def _gated(model: str, device: str, fast: FastPath, dataset: Any) -> tuple[Encoder, list[str]]:
    """The fast path asked for if it passes the gate on the task's images, else fp32 (and why)."""
    from fgsearch.library.fastpath import choose_encoder, read_sample
    from fgsearch.library.settings import shared_encoder

    images = [str(p) for p in getattr(dataset, "images", ())]
    ref = shared_encoder(model, device, "fp32")
    choice = choose_encoder(
        fast,
        device,
        ref.spec.fingerprint or "",
        {},
        lambda n: read_sample(images[:: max(1, len(images) // n)][:n], n, []),
        lambda precision, runtime: shared_encoder(model, device, precision, runtime),
    )
    return choice.encoder, [r.line() for r in choice.measured.values()] + choice.notes


def run_eval(
    task: str,
    data: str | os.PathLike[str],
    model: str | os.PathLike[str] | Encoder = "fg-clip-base",
    batch_size: int = 32,
    device: str = "auto",
    limit: int | None = None,
    progress: ProgressFn | None = None,
    ties: Ties = "pessimistic",
    fast: FastPath | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``task`` (a key of :data:`TASKS`) with the local data at ``data``.

    ``model`` is a registry name, ``hf-hub:`` id, checkpoint directory, or a loaded
    :class:`~fgsearch.model.Encoder` (then ``device`` is ignored). ``limit`` keeps the first N
    images (N items for FG-OVD) for a quick check; when that leaves something out (``settings["limited"]``)
    the numbers are not comparable to the paper's. ``fast`` (a runtime + precision) runs a fast
    path once it passes the quality gate on the task's own images (else fp32, said in
    ``settings["notes"]``).
    """
    spec = _check_args(task, limit, batch_size)
    started = _dt.datetime.now(_dt.timezone.utc)
    data = Path(data).expanduser().resolve()
    dataset = spec.reader(data, limit)  # read (and check) the data before loading a model
    limited = limit is not None and _limit_left_out(spec.reader, data, dataset)
    from fgsearch.model import load_encoder

    notes: list[str] = []
    if isinstance(model, (str, os.PathLike)) and fast is not None and fast.candidates(device):
        enc, notes = _gated(str(model), device, fast, dataset)
    else:
        enc = load_encoder(str(model), device=device) if isinstance(model, (str, os.PathLike)) else model
    metrics, sizes = _score(enc, spec, dataset, batch_size, progress, ties)
    settings = {
        "task": task,
        "description": spec.description,
        "model": _model_record(enc),
        "data": str(data),
        "data_files": dataset.source,
        "sizes": sizes,
        "text_path": spec.text_path,
        "batch_size": batch_size,
        "device": enc.device_name,
        "precision": enc.precision,
        "notes": notes,
        "limit": limit,
        "limited": limited,
        "ties": ties,
        "units": "percent",
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 2),
    }
    from fgsearch._version import __version__

    settings["fgsearch_version"] = __version__
    return EvalResult(task, {k: round(v, 4) for k, v in metrics.items()}, paper_numbers(task), settings)


def _check_args(task: str, limit: int | None, batch_size: int) -> EvalTask:
    """The task's entry; InputError for an unknown task, a limit or batch size below 1."""
    if task not in TASKS:
        raise InputError(f"unknown evaluation task {task!r}; choose one of {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    return TASKS[task]


def _score(
    enc: Encoder, spec: EvalTask, dataset: Any, batch_size: int, progress: ProgressFn | None, ties: Ties
) -> tuple[dict[str, float], dict[str, Any]]:
    """The task kind's scorer on ``dataset``: metrics (percent) and the sizes scored."""
    if spec.kind == "retrieval":
        return score_retrieval(enc, dataset, spec.text_path, batch_size, progress, ties)
    if spec.kind == "regions":
        return score_regions(enc, dataset, batch_size, progress)
    if spec.kind == "boxcls":
        return score_boxcls(enc, dataset, batch_size, progress, ties)
    return score_fineshapes(enc, dataset, batch_size, progress, ties)
