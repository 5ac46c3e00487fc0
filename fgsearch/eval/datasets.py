"""Readers for the benchmarks' usual local files, each producing one of three common structures.

* :class:`RetrievalSet`: images, texts and which images each text describes (Flickr30K, MSCOCO,
  DCI, ShareGPT4V-1k, Urban-1K).
* :class:`RegionTextSet`: boxes with a positive expression and hard negatives (FG-OVD).
* :class:`BoxClassSet`: boxes with a class id, and the class names (COCO box classification).

FineShapes (our synthetic set in FineHARD format) gives a :class:`FineShapesSet` holding both a
retrieval set and a region set. Boxes are always normalised ``x1, y1, x2, y2`` (see
``fgsearch.boxes``); pixel boxes are converted here, at the boundary. Data never downloads: when
files are missing, :class:`~fgsearch.errors.DataError` names the layout expected and where to get it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgsearch.errors import DataError

logger = logging.getLogger(__name__)

Box4 = tuple[float, float, float, float]

KARPATHY_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/ caption_datasets.zip"
FLICKR_IMAGES_URL = "https://shannon.cs.illinois.edu/DenotationGraph/ flickr30k-images"
COCO_URL = "https://cocodataset.org/#download val2017.zip + annotations_trainval2017.zip"
DCI_URL = "https://github.com/facebookresearch/DCI annotations + the SA-1B photos its README names"
SHAREGPT4V_URL = (
    "https://huggingface.co/datasets/Lin-Chen/ShareGPT4V share-captioner_coco_lcs_sam_1246k_1107.json + its images"
)
URBAN1K_URL = "https://huggingface.co/datasets/BeichenZhang/Urban1k"
FGOVD_URL = "https://github.com/lorebianchi98/FG-OVD benchmark jsonl files, images from COCO val2017"


@dataclass(frozen=True)
class RetrievalSet:
    """``texts[t]`` describes every image in ``text_images[t]`` (usually exactly one)."""

    name: str
    images: tuple[Path, ...]
    texts: tuple[str, ...]
    text_images: tuple[tuple[int, ...], ...]
    source: str = ""  # the files read and the protocol, for the record


@dataclass(frozen=True)
class RegionItem:
    """One box of one image, its positive expression and its hard negatives (may be empty)."""

    image: int
    box: Box4
    positive: str
    negatives: tuple[str, ...] = ()
    subset: str = ""


@dataclass(frozen=True)
class RegionTextSet:
    name: str
    images: tuple[Path, ...]
    items: tuple[RegionItem, ...]
    source: str = ""


@dataclass(frozen=True)
class LabeledBox:
    image: int
    box: Box4
    label: int  # index into BoxClassSet.class_names


@dataclass(frozen=True)
class BoxClassSet:
    name: str
    images: tuple[Path, ...]
    boxes: tuple[LabeledBox, ...]
    class_names: tuple[str, ...]
    source: str = ""
    skipped: int = 0  # annotations dropped because their box is empty after clipping


@dataclass(frozen=True)
class FineShapesSet:
    retrieval: RetrievalSet
    regions: RegionTextSet
    source: str = ""


@dataclass
class _Builder:
    """Collects images (deduplicated by path) and texts for a RetrievalSet."""

    images: list[Path] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    text_images: list[tuple[int, ...]] = field(default_factory=list)
    index: dict[Path, int] = field(default_factory=dict)

    def image(self, path: Path) -> int:
        if path not in self.index:
            self.index[path] = len(self.images)
            self.images.append(path)
        return self.index[path]

    def add(self, path: Path, captions: Iterable[str]) -> None:
        i = self.image(path)
        for c in captions:
            self.texts.append(c)
            self.text_images.append((i,))

    def build(self, name: str, source: str) -> RetrievalSet:
        return RetrievalSet(name, tuple(self.images), tuple(self.texts), tuple(self.text_images), source)


# ---- helpers -------------------------------------------------------------------------------------
def _load_json(path: Path, what: str, hint: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as e:
        raise DataError(f"{what}: {path} not found; {hint}") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{what}: cannot read {path} ({e}); re-download it ({hint})") from e


def _first_existing(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.exists():
            return c
    return None


def _require_images(paths: Sequence[Path], what: str, hint: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{what}: {len(missing)} of {len(paths)} images are missing (first: {missing[0]}); {hint}")


def _resolve_image(rel: str, roots: Sequence[Path]) -> Path:
    """``rel`` under the first root that has it (as given, then by its file name); else the first guess."""
    rel = rel.lstrip("/")
    name = Path(rel).name
    for root in roots:
        for cand in (root / rel, root / name):
            if cand.is_file():
                return cand
    return roots[0] / rel


def _norm_box(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> Box4 | None:
    """Pixel corners -> normalised box clipped to the image; None when nothing is left."""
    if width <= 0 or height <= 0:
        return None
    nx1, nx2 = max(0.0, x1 / width), min(1.0, x2 / width)
    ny1, ny2 = max(0.0, y1 / height), min(1.0, y2 / height)
    if not (nx1 < nx2 and ny1 < ny2):
        return None
    return (nx1, ny1, nx2, ny2)


def _limited(n: int, limit: int | None) -> int:
    return n if limit is None else max(0, min(n, limit))


# ---- Flickr30K / MSCOCO --------------------------------------------------------------------------
def read_karpathy(
    path: str | os.PathLike[str], dataset: str, split: str = "test", limit: int | None = None
) -> RetrievalSet:
    """Karpathy split JSON (``dataset_flickr30k.json`` / ``dataset_coco.json``): the split's images,
    the first 5 raw sentences of each. ``path`` is the JSON file or the folder holding it (or its
    ``annotations/``); images are looked up under that folder, its ``flickr30k-images/``, ``images/``."""
    p = Path(path)
    fname = f"dataset_{dataset}.json"
    hint = f"expected {fname} (the Karpathy split) next to the images; get it from {KARPATHY_URL}"
    js = p if p.is_file() else _first_existing([p / fname, p / "annotations" / fname])
    if js is None:
        raise DataError(f"{dataset}: no {fname} under {p}; {hint}")
    data = _load_json(js, dataset, hint)
    root = js.parent if p.is_file() else p
    roots = [root, root / "flickr30k-images", root / "images", root / "Images", root.parent]
    b = _Builder()
    entries = [e for e in data.get("images", []) if e.get("split") == split]
    if not entries:
        raise DataError(f"{dataset}: {js} has no images in split {split!r}; is it the Karpathy split file?")
    for e in entries[: _limited(len(entries), limit)]:
        rel = str(Path(e.get("filepath", "")) / e["filename"])
        sents = [s["raw"].strip() for s in e.get("sentences", [])][:5]
        if sents:
            b.add(_resolve_image(rel, roots), sents)
    images_hint = f"put the images under {root} from {FLICKR_IMAGES_URL if dataset == 'flickr30k' else COCO_URL}"
    _require_images(b.images, dataset, images_hint)
    return b.build(dataset, f"{js} split={split} (Karpathy), first 5 captions per image")


def read_coco_captions(path: str | os.PathLike[str], limit: int | None = None) -> RetrievalSet:
    """COCO 5K as the reference evaluates it: ``annotations/captions_val2017.json`` + ``val2017/``,
    images in id order, the first 5 captions of each."""
    root = Path(path)
    js = root / "annotations" / "captions_val2017.json"
    hint = f"expected {root}/annotations/captions_val2017.json and {root}/val2017/ from {COCO_URL}"
    data = _load_json(js, "coco", hint)
    caps: dict[int, list[str]] = {}
    for a in data.get("annotations", []):
        caps.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
    images = sorted(data.get("images", []), key=lambda im: int(im["id"]))
    b = _Builder()
    for im in images:
        if len(b.images) >= _limited(len(images), limit):
            break
        c = caps.get(int(im["id"]), [])[:5]
        if c:
            b.add(root / "val2017" / im["file_name"], c)
    _require_images(b.images, "coco", hint)
    return b.build("coco", f"{js} (val2017, the reference's 5K protocol), first 5 captions per image")


def read_coco_retrieval(path: str | os.PathLike[str], limit: int | None = None) -> RetrievalSet:
    """MSCOCO 5K: the reference's val2017 protocol when its files are there, else the Karpathy 5K test split."""
    p = Path(path)
    if (p / "annotations" / "captions_val2017.json").exists():
        return read_coco_captions(p, limit)
    if p.is_file() or _first_existing([p / "dataset_coco.json", p / "annotations" / "dataset_coco.json"]):
        return read_karpathy(p, "coco", "test", limit)
    raise DataError(
        f"coco: neither annotations/captions_val2017.json nor dataset_coco.json under {p}; "
        f"expected {p}/annotations/captions_val2017.json + {p}/val2017/ from {COCO_URL} "
        f"or the Karpathy dataset_coco.json from {KARPATHY_URL}"
    )


# ---- long-caption sets ---------------------------------------------------------------------------
def read_dci(path: str | os.PathLike[str], limit: int | None = None) -> RetrievalSet:
    """DCI: ``annotations/*.json`` (each with ``image`` and ``extra_caption``), one caption per image;
    images under ``photos/``, ``images/`` or the folder itself."""
    root = Path(path)
    ann = root / "annotations" if (root / "annotations").is_dir() else root
    hint = f"expected {root}/annotations/*.json and the photos in {root}/photos/ from {DCI_URL}"
    files = sorted(ann.glob("*.json")) if ann.is_dir() else []
    if not files:
        raise DataError(f"dci: no annotation files under {ann}; {hint}")
    roots = [root / "photos", root / "images", root, root.parent / "photos"]
    b = _Builder()
    skipped = 0
    for f in files:
        if len(b.images) >= _limited(len(files), limit):
            break
        rec = _load_json(f, "dci", hint)
        cap = str(rec.get("extra_caption") or "").strip() if isinstance(rec, dict) else ""
        if not cap or not isinstance(rec, dict) or "image" not in rec:
            skipped += 1
            continue
        b.add(_resolve_image(str(rec["image"]), roots), [cap])
    if skipped:
        logger.info("dci: %d annotation files without image or extra_caption skipped", skipped)
    _require_images(b.images, "dci", hint)
    return b.build("dci", f"{ann}/*.json extra_caption ({skipped} files without one skipped)")


SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"


def read_sharegpt4v(path: str | os.PathLike[str], limit: int | None = None, n: int = 1000) -> RetrievalSet:
    """ShareGPT4V-1k: the first ``n`` records of ``share-captioner_coco_lcs_sam_1246k_1107.json``;
    the caption is the first ``gpt`` turn. Images are found by their relative path or file name
    under the JSON's folder, ``images/``, ``coco/train2017/`` or ``sam/images/``."""
    p = Path(path)
    js = p if p.is_file() else p / SHAREGPT4V_FILE
    hint = f"expected {SHAREGPT4V_FILE} and its images in one folder from {SHAREGPT4V_URL}"
    data = _load_json(js, "sharegpt4v", hint)
    root = js.parent
    roots = [root, root / "images", root / "coco" / "train2017", root / "coco", root / "sam" / "images", root / "sam"]
    b = _Builder()
    records = data[: _limited(n, limit)] if isinstance(data, list) else []
    for rec in records:
        turns = rec.get("conversations", [])
        cap = next((str(t.get("value", "")) for t in turns if t.get("from") == "gpt"), "")
        if not cap and len(turns) > 1:
            cap = str(turns[1].get("value", ""))
        if cap.strip():
            b.add(_resolve_image(str(rec["image"]), roots), [cap.strip()])
    if not b.images:
        raise DataError(f"sharegpt4v: {js} holds no usable records; {hint}")
    _require_images(b.images, "sharegpt4v", hint)
    return b.build("sharegpt4v", f"{js} first {len(records)} records")


def read_urban1k(path: str | os.PathLike[str], limit: int | None = None) -> RetrievalSet:
    """Urban-1K: ``image/NAME.jpg`` paired with ``caption/NAME.txt`` (sorted by name)."""
    root = Path(path)
    if not (root / "image").is_dir() and (root / "Urban1k" / "image").is_dir():
        root = root / "Urban1k"
    hint = f"expected {root}/image/*.jpg and {root}/caption/*.txt with matching names from {URBAN1K_URL}"
    if not (root / "caption").is_dir() or not (root / "image").is_dir():
        raise DataError(f"urban1k: no image/ and caption/ folders under {root}; {hint}")
    caps = sorted((root / "caption").glob("*.txt"))
    if not caps:
        raise DataError(f"urban1k: no caption files in {root}/caption; {hint}")
    images = {q.stem: q for q in (root / "image").iterdir() if q.is_file()}
    b = _Builder()
    for c in caps[: _limited(len(caps), limit)]:
        if c.stem not in images:
            raise DataError(f"urban1k: caption {c.name} has no image {c.stem}.* in {root}/image; {hint}")
        b.add(images[c.stem], [c.read_text(encoding="utf-8").strip()])
    return b.build("urban1k", f"{root}/image + {root}/caption")


# ---- FG-OVD ----------------------------------------------------------------------------------------
def _image_size(path: Path, cache: dict[Path, tuple[int, int]]) -> tuple[int, int]:
    if path not in cache:
        from PIL import Image

        try:
            with Image.open(path) as im:
                cache[path] = im.size  # header only; EXIF orientation is not applied, as in the reference
        except OSError as e:
            raise DataError(f"fgovd: cannot read image {path} ({e})") from e
    return cache[path]


def read_fgovd(path: str | os.PathLike[str], limit: int | None = None) -> RegionTextSet:
    """FG-OVD jsonl (``img_path``, ``bbox`` [x, y, w, h] pixels, ``pos_expression``,
    ``neg_expression``): one file, or every ``*.jsonl`` in a folder (or its ``fgovd/``), each a
    subset named by its file stem. Images (COCO val2017) are looked up by ``img_path`` under the
    folder, its parent, ``coco/`` and ``val2017/``. The positive is the first pos_expression."""
    p = Path(path)
    hint = f"expected FG-OVD *.jsonl files and COCO val2017 images; get them from {FGOVD_URL} and {COCO_URL}"
    if p.is_file():
        files = [p]
    else:
        folder = p / "fgovd" if (p / "fgovd").is_dir() else p
        files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise DataError(f"fgovd: no *.jsonl under {p}; {hint}")
    base = p if p.is_dir() else p.parent
    roots: list[Path] = []
    for r in (base, base.parent, base / "coco", base.parent / "coco"):
        roots += [r, r / "val2017"]
    images: list[Path] = []
    index: dict[Path, int] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    items: list[RegionItem] = []
    for f in files:
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise DataError(f"fgovd: cannot read {f} ({e})") from e
        for n, line in enumerate(lines, 1):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                pos = rec["pos_expression"]
                pos = str(pos[0] if isinstance(pos, list) else pos)
                negs = tuple(str(t) for t in rec["neg_expression"])
                x, y, w, h = (float(v) for v in rec["bbox"][:4])
                rel = str(rec["img_path"])
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise DataError(f"fgovd: {f}:{n} is not an FG-OVD record ({e!r}); {hint}") from e
            img = _resolve_image(rel, roots)
            if not img.is_file():
                raise DataError(f"fgovd: image {rel} of {f}:{n} not found under {base} or {base / 'coco'}; {hint}")
            width, height = _image_size(img, sizes)
            box = _norm_box(x, y, x + w, y + h, width, height)
            if box is None:
                raise DataError(f"fgovd: {f}:{n} has an empty box {rec['bbox']} for a {width}x{height} image")
            if img not in index:
                index[img] = len(images)
                images.append(img)
            items.append(RegionItem(index[img], box, pos, negs, f.stem))
    return RegionTextSet("fgovd", tuple(images), tuple(items), ", ".join(str(f) for f in files))


# ---- COCO box classification -----------------------------------------------------------------------
def read_coco_boxes(path: str | os.PathLike[str], limit: int | None = None) -> BoxClassSet:
    """COCO ``annotations/instances_val2017.json`` + ``val2017/``: every annotated box (crowd
    included, as the reference does), images in id order; classes in the file's category order."""
    root = Path(path)
    js = root / "annotations" / "instances_val2017.json"
    hint = f"expected {root}/annotations/instances_val2017.json and {root}/val2017/ from {COCO_URL}"
    data = _load_json(js, "coco-boxcls", hint)
    cats = data.get("categories", [])
    if not cats:
        raise DataError(f"coco-boxcls: {js} has no categories; {hint}")
    cat_index = {int(c["id"]): i for i, c in enumerate(cats)}
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in data.get("annotations", []):
        anns.setdefault(int(a["image_id"]), []).append(a)
    ims = sorted(data.get("images", []), key=lambda im: int(im["id"]))
    images: list[Path] = []
    boxes: list[LabeledBox] = []
    skipped = 0
    for im in ims:
        if limit is not None and len(images) >= limit:
            break
        mine = anns.get(int(im["id"]), [])
        if not mine:
            continue
        i = len(images)
        images.append(root / "val2017" / im["file_name"])
        for a in mine:
            x, y, w, h = (float(v) for v in a["bbox"])
            box = _norm_box(x, y, x + w, y + h, float(im["width"]), float(im["height"]))
            if box is None or int(a["category_id"]) not in cat_index:
                skipped += 1
                continue
            boxes.append(LabeledBox(i, box, cat_index[int(a["category_id"])]))
    _require_images(images, "coco-boxcls", hint)
    return BoxClassSet(
        "coco-boxcls", tuple(images), tuple(boxes), tuple(str(c["name"]) for c in cats), str(js), skipped
    )


# ---- FineShapes ------------------------------------------------------------------------------------
def read_fineshapes(path: str | os.PathLike[str], limit: int | None = None) -> FineShapesSet:
    """A FineShapes (or any FineHARD-format) held-out split: ``jsonfiles/heldout.json`` under the
    folder (or a ``.json`` file given directly), images relative to the folder holding ``jsonfiles/``.

    Retrieval uses the long ``caption``; a caption shared by several images counts as correct for
    each of them. Regions give ``short_expr`` with its ``short_expr_negs`` as hard negatives.
    """
    p = Path(path)
    hint = "make one with `fgsearch make-data fineshapes DIR` (FineHARD layout: DIR/jsonfiles/heldout.json + images)"
    js = p if p.is_file() else p / "jsonfiles" / "heldout.json"
    if not js.exists():
        raise DataError(f"fineshapes: no held-out split {js}; {hint}")
    root = js.parent.parent if js.parent.name == "jsonfiles" else js.parent
    data = _load_json(js, "fineshapes", hint)
    if not isinstance(data, list):
        raise DataError(f"fineshapes: {js} must hold a JSON array of FineHARD records; {hint}")
    images: list[Path] = []
    captions: list[str] = []
    items: list[RegionItem] = []
    for n, rec in enumerate(data[: _limited(len(data), limit)]):
        try:
            rel = str(rec["f_path"])
            cap = str(rec["caption"]).strip()
            infos = rec.get("bbox_info") or []
        except (KeyError, TypeError) as e:
            raise DataError(f"fineshapes: record {n} of {js} lacks f_path/caption ({e!r}); {hint}") from e
        i = len(images)
        images.append(root / rel)
        captions.append(cap)
        for info in infos:
            x1, y1, x2, y2 = (float(v) for v in info["bbox"][:4])
            if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
                raise DataError(f"fineshapes: record {n} of {js} has an invalid box {info['bbox']}")
            negs = info.get("short_expr_negs") or {}
            if isinstance(negs, dict):
                neg_list = [str(negs[k]) for k in sorted(negs, key=lambda k: (len(str(k)), str(k)))]
            else:
                neg_list = [str(t) for t in negs]
            if not info.get("flag_short_neg", 1):
                neg_list = []
            items.append(RegionItem(i, (x1, y1, x2, y2), str(info["short_expr"]), tuple(neg_list)))
    if not images:
        raise DataError(f"fineshapes: {js} holds no records; {hint}")
    _require_images(images, "fineshapes", hint)
    same: dict[str, list[int]] = {}
    for i, c in enumerate(captions):
        same.setdefault(c, []).append(i)
    retrieval = RetrievalSet(
        "fineshapes", tuple(images), tuple(captions), tuple(tuple(same[c]) for c in captions), f"{js} (long captions)"
    )
    regions = RegionTextSet("fineshapes", tuple(images), tuple(items), f"{js} (short_expr + short_expr_negs)")
    return FineShapesSet(retrieval, regions, str(js))
