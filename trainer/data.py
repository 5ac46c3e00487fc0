"""Training data: a streaming FineHARD reader, a simple JSONL format, and batch collation.

FineHARD (``jsonfiles/*.json``, each ONE JSON array of records; images under an image root) is
read record by record without loading a whole file (``json.JSONDecoder.raw_decode`` over a
sliding buffer), so 40M boxes never sit in memory. A record that cannot be used (malformed JSON,
missing image, invalid box, empty text) is reported with its file and index, counted, and
skipped; a malformed stretch resynchronises at the next record. Files are never dropped silently.

Users' own data: JSONL, one object per line::

    {"image": "photos/a.jpg", "caption": "long caption", "short_caption": "optional",
     "regions": [{"box": [x1, y1, x2, y2], "caption": "a red mug", "negatives": ["a blue mug", ...]}]}

Paths are relative to the file's folder (or absolute); boxes are normalised x1, y1, x2, y2.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgsearch.errors import DataError

logger = logging.getLogger(__name__)

MAX_BOXES = 4  # per image, as in the reference trainer
FINEHARD_HELP = (
    "FineHARD is not on this machine. Get it with: `huggingface-cli download qihoo360/FineHARD --repo-type dataset "
    "--local-dir FineHARD` (annotations in jsonfiles/), then download the images with img2dataset from the URL lists "
    "as the FG-CLIP README describes (folders coyo_image_<i>/...). Point fgsearch at it with --data-root DIR or "
    "FGSEARCH_FINEHARD=DIR"
)


@dataclass
class Sample:
    """One training image with its captions and up to MAX_BOXES regions."""

    image: str
    caption: str
    short_caption: str
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    region_short: list[str] = field(default_factory=list)
    region_long: list[str] = field(default_factory=list)
    negatives: list[list[str]] = field(default_factory=list)  # per box: [] or hard negatives
    source: str = ""  # "file:index", for reports


@dataclass
class ReadStats:
    records: int = 0
    bad: int = 0
    reasons: list[str] = field(default_factory=list)

    def bad_record(self, where: str, reason: str) -> None:
        self.bad += 1
        if len(self.reasons) < 50:
            self.reasons.append(f"{where}: {reason}")
        logger.warning("skipping record %s: %s", where, reason)


def iter_json_array(path: Path, stats: ReadStats, chunk: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """Stream the elements of a top-level JSON array: (index, value). Malformed elements are
    reported and skipped (the reader resynchronises at the next ``}, {``)."""
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf = f.read(chunk)
        pos = 0
        while pos < len(buf) and buf[pos].isspace():
            pos += 1
        if not buf[pos : pos + 1] == "[":
            raise DataError(f"{path} does not hold a JSON array of records (FineHARD format)")
        pos += 1
        index = 0
        eof = False
        while True:
            while True:  # skip whitespace and commas, refilling the buffer as needed
                while pos < len(buf) and (buf[pos].isspace() or buf[pos] == ","):
                    pos += 1
                if pos < len(buf) or eof:
                    break
                more = f.read(chunk)
                eof = not more
                buf, pos = buf[pos:] + more, 0
            if pos >= len(buf) or buf[pos] == "]":
                return
            try:
                value, end = dec.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                if not eof:
                    more = f.read(chunk)
                    if more:
                        buf, pos = buf[pos:] + more, 0
                        continue
                    eof = True
                stats.bad_record(f"{path.name}:{index}", f"malformed JSON ({e.msg})")
                index += 1
                while True:  # skip to the end of the malformed element by bracket counting
                    end = _element_end(buf, pos)
                    if end >= 0 or eof:
                        break
                    more = f.read(chunk)
                    eof = not more
                    buf += more
                if end < 0:
                    return
                pos = end
                continue
            yield index, value
            index += 1
            pos = end
            if pos > chunk and not eof:  # keep the buffer bounded
                buf, pos = buf[pos:], 0


def _element_end(buf: str, start: int) -> int:
    """Index just past the JSON value starting at ``start`` (brackets counted outside strings),
    or -1 if the buffer ends first."""
    depth, in_str, esc = 0, False, False
    for i in range(start, len(buf)):
        c = buf[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def _box(raw: Any) -> tuple[float, float, float, float]:
    if not isinstance(raw, (list, tuple)) or len(raw) < 4:
        raise ValueError(f"bbox must be [x1, y1, x2, y2], got {raw!r}")
    x1, y1, x2, y2 = (float(v) for v in raw[:4])
    if not all(-1e-3 <= v <= 1 + 1e-3 for v in (x1, y1, x2, y2)):
        raise ValueError(f"bbox {raw!r} is not normalised to [0, 1]")
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"invalid bbox {raw!r} (need x1 < x2 and y1 < y2)")
    return (max(0.0, x1), max(0.0, y1), min(1.0, x2), min(1.0, y2))


def finehard_sample(rec: Any, image_root: Path, where: str, check_image: bool = True) -> Sample:
    """Validate one FineHARD record -> Sample (raises ValueError with the reason)."""
    if not isinstance(rec, dict):
        raise ValueError("record is not a JSON object")
    f_path = rec.get("f_path")
    if not f_path or not isinstance(f_path, str):
        raise ValueError("missing f_path")
    f_path = f_path.replace("grit-20m/data-12m/", "")
    image = str(image_root / f_path)
    if check_image and not os.path.exists(image):
        raise ValueError(f"image {image} is missing")
    caption = str(rec.get("caption") or "").strip()
    if not caption:
        raise ValueError("empty caption")
    short = str(rec.get("short_caption") or "").strip() or caption
    s = Sample(image=image, caption=caption, short_caption=short, source=where)
    for b in (rec.get("bbox_info") or [])[:MAX_BOXES]:
        box = _box(b.get("bbox"))
        se, le = str(b.get("short_expr") or "").strip(), str(b.get("long_expr") or "").strip()
        if not se and not le:
            raise ValueError("a box has neither short_expr nor long_expr")
        negs_raw = b.get("short_expr_negs") or {}
        negs = (
            [str(v) for _, v in sorted(negs_raw.items(), key=lambda kv: int(kv[0]))]
            if isinstance(negs_raw, dict)
            else [str(v) for v in negs_raw]
        )
        s.boxes.append(box)
        s.region_short.append(se or le)
        s.region_long.append(le or se)
        s.negatives.append(negs if b.get("flag_short_neg", 1) and se and negs else [])
    return s


def jsonl_sample(rec: Any, base: Path, where: str, check_image: bool = True) -> Sample:
    if not isinstance(rec, dict):
        raise ValueError("line is not a JSON object")
    img = rec.get("image")
    if not img:
        raise ValueError("missing image")
    image = str(img if os.path.isabs(img) else base / img)
    if check_image and not os.path.exists(image):
        raise ValueError(f"image {image} is missing")
    caption = str(rec.get("caption") or "").strip()
    if not caption:
        raise ValueError("empty caption")
    s = Sample(
        image=image, caption=caption, short_caption=str(rec.get("short_caption") or caption).strip(), source=where
    )
    for r in (rec.get("regions") or [])[:MAX_BOXES]:
        text = str(r.get("caption") or "").strip()
        if not text:
            raise ValueError("a region has an empty caption")
        s.boxes.append(_box(r.get("box")))
        s.region_short.append(text)
        s.region_long.append(text)
        s.negatives.append([str(t) for t in (r.get("negatives") or [])])
    return s


@dataclass(frozen=True)
class DataSource:
    """Resolved training data: its files, their format and the image root."""

    files: tuple[Path, ...]
    kind: str  # finehard | jsonl
    image_root: Path

    def iter_samples(self, stats: ReadStats, check_images: bool = True) -> Iterator[Sample]:
        for path in self.files:
            if self.kind == "jsonl":
                with open(path, encoding="utf-8") as f:
                    for i, line in enumerate(f):
                        if not line.strip():
                            continue
                        stats.records += 1
                        where = f"{path.name}:{i + 1}"
                        try:
                            yield jsonl_sample(json.loads(line), path.parent, where, check_images)
                        except (ValueError, TypeError, AttributeError) as e:
                            stats.bad_record(where, str(e))
            else:
                for i, rec in iter_json_array(path, stats):
                    stats.records += 1
                    where = f"{path.name}:{i}"
                    try:
                        yield finehard_sample(rec, self.image_root, where, check_images)
                    except (ValueError, TypeError, AttributeError) as e:
                        stats.bad_record(where, str(e))


def resolve_data(
    data: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None, split: str = "train"
) -> DataSource:
    """``finehard`` (found via --data-root or FGSEARCH_FINEHARD), or a directory / .json / .jsonl path.

    In a FineHARD-layout directory, ``jsonfiles/heldout.json`` is the held-out split and is not
    used for training (``split="heldout"`` selects only it)."""
    if str(data) == "finehard":
        root = data_root or os.environ.get("FGSEARCH_FINEHARD")
        if not root or not (Path(root) / "jsonfiles").is_dir():
            where = f" (looked in {root})" if root else ""
            raise DataError(FINEHARD_HELP + where)
        return resolve_data(root, None, split)
    p = Path(data).expanduser()
    if not p.exists():
        raise DataError(f"training data {p} does not exist; pass a FineHARD folder, a .json/.jsonl file, or finehard")
    if p.is_file():
        kind = "jsonl" if p.suffix == ".jsonl" else "finehard"
        return DataSource(
            (p,), kind, Path(data_root) if data_root else p.parent.parent if p.parent.name == "jsonfiles" else p.parent
        )
    js = p / "jsonfiles"
    if js.is_dir():
        files = sorted(f for f in js.glob("*.json") if (f.stem == "heldout") == (split == "heldout"))
        if not files:
            raise DataError(f"{js} holds no {'heldout.json' if split == 'heldout' else '*.json'} annotation files")
        return DataSource(tuple(files), "finehard", Path(data_root) if data_root else p)
    jsonl = sorted(p.glob("*.jsonl"))
    if jsonl:
        return DataSource(tuple(jsonl), "jsonl", p)
    raise DataError(f"{p} has neither jsonfiles/*.json (FineHARD) nor *.jsonl files")


class SampleStream:
    """A deterministic, resumable stream of samples for one rank.

    Epoch ``e`` visits the data in an order fixed by ``(seed, e)`` through a shuffle buffer; a
    position is ``(epoch, consumed)``, and resuming replays the same order and skips ``consumed``
    samples (without decoding their images)."""

    def __init__(self, source: DataSource, seed: int, rank: int = 0, world: int = 1, buffer: int = 2048) -> None:
        self.source, self.seed, self.rank, self.world, self.buffer = source, seed, rank, world, buffer
        self.stats = ReadStats()

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Sample]:
        rng = random.Random(self.seed * 7919 + epoch)
        buf: list[Sample] = []
        n = 0
        for i, s in enumerate(self._all()):
            if i % self.world != self.rank:
                continue
            buf.append(s)
            if len(buf) >= self.buffer:
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                out = buf.pop()
                if n >= skip:
                    yield out
                n += 1
        rng.shuffle(buf)
        for s in buf:
            if n >= skip:
                yield s
            n += 1

    def _all(self) -> Iterator[Sample]:
        yield from self.source.iter_samples(self.stats)


def collate(
    samples: Sequence[Sample],
    transform: Any,
    tokenizer: Any,
    short_prefix: str = "a photo of ",
    family: str = "fgclip",
    region_walk: str = "short",
) -> dict[str, Any]:
    """Load images and tokenize texts for one batch (padded boxes carry a mask).

    Images go through the model family's transform: FG-CLIP stacks ``[B, 3, H, W]``; FG-CLIP 2
    pads each image's own patches to the batch's longest, with ``pixel_mask`` and
    ``spatial_shapes``. Region texts and hard negatives use ``region_walk`` (FG-CLIP 2: box)."""
    import torch
    from PIL import Image

    from fgsearch.model import TextPath, to_rgb

    items = []
    for s in samples:
        with Image.open(s.image) as im:
            im.load()
            items.append(transform.item(to_rgb(im)))
    images = transform.collate(items)
    pv = torch.from_numpy(images.pixels)
    boxes = [torch.tensor(s.boxes, dtype=torch.float32).reshape(-1, 4) for s in samples]
    region_texts = [t for s in samples for t in (s.region_short if random.random() < 0.5 else s.region_long)]
    hard_pos, hard_negs, hard_index = [], [], []
    k = 0
    for s in samples:
        for j, negs in enumerate(s.negatives):
            if negs:
                hard_index.append(k + j)
                hard_pos.append(s.region_short[j])
                hard_negs.append(negs)
        k += len(s.boxes)
    n_neg = min((len(n) for n in hard_negs), default=0)
    hard_texts = [t for p, negs in zip(hard_pos, hard_negs, strict=True) for t in [p, *negs[:n_neg]]]
    walk = TextPath(region_walk)
    return {
        "family": family,
        "pixel_values": pv,
        "pixel_mask": None if images.mask is None else torch.from_numpy(images.mask),
        "spatial_shapes": torch.from_numpy(images.shapes),
        "boxes": boxes,
        "long_ids": tokenizer([s.caption for s in samples], TextPath.LONG, warn=False),
        "short_ids": tokenizer([short_prefix + s.short_caption for s in samples], TextPath.SHORT, warn=False),
        "region_walk": walk,
        "region_ids": tokenizer(region_texts, walk, warn=False) if region_texts else None,
        "hard_ids": tokenizer(hard_texts, walk, warn=False) if hard_texts else None,
        "hard_index": torch.tensor(hard_index, dtype=torch.long),
        "hard_k": n_neg + 1,
    }
