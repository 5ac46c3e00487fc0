"""Tiny evaluation datasets in each benchmark's real on-disk format, and a one-hot fake encoder.

Images encode a class in their red channel (``red = 10 + 40 * class``), optionally with a left and
a right half of different classes, so a fake encoder can read the class back from pixels and the
exact expected metrics can be computed by hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fgsearch.model import TorchEncoder, load_model
from fgsearch.model.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

N_CLASSES = 8


def red(c: int) -> int:
    return 10 + 40 * c


def make_image(path: Path, left: int, right: int | None = None, size: tuple[int, int] = (48, 32)) -> Path:
    """A ``size`` (w, h) image whose left half has class ``left`` and right half ``right`` (default: same)."""
    right = left if right is None else right
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (red(left), 120, 80)
    arr[:, w // 2 :] = (red(right), 120, 80)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# ---- writers, one per format -----------------------------------------------------------------------
def write_karpathy(root: Path, dataset: str, classes: Sequence[int], captions: Sequence[Sequence[str]]) -> Path:
    """``dataset_<name>.json`` with all images in split test (plus one train image that must be ignored)."""
    images = []
    folder = "flickr30k-images" if dataset == "flickr30k" else "val2014"
    for i, (c, caps) in enumerate(zip(classes, captions, strict=True)):
        name = f"{i:04d}.jpg"
        make_image(root / folder / name, c)
        entry = {"filename": name, "split": "test", "sentences": [{"raw": t, "tokens": t.split()} for t in caps]}
        if dataset == "coco":
            entry["filepath"] = folder
        images.append(entry)
    images.insert(1, {"filename": "train.jpg", "split": "train", "sentences": [{"raw": "never read"}]})
    (root / f"dataset_{dataset}.json").write_text(json.dumps({"dataset": dataset, "images": images}))
    return root


def write_coco_captions(root: Path, classes: Sequence[int], captions: Sequence[Sequence[str]]) -> Path:
    """``annotations/captions_val2017.json`` + ``val2017/`` with ids given out of order."""
    ims, anns = [], []
    order = list(range(len(classes)))[::-1]  # the file lists images in reverse id order
    for i in order:
        name = f"{i:012d}.jpg"
        make_image(root / "val2017" / name, classes[i])
        ims.append({"id": 100 + i, "file_name": name, "width": 48, "height": 32})
        for t in captions[i]:
            anns.append({"id": len(anns), "image_id": 100 + i, "caption": t})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": ims, "annotations": anns}))
    return root


def write_dci(root: Path, classes: Sequence[int], captions: Sequence[str]) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i, (c, t) in enumerate(zip(classes, captions, strict=True)):
        make_image(root / "photos" / f"sa_{i}.jpg", c)
        rec = {"image": f"sa_{i}.jpg", "short_caption": "ignored", "extra_caption": t, "mask_data": {}}
        (root / "annotations" / f"sa_{i}.json").write_text(json.dumps(rec))
    return root


def write_sharegpt4v(root: Path, classes: Sequence[int], captions: Sequence[str], extra: int = 2) -> Path:
    """The share-captioner JSON; ``extra`` records past the first len(classes) stand for the rest."""
    recs = []
    for i, (c, t) in enumerate(zip(classes, captions, strict=True)):
        make_image(root / "coco" / "train2017" / f"{i:012d}.jpg", c)
        recs.append(
            {
                "id": str(i),
                "image": f"coco/train2017/{i:012d}.jpg",
                "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": t}],
            }
        )
    for k in range(extra):
        recs.append({"id": f"x{k}", "image": "coco/train2017/missing.jpg", "conversations": []})
    (root / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps(recs))
    return root


def write_urban1k(root: Path, classes: Sequence[int], captions: Sequence[str]) -> Path:
    (root / "caption").mkdir(parents=True, exist_ok=True)
    for i, (c, t) in enumerate(zip(classes, captions, strict=True)):
        make_image(root / "image" / f"{i + 1}.jpg", c)
        (root / "caption" / f"{i + 1}.txt").write_text(t + "\n")
    return root


def write_fgovd(
    root: Path, records: Sequence[tuple[int, int, str, list[str]]], name: str = "h_attributes_llava"
) -> Path:
    """``records``: (left class, right class, positive, negatives); the box is the LEFT half, in pixels."""
    lines = []
    for i, (left, right, pos, negs) in enumerate(records):
        make_image(root / "coco" / "val2017" / f"{i:012d}.jpg", left, right, size=(48, 32))
        lines.append(
            json.dumps(
                {
                    "ref_id": i,
                    "img_path": f"val2017/{i:012d}.jpg",
                    "bbox": [0, 0, 24, 32],
                    "category": "thing",
                    "pos_expression": [pos],
                    "neg_expression": negs,
                }
            )
        )
    (root / "fgovd").mkdir(parents=True, exist_ok=True)
    out = root / "fgovd" / f"{name}.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def write_coco_instances(root: Path, boxes: Sequence[tuple[int, int, list[tuple[list[float], int]]]]) -> Path:
    """``boxes``: (left class, right class, [(bbox xywh pixels, category id), ...]) per image."""
    cats = [{"id": 10 * (c + 1), "name": f"c{c}", "supercategory": "x"} for c in range(N_CLASSES)]
    ims, anns = [], []
    for i, (left, right, bxs) in enumerate(boxes):
        name = f"{i:012d}.jpg"
        make_image(root / "val2017" / name, left, right, size=(48, 32))
        ims.append({"id": i + 1, "file_name": name, "width": 48, "height": 32})
        for bbox, cat in bxs:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "bbox": bbox, "category_id": cat, "iscrowd": 0})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": ims, "annotations": anns, "categories": cats}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def write_fineshapes(root: Path, records: Sequence[tuple[int, int, str, list[tuple[str, list[str]]]]]) -> Path:
    """FineHARD held-out split.

    ``records``: (left class, right class, caption, [(left-half expr, negs), (right-half expr, negs)]).
    """
    recs = []
    for i, (left, right, cap, regions) in enumerate(records):
        make_image(root / "images" / f"{i:06d}.png", left, right)
        infos = []
        for (expr, negs), box in zip(regions, ([0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]), strict=False):
            infos.append(
                {
                    "bbox": box,
                    "short_expr": expr,
                    "long_expr": expr + " at length",
                    "flag_short_neg": int(bool(negs)),
                    "short_expr_negs": {str(k): t for k, t in enumerate(negs)},
                }
            )
        recs.append({"f_path": f"images/{i:06d}.png", "caption": cap, "short_caption": cap, "bbox_info": infos})
    (root / "jsonfiles").mkdir(parents=True, exist_ok=True)
    (root / "jsonfiles" / "heldout.json").write_text(json.dumps(recs))
    (root / "jsonfiles" / "train.json").write_text("[]")
    return root


# ---- a fake encoder whose features are known exactly ------------------------------------------------
def onehot(c: int) -> np.ndarray:
    v = np.zeros(N_CLASSES, np.float32)
    v[c] = 1.0
    return v


class OneHotEncoder(TorchEncoder):
    """The real Encoder plumbing (transform, batching) with one-hot features.

    A box maps to the one-hot of the class its mean red value encodes, an image to its LEFT half's
    class (the halves blur together where they meet after resizing); text ``"c<j>"``
    (anywhere in ``a photo of a c<j>.``) maps to the one-hot of j; any other text to zero.
    """

    def __init__(self, model_dir: Path) -> None:
        net, spec = load_model(model_dir)
        super().__init__(net, spec, device="cpu")
        self.calls: list[tuple[str, int]] = []

    @property
    def dim(self) -> int:
        return N_CLASSES

    def _cls(self, pix: np.ndarray) -> int:
        v = (float(pix[0].mean()) * OPENAI_CLIP_STD[0] + OPENAI_CLIP_MEAN[0]) * 255.0
        return round((v - 10) / 40)

    def encode_pixels(self, pixel_values, boxes=None, normalize=True):  # type: ignore[no-untyped-def]
        from fgsearch.model import EncodedImages

        pv = np.asarray(getattr(pixel_values, "pixels", pixel_values))  # an ImageBatch or [B, 3, H, W]
        self.calls.append(("images", len(pv)))
        image = np.stack([onehot(self._cls(p[:, :, : p.shape[2] // 2 - 2])) for p in pv])
        regions = []
        for k, p in enumerate(pv):
            rows = []
            _, h, w = p.shape
            for x1, y1, x2, y2 in np.asarray([] if boxes is None else boxes[k], np.float32).reshape(-1, 4):
                crop = p[
                    :, int(y1 * h) : max(int(y1 * h) + 1, int(y2 * h)), int(x1 * w) : max(int(x1 * w) + 1, int(x2 * w))
                ]
                rows.append(onehot(self._cls(crop)))
            regions.append(np.stack(rows) if rows else np.zeros((0, N_CLASSES), np.float32))
        return EncodedImages(image=image, regions=regions)

    def encode_texts(self, texts, path=None, batch_size=64, normalize=True):  # type: ignore[no-untyped-def]
        import re

        self.calls.append((f"texts:{path}", len(texts)))
        out = np.zeros((len(texts), N_CLASSES), np.float32)
        for i, t in enumerate(texts):
            m = re.search(r"\bc(\d)\b", t)
            if m:
                out[i] = onehot(int(m.group(1)))
        return out
