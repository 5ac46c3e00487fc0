"""End-to-end indexing throughput vs the model's pure forward pass.

    python bench/bench_index.py [--n 96] [--batch 32] [--repeats 3] [--device cpu|cuda] [--workers 0]

Generates N 1024x768 JPEGs (smooth gradients, shapes and noise, so JPEG decoding costs what a
photo costs), builds the fg-clip-base architecture with random weights, and prints:

* pure forward images/s at --batch (global only, and global+dense+regions),
* end-to-end ``fgsearch index`` images/s with ``--regions none`` and ``--regions auto``
  (decode, preprocessing, proposals, storage and catalog included), each in a fresh library,
* the ratios end-to-end / pure forward (target >= 0.85) and the cost of auto vs none (target <= 10%),
  from the medians of alternating runs, per pair of runs, and in process CPU time (this host's
  wall clock varies by several percent from run to run).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def make_photos(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:768, 0:1024].astype(np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx / 1024 * rng.uniform(0.2, 1) + yy / 768 * rng.uniform(0.2, 1))[..., None] / 2
        arr = c0 * (1 - t) + c1 * t + rng.normal(0, 8, (768, 1024, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, 900), rng.integers(0, 650)
            w, h = rng.integers(60, 300, 2)
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([x, y, x + w, y + h], fill=fill)
        img.save(folder / f"photo_{i:05d}.jpg", quality=90)


def pure_forward(model: torch.nn.Module, batch: int, size: int, regions: bool, repeats: int = 3) -> float:
    pv = torch.randn(batch, 3, size, size)
    boxes = [torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 16) for _ in range(batch)]
    with torch.inference_mode():
        fn = (lambda: model.encode_image_and_regions(pv, boxes)) if regions else (lambda: model.encode_image(pv))
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
    return batch * repeats / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="alternating none/auto runs; medians are compared")
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep generated photos and model here")
    args = ap.parse_args()

    from fgsearch.library import Library
    from fgsearch.model import FGCLIP, Encoder, FGCLIPConfig, load_model, save_model

    work = args.keep or Path(tempfile.mkdtemp(prefix="fgsearch-bench-"))
    photos, model_dir = work / "photos", work / "model"
    if not photos.exists() or len(list(photos.glob("*.jpg"))) < args.n:
        photos.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_photos(photos, args.n)
        print(f"generated {args.n} JPEGs 1024x768 in {time.perf_counter() - t0:.1f}s")
    if not (model_dir / "model.safetensors").exists():
        torch.manual_seed(0)
        save_model(FGCLIP(FGCLIPConfig.base()), model_dir)
    net, spec = load_model(model_dir)
    enc = Encoder(net, spec, device=args.device)
    print(f"device={enc.device} threads={torch.get_num_threads()} batch={args.batch} n={args.n}")
    size = spec.image_size[0]
    fwd_none = pure_forward(net, args.batch, size, regions=False) if enc.device.type == "cpu" else float("nan")
    fwd_regions = pure_forward(net, args.batch, size, regions=True) if enc.device.type == "cpu" else float("nan")
    wall: dict[str, list[float]] = {"none": [], "auto": []}
    cpu: dict[str, list[float]] = {"none": [], "auto": []}
    from fgsearch.regions import RegionSettings

    for r in range(args.repeats):  # alternate, so drift in machine speed hits both alike
        for proposer in ("none", "auto"):
            lib_dir = work / f"lib-{proposer}"
            with Library.open(
                lib_dir, model=str(model_dir), regions=RegionSettings(proposer=proposer), reindex=True, encoder=enc
            ) as lib:
                c0 = time.process_time()
                rep = lib.index(str(photos), batch_size=args.batch, workers=args.workers)
                c1 = time.process_time()
            wall[proposer].append(rep.seconds)
            cpu[proposer].append(c1 - c0)
            print(
                f"[{r + 1}/{args.repeats}] --regions {proposer}: indexed {rep.indexed} images ({rep.regions} regions) "
                f"in {rep.seconds:.1f}s = {rep.images_per_second:.2f} images/s, {c1 - c0:.1f} CPU-s"
            )
    n_img = rep.indexed
    e_none, e_auto = n_img / float(np.median(wall["none"])), n_img / float(np.median(wall["auto"]))
    pair_wall = [a / b - 1 for a, b in zip(wall["auto"], wall["none"], strict=True)]
    pair_cpu = [a / b - 1 for a, b in zip(cpu["auto"], cpu["none"], strict=True)]
    print(f"end-to-end median, none              {e_none:.2f} images/s")
    print(f"end-to-end median, auto              {e_auto:.2f} images/s")
    print(f"pure forward (global only)           {fwd_none:.2f} images/s")
    print(f"pure forward (global+dense+regions)  {fwd_regions:.2f} images/s")
    print(f"ratio end-to-end/forward, none       {e_none / fwd_none:.2f}   (target >= 0.85)")
    print(f"ratio end-to-end/forward, auto       {e_auto / fwd_regions:.2f}   (target >= 0.85)")
    print(f"auto vs none: {100 * (e_none / e_auto - 1):.1f}% slower  (target <= 10%; medians of wall time)")
    print(
        f"auto vs none per pair: wall {', '.join(f'{100 * x:+.1f}%' for x in pair_wall)}; "
        f"median {100 * float(np.median(pair_wall)):+.1f}%"
    )
    print(
        f"auto vs none CPU time (less sensitive to a busy host): {', '.join(f'{100 * x:+.1f}%' for x in pair_cpu)}; "
        f"median {100 * float(np.median(pair_cpu)):+.1f}%"
    )


if __name__ == "__main__":
    main()
