"""CPU runtimes side by side (helper of ``bench_model.py --runtimes`` and ``bench_index.py --runtimes``).

Peers, all in one process and one run, alternated round by round so machine drift hits all alike:
PyTorch fp32 (today's path), PyTorch bf16 (weights cast; only on a CPU with native bf16), OpenVINO
fp32 (``INFERENCE_PRECISION_HINT=f32``), OpenVINO bf16, OpenVINO int8 (NNCF static, calibrated on
--calibration generated photos). Every fast path's quality-gate figures against PyTorch fp32 come
first (the same gate the library runs; a refused path is marked and its speed is only shown).

Models: fg-clip-base and fg-clip2-base architectures with RANDOM weights (FG-CLIP 2 with a 4,000-id
stand-in vocabulary: a token lookup costs the same for any vocabulary size); ``--smoke``: the tiny
configs. Random weights say how fast each runtime is, not how accurate it is with trained weights:
trained weights have larger activations and outliers, which int8 clips; the gate measures them on
the user's own images before any path is used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def add_args(ap: argparse.ArgumentParser) -> None:
    if "--smoke" not in ap._option_string_actions:  # the scripts' own --smoke, where they have it
        ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, temporary folder")
    g = ap.add_argument_group("runtimes (CPU): fp32 vs bf16 vs OpenVINO fp32/bf16/int8")
    g.add_argument("--runtimes", action="store_true", help="compare the CPU runtimes instead")
    g.add_argument("--runtime-family", choices=("fgclip", "fgclip2", "both"), default="both")
    g.add_argument("--calibration", type=int, default=160, help="int8: calibration photos (generated)")
    g.add_argument("--runtime-repeats", type=int, default=5, help="alternated rounds; medians")
    g.add_argument("--runtime-images", type=int, default=48, help="bench_index: photos indexed per run")
    g.add_argument("--gate-images", type=int, default=32, help="photos the quality gate compares (the library: 32)")
    g.add_argument("--runtime-work", type=Path, default=None, help="keep models, exports and photos here")
    g.add_argument("--torch-only", action="store_true", help="only PyTorch fp32 vs bf16 (no export, no calibration)")


def scenes(n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Image.Image]:
    """Photo-like generated images: gradients, noise and a few shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx / w * rng.uniform(0.2, 1) + yy / h * rng.uniform(0.2, 1))[..., None] / 2
        img = Image.fromarray(np.clip(c0 * (1 - t) + c1 * t + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(5):
            x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            bw, bh = (int(v) for v in rng.integers(30, max(31, w // 3), 2))
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([x, y, x + bw, y + bh], fill=fill)
        out.append(img)
    return out


def model_dir(work: Path, family: str, smoke: bool) -> Path:
    """A random-weight checkpoint directory of the family's base (or tiny) architecture."""
    import torch

    out = work / f"{family}-{'tiny' if smoke else 'base'}"
    if (out / "model.safetensors").exists():
        return out
    if family == "fgclip":
        from fgsearch.model import FGCLIP, FGCLIPConfig, save_model

        torch.manual_seed(0)
        save_model(FGCLIP(FGCLIPConfig.tiny() if smoke else FGCLIPConfig.base()), out)
    else:
        from fgsearch.model import FGCLIP2Config
        from fgsearch.model.tiny import write_fgclip2

        cfg = FGCLIP2Config.tiny() if smoke else FGCLIP2Config.base().with_text(vocab_size=4000)
        write_fgclip2(out, cfg, weight_std=None if not smoke else 0.1)
    return out


def peers(model: str, calibration: list[Image.Image], torch_only: bool = False) -> dict[str, Any]:
    """Every path that runs on this CPU, built (export / calibration times printed)."""
    from fgsearch.model import load_encoder
    from fgsearch.model.cpu import cpu_summary, native_bf16
    from fgsearch.model.openvino import OpenVINOEncoder, ensure_int8, export

    print(f"cpu: {cpu_summary()}, {os.cpu_count()} cores")
    out: dict[str, Any] = {"torch fp32": load_encoder(model, device="cpu", precision="fp32")}
    if native_bf16():
        out["torch bf16"] = load_encoder(model, device="cpu", precision="bf16")
    if torch_only:
        return out
    t0 = time.perf_counter()
    export(model)
    t1 = time.perf_counter()
    ensure_int8(model, lambda: calibration)
    t2 = time.perf_counter()
    print(
        f"openvino: export {t1 - t0:.1f}s (0 if cached), int8 calibration on {len(calibration)} photos {t2 - t1:.1f}s"
    )
    out["openvino fp32"] = OpenVINOEncoder(model, "fp32")
    if native_bf16():
        out["openvino bf16"] = OpenVINOEncoder(model, "bf16")
    out["openvino int8"] = OpenVINOEncoder(model, "int8")
    return out


class _Memo:
    """The reference encoder with its image and text embeddings kept: every gate compares against
    the same fp32 vectors, so they are computed once (their time printed once) instead of per path."""

    def __init__(self, enc: Any) -> None:
        self._enc = enc
        self._cache: dict[Any, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._enc, name)

    def _get(self, key: Any, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def encode_images(self, images: Any, boxes: Any = None, **kw: Any) -> Any:
        key = ("img", tuple(id(im) for im in images), len(boxes or ()), tuple(sorted(kw.items())))
        return self._get(key, lambda: self._enc.encode_images(images, boxes, **kw))

    def encode_texts(self, texts: Any, **kw: Any) -> Any:
        key = ("txt", tuple(texts), tuple(sorted((k, str(v)) for k, v in kw.items())))
        return self._get(key, lambda: self._enc.encode_texts(texts, **kw))


def gates(encoders: dict[str, Any], images: list[Image.Image]) -> dict[str, bool]:
    """The library's quality gate for every fast path against PyTorch fp32; name -> passed.
    The reference's vectors are computed once (the first line, a self-check that must read 1.00000);
    each path's seconds are then its own embedding and the comparison. In the library the gate runs
    for one path, so a user waits for the reference's time plus that path's."""
    from fgsearch.library.fastpath import gate_captions
    from fgsearch.model.gate import run_gate

    ref = _Memo(encoders["torch fp32"])
    rep = run_gate("torch fp32", ref, ref, images, gate_captions())
    print(f"gate reference (self-check) {rep.line()} ({rep.seconds:.1f}s: the fp32 reference's embeddings, once)")
    passed = {"torch fp32": True}
    for name, enc in encoders.items():
        if name == "torch fp32":
            continue
        rep = run_gate(name, enc, ref, images, gate_captions())
        print(f"gate {rep.line()} ({rep.seconds:.1f}s)")
        passed[name] = rep.passed
    return passed


def alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per name, the names run in turn each round (after one warm-up each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _table(title: str, unit: str, rates: dict[str, float], passed: dict[str, bool]) -> None:
    base = rates["torch fp32"]
    print(f"  {title}")
    for k, r in rates.items():
        mark = "" if passed.get(k, True) else "   (gate REFUSED)"
        print(f"    {k:<14} {r:8.2f} {unit}  {r / base:5.2f}x{mark}")


def towers(args: argparse.Namespace) -> None:
    """bench_model.py --runtimes: images/s at batch 1 and 8 (global + dense + 16 regions), texts/s."""
    work = args.runtime_work or Path(tempfile.mkdtemp(prefix="fgsearch-bench-rt-"))
    os.environ.setdefault("FGSEARCH_CACHE", str(work / "cache"))
    smoke = args.smoke
    n_cal = 4 if smoke else args.calibration
    repeats = 1 if smoke else args.runtime_repeats
    families = ["fgclip", "fgclip2"] if args.runtime_family == "both" else [args.runtime_family]
    photos = scenes(max(n_cal, 16, 4 if smoke else args.gate_images), (160, 120) if smoke else (640, 480))
    rng = np.random.default_rng(0)
    words = "red mug left of an open silver laptop next to a potted cactus on a wooden desk".split()
    texts = [" ".join(rng.choice(words, 12)) for _ in range(8)]
    for family in families:
        model = str(model_dir(work, family, smoke))
        print(f"\n== {family} ({'tiny' if smoke else 'base'} architecture, random weights) ==")
        encs = peers(model, photos[:n_cal], args.torch_only)
        passed = gates(encs, photos[: 4 if smoke else args.gate_images])
        corners = np.sort(rng.uniform(0.05, 0.95, (16, 2, 2)).astype(np.float32), axis=1)  # [(x1, y1), (x2, y2)]
        box = corners.reshape(16, 4)
        for batch in (1, 8):
            imgs = photos[8 : 8 + batch] if len(photos) >= 8 + batch else photos[:batch]
            fns = {}
            for k, e in encs.items():
                pv, boxes = e.transform.prepare(imgs), [box] * len(imgs)
                fns[k] = lambda e=e, pv=pv, boxes=boxes: e.encode_pixels(pv, boxes)
            secs = alternate(fns, repeats)
            _table(f"images/s, batch {batch} (global + dense + 16 regions)", "images/s",
                   {k: batch / s for k, s in secs.items()}, passed)  # fmt: skip
        fns = {k: (lambda e=e: e.encode_texts(texts, path="short")) for k, e in encs.items()}
        secs = alternate(fns, repeats)
        _table("texts/s, batch 8 (short walk, 12 words)", "texts/s", {k: 8 / s for k, s in secs.items()}, passed)
        if family == "fgclip2" and "openvino fp32" in encs:
            naflex_shapes(encs["openvino fp32"], photos[8:16] if len(photos) >= 16 else photos[:8], repeats)


def naflex_shapes(enc: Any, imgs: list[Image.Image], repeats: int) -> None:
    """FG-CLIP 2 in OpenVINO: the one dynamic-shape graph vs a graph compiled for the batch's exact
    shape (what one compiled model per patch bucket would run), same inputs, fp32 hint; for the
    photos' bucket (``imgs`` as given) and for small images (the same scenes at 1/4 of the side,
    a smaller bucket), with each static graph's compile time (what a bucket costs once)."""
    import openvino as ov

    dynamic = enc._graph("image")
    patch = enc.transform.patch_size
    small = [im.resize((max(patch, im.width // 4), max(patch, im.height // 4))) for im in imgs]
    for label, group in (("photos", imgs), ("small images", small)):
        inputs = enc.graph_inputs(enc.transform.prepare(group))
        model = ov.Core().read_model(enc.folder / "image.xml")
        model.reshape({p.get_any_name(): list(x.shape) for p, x in zip(model.inputs, inputs, strict=True)})
        t0 = time.perf_counter()
        static = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        compile_s = time.perf_counter() - t0
        fns = {"dynamic": lambda x=inputs: dynamic(x), "static": lambda g=static, x=inputs: g(x)}
        secs = alternate(fns, repeats)
        b, m = inputs[0].shape[:2]
        w, h = group[0].size
        bucket = enc.transform.budget(group[0])  # the model's patch budget for this size
        print(f"  FG-CLIP 2 NaFlex in OpenVINO fp32, {label} {w}x{h} (bucket {bucket}), batch {b}, {m} patches:")
        print(f"    one dynamic-shape graph   {b / secs['dynamic']:8.2f} images/s")
        gain = secs["dynamic"] / secs["static"]
        rate = b / secs["static"]
        print(f"    graph compiled per shape  {rate:8.2f} images/s  ({gain:.2f}x; compiled in {compile_s:.1f}s)")


def index(args: argparse.Namespace) -> None:
    """bench_index.py --runtimes: ``fgsearch index`` end to end (decode, regions auto, storage) per path."""
    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings

    work = args.runtime_work or Path(tempfile.mkdtemp(prefix="fgsearch-bench-rt-"))
    os.environ.setdefault("FGSEARCH_CACHE", str(work / "cache"))
    smoke = args.smoke
    n = 4 if smoke else args.runtime_images
    repeats = 1 if smoke else max(1, args.runtime_repeats // 2)
    families = ["fgclip", "fgclip2"] if args.runtime_family == "both" else [args.runtime_family]
    photos = work / f"photos-{n}"
    if not photos.exists():
        photos.mkdir(parents=True)
        for i, img in enumerate(scenes(n, (256, 192) if smoke else (1024, 768), seed=5)):
            img.save(photos / f"photo_{i:05d}.jpg", quality=90)
    calibration = scenes(4 if smoke else max(args.calibration, args.gate_images), (160, 120) if smoke else (640, 480))
    for family in families:
        model = str(model_dir(work, family, smoke))
        print(f"\n== index end to end: {family} ({'tiny' if smoke else 'base'}, random weights), {n} JPEGs ==")
        encs = peers(model, calibration[: 4 if smoke else args.calibration], args.torch_only)
        passed = gates(encs, calibration[: 4 if smoke else args.gate_images])
        wall: dict[str, list[float]] = {k: [] for k in encs}
        for r in range(repeats):
            for k, enc in encs.items():
                lib_dir = work / f"lib-{family}-{k.replace(' ', '-')}"
                with Library.open(
                    lib_dir, model=model, regions=RegionSettings(proposer="auto"), reindex=True, encoder=enc
                ) as lib:
                    rep = lib.index(str(photos), batch_size=8)
                wall[k].append(rep.seconds)
                print(f"  [{r + 1}/{repeats}] {k:<14} {rep.indexed} images, {rep.regions} regions, {rep.seconds:.1f}s")
        _table("index end to end (regions auto, batch 8)", "images/s",
               {k: n / statistics.median(v) for k, v in wall.items()}, passed)  # fmt: skip
        fastest = max((k for k in encs if passed[k]), key=lambda k: n / statistics.median(wall[k]))

        def pairs(k: str, wall: dict[str, list[float]] = wall) -> str:  # fp32 / k in each round (shared drift)
            return ", ".join(f"{a / b:.2f}x" for a, b in zip(wall["torch fp32"], wall[k], strict=True))

        ratio = statistics.median(wall["torch fp32"]) / statistics.median(wall[fastest])
        print(
            f"  fastest path that passes the gate: {fastest}, {ratio:.2f}x torch fp32 (target >= 2.5x); "
            f"per round: {pairs(fastest)}"
        )
        if "torch bf16" in wall:
            bf = statistics.median(wall["torch fp32"]) / statistics.median(wall["torch bf16"])
            print(f"  torch bf16 alone: {bf:.2f}x torch fp32 (target >= 1.4x); per round: {pairs('torch bf16')}")
