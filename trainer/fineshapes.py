"""FineShapes: a synthetic fine-grained dataset in FineHARD format, made on the spot.

Each image holds 2-4 non-overlapping shapes (circle, square, triangle, star, diamond) of varied
colour, size (small/large), texture (solid, striped, dotted) and position. Each record carries a
long caption describing every object and the left/right relations between them, a short caption,
one box per object with a short expression (``a large red circle on the left``) and a long one
(with texture and neighbours), and 10 hard negatives per box, each changing ONE attribute of the
short expression: colour, shape, size or position word.

Layout (what ``fgsearch train --data DIR`` and the FineHARD reader expect)::

    OUT/jsonfiles/train.json      JSON array of records (FineHARD keys)
    OUT/jsonfiles/heldout.json    held-out split, same format (not read for training)
    OUT/images/000000.png ...
    OUT/objects.json              ground-truth objects per image (for tests and demos)
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from fgsearch.errors import InputError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
SIZES = {"small": (0.16, 0.22), "large": (0.32, 0.42)}  # side as a fraction of the image's shorter side
TEXTURES = ("solid", "striped", "dotted")
POSITIONS = ("left", "right", "top", "bottom", "center")
IMAGE_SIZES = ((160, 120), (128, 128), (120, 160), (144, 112))


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    texture: str
    box: tuple[float, float, float, float]  # normalised x1, y1, x2, y2

    @property
    def position(self) -> str:
        """The position word for the object's centre (dominant offset from the image centre)."""
        cx, cy = (self.box[0] + self.box[2]) / 2 - 0.5, (self.box[1] + self.box[3]) / 2 - 0.5
        if max(abs(cx), abs(cy)) < 0.12:
            return "center"
        if abs(cx) >= abs(cy):
            return "left" if cx < 0 else "right"
        return "top" if cy < 0 else "bottom"

    def short_expr(self, **change: str) -> str:
        a = {"size": self.size, "colour": self.colour, "shape": self.shape, "position": self.position, **change}
        where = "in the center" if a["position"] == "center" else f"on the {a['position']}"
        return f"a {a['size']} {a['colour']} {a['shape']} {where}"

    def long_expr(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} with a {self.texture} fill, {self._where()} of the picture"

    def _where(self) -> str:
        return "in the center" if self.position == "center" else f"on the {self.position} side"

    def negatives(self, rng: random.Random, n: int = 10) -> list[str]:
        """``n`` expressions that differ from the short expression in exactly one attribute."""
        options = [self.short_expr(colour=c) for c in COLOURS if c != self.colour]
        options += [self.short_expr(shape=s) for s in SHAPES if s != self.shape]
        options += [self.short_expr(size=s) for s in SIZES if s != self.size]
        options += [self.short_expr(position=p) for p in POSITIONS if p != self.position]
        rng.shuffle(options)
        return options[:n]


def _draw(img: Image.Image, obj: ShapeObject, rng: random.Random) -> None:
    w, h = img.size
    x1, y1, x2, y2 = obj.box[0] * w, obj.box[1] * h, obj.box[2] * w, obj.box[3] * h
    colour = COLOURS[obj.colour]
    mask = Image.new("L", img.size, 0)
    d = ImageDraw.Draw(mask)
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    if obj.shape == "circle":
        d.ellipse([x1, y1, x2, y2], fill=255)
    elif obj.shape == "square":
        d.rectangle([x1, y1, x2, y2], fill=255)
    elif obj.shape == "triangle":
        d.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=255)
    elif obj.shape == "diamond":
        d.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=255)
    else:  # star
        pts = []
        for k in range(10):
            ang = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(ang), cy + rr * math.sin(ang)))
        d.polygon(pts, fill=255)
    fill = Image.new("RGB", img.size, colour)
    if obj.texture != "solid":
        pat = ImageDraw.Draw(fill)
        light = tuple(min(255, c + 90) for c in colour)
        step = max(4, int((x2 - x1) / 5))
        if obj.texture == "striped":
            for x in range(int(x1) - int(y2 - y1), int(x2) + 1, step):
                pat.line([(x, y2), (x + (y2 - y1), y1)], fill=light, width=max(1, step // 3))
        else:
            for yy in range(int(y1) + step // 2, int(y2), step):
                for xx in range(int(x1) + step // 2, int(x2), step):
                    pat.ellipse([xx - step // 5, yy - step // 5, xx + step // 5, yy + step // 5], fill=light)
    img.paste(fill, (0, 0), mask)
    del rng


def _place(rng: random.Random, n: int, aspect: float) -> list[tuple[str, tuple[float, float, float, float]]]:
    placed: list[tuple[str, tuple[float, float, float, float]]] = []
    tries = 0
    while len(placed) < n and tries < 500:
        tries += 1
        size = rng.choice(list(SIZES))
        side = rng.uniform(*SIZES[size])  # of the shorter image side
        sw, sh = (side / aspect, side) if aspect >= 1 else (side, side * aspect)  # normalised width, height
        x1, y1 = rng.uniform(0.02, 0.98 - sw), rng.uniform(0.02, 0.98 - sh)
        box = (x1, y1, x1 + sw, y1 + sh)
        if all(
            box[2] + 0.03 < b[0] or b[2] + 0.03 < box[0] or box[3] + 0.03 < b[1] or b[3] + 0.03 < box[1]
            for _, b in placed
        ):
            placed.append((size, box))
    return placed


def make_record(index: int, seed: int, image_dir: Path, rel_prefix: str) -> tuple[dict[str, Any], list[ShapeObject]]:
    """Draw one image and return its FineHARD record and its objects."""
    rng = random.Random(seed * 1_000_003 + index)
    w, h = rng.choice(IMAGE_SIZES)
    bg = tuple(rng.randint(200, 240) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    objs: list[ShapeObject] = []
    used: set[tuple[str, str]] = set()
    for size, box in _place(rng, rng.randint(2, 4), w / h):
        while True:  # distinct (colour, shape) pairs keep every expression unambiguous
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if (colour, shape) not in used:
                used.add((colour, shape))
                break
        x1, y1, x2, y2 = (round(v, 4) for v in box)
        objs.append(ShapeObject(shape, colour, size, rng.choice(TEXTURES), (x1, y1, x2, y2)))
    for o in objs:
        _draw(img, o, rng)
    name = f"{index:06d}.png"
    img.save(image_dir / name)
    by_x = sorted(objs, key=lambda o: o.box[0] + o.box[2])
    desc = ", ".join(f"{o.size} {o.colour} {o.texture} {o.shape} {o._where()}" for o in by_x)
    rel = " ".join(
        f"The {a.colour} {a.shape} is to the left of the {b.colour} {b.shape}." for a, b in itertools.pairwise(by_x)
    )
    caption = f"A picture of {len(objs)} shapes on a plain light background: {desc}. {rel}".strip()
    short = "a picture of " + " and ".join(f"a {o.colour} {o.shape}" for o in by_x)
    bbox_info = []
    for o in objs:
        negs = o.negatives(rng)
        bbox_info.append(
            {
                "bbox": list(o.box),
                "short_expr": o.short_expr(),
                "long_expr": o.long_expr(),
                "flag_short_neg": 1,
                "short_expr_negs": {str(k): t for k, t in enumerate(negs)},
            }
        )
    rec = {"f_path": f"{rel_prefix}{name}", "caption": caption, "short_caption": short, "bbox_info": bbox_info}
    return rec, objs


def make_fineshapes(
    out_dir: str | os.PathLike[str], n: int = 2000, seed: int = 0, heldout: float = 0.1, overwrite: bool = False
) -> Path:
    """Write ``n`` images (a ``heldout`` fraction in a separate split) in FineHARD layout; see the module doc.

    ``out_dir`` must be new or empty; with ``overwrite``, an earlier FineShapes output there is removed
    first (only files this function writes: a folder holding anything else is refused)."""
    if n < 1:
        raise InputError("{n} must be at least 1, got {got}", field="n", got=n)
    if not 0 <= heldout < 1:
        raise InputError("{heldout} is a fraction in [0, 1), got {got}", field="heldout", got=heldout)
    out = Path(out_dir)
    _clear_output(out, overwrite)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "jsonfiles").mkdir(exist_ok=True)
    n_held = max(1, round(n * heldout)) if n > 1 and heldout > 0 else 0
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    objects: dict[str, list[dict[str, Any]]] = {}
    for i in range(n):
        rec, objs = make_record(i, seed, out / "images", "images/")
        splits["heldout" if i >= n - n_held else "train"].append(rec)
        objects[rec["f_path"]] = [
            {
                "shape": o.shape,
                "colour": o.colour,
                "size": o.size,
                "texture": o.texture,
                "position": o.position,
                "box": list(o.box),
                "short_expr": o.short_expr(),
            }
            for o in objs
        ]
    for name, recs in splits.items():
        tmp = out / "jsonfiles" / f"{name}.json.tmp"
        tmp.write_text(json.dumps(recs, indent=1))
        os.replace(tmp, out / "jsonfiles" / f"{name}.json")
    (out / "objects.json").write_text(json.dumps(objects, indent=1))
    return out


EXAMPLE_QUERIES = (
    "a large red circle",
    "a small blue square on the right",
    "a yellow star with a striped fill",
    "a green triangle to the left of a purple diamond",
)


_OWN_FILE = re.compile(r"(images/\d+\.png|jsonfiles/(train|heldout)\.json(\.tmp)?|objects\.json|images|jsonfiles)")


def _clear_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out``, or with ``overwrite`` remove an earlier FineShapes output from it."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder for the dataset")
    entries = sorted(out.rglob("*")) if out.is_dir() else []
    if not entries:
        return
    if not overwrite:
        raise InputError(
            "{out} is not empty; give a new or empty folder, or {overwrite} to replace a dataset there",
            field="overwrite",
            out=out,
        )
    foreign = [p for p in entries if not _OWN_FILE.fullmatch(p.relative_to(out).as_posix())]
    if foreign:
        raise InputError(
            "{out} holds files make-data did not write ({first}); "
            "give a new or empty folder ({overwrite} only replaces a FineShapes dataset)",
            field="overwrite",
            out=out,
            first=foreign[0].relative_to(out),
        )
    for p in reversed(entries):  # files before the folders that hold them
        p.rmdir() if p.is_dir() else p.unlink()
