"""End-to-end indexing throughput vs the model's pure forward pass.

    python bench/bench_index.py [--n 96] [--batch 32] [--repeats 3] [--device cpu|cuda] [--workers 0]
    python bench/bench_index.py --huge 3 [--side 10000] [--workers 3]

``--huge N``: peak memory (resident set, ``getrusage``) of indexing N side x side PNGs (under the
100 MP default), each run in a fresh process with the demo model and ``--regions none``: with the
decode workers' shared pixel budget, without it (every worker decodes at once, the old
behaviour), one huge PNG alone, and N ordinary 1024x768 JPEGs (the normal run).

Generates N 1024x768 JPEGs (smooth gradients, shapes and noise, so JPEG decoding costs what a
photo costs), builds the fg-clip-base architecture with random weights, and prints:

* model-only images/s at --batch: global only, global+dense+16 fixed regions, and global+dense+
  auto proposals+regions (alternated, medians),
* end-to-end ``fgsearch index`` images/s with ``--regions none`` and ``--regions auto``
  (decode, preprocessing, proposals, storage and catalog included), each in a fresh library,
* the ratios end-to-end / pure forward (target >= 0.85) and the cost of auto vs none (target <= 10%):
  runs alternate none, auto, none, auto, ...; the headline is the median over adjacent pairs (this
  host's speed drifts by several percent between runs, a pair shares the drift), with the same in
  process CPU time and the ratio of the plain medians beside it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import runtime_peers  # bench/runtime_peers.py: --runtimes
import torch
from bench_data import make_photos  # bench/bench_data.py
from PIL import Image, ImageDraw


def forward_rates(enc: object, batch: int, size: int, repeats: int = 3) -> dict[str, float]:
    """Model-only images/s at ``batch``, the variants alternated ``repeats`` times (medians):
    global only (what --regions none runs), global+dense+16 fixed regions, and global+dense+auto
    proposals+regions (what --regions auto runs, no decoding or storage; on a GPU the proposals
    run there, in torch)."""
    from fgsearch.regions import RegionSettings, auto_boxes_batch

    settings = RegionSettings()
    pv = torch.randn(batch, 3, size, size)
    fixed = [np.tile(np.float32([[0.1, 0.1, 0.5, 0.5]]), (16, 1))] * batch
    variants = {
        "global": lambda: enc.encode_pixels(pv, None),  # type: ignore[attr-defined]
        "fixed": lambda: enc.encode_pixels(pv, fixed),  # type: ignore[attr-defined]
        "auto": lambda: enc.encode_proposed(  # type: ignore[attr-defined]
            pv, lambda d: [b for b, _ in auto_boxes_batch(d, settings)]
        ),
    }
    if getattr(enc, "on_accelerator", False):  # on a GPU the proposals run there (as the device pipeline's)
        from fgsearch.regions.auto_torch import auto_boxes_torch

        variants["auto"] = lambda: enc.encode_proposed_on_device(  # type: ignore[attr-defined]
            pv, lambda d: [b for b, _ in auto_boxes_torch(d, settings)]
        )
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(repeats):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: batch / float(np.median(v)) for k, v in times.items()}


def make_huge_pngs(folder: Path, n: int, side: int) -> None:
    """``n`` side x side RGB PNGs (gradients and a few shapes: small files, full decode cost)."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for i in range(n):
        arr = np.empty((side, side, 3), np.uint8)
        arr[..., 0] = ramp[None, :]
        arr[..., 1] = ramp[:, None]
        arr[..., 2] = (40 * i) % 256
        img = Image.fromarray(arr)
        ImageDraw.Draw(img).ellipse([side // 4, side // 4, side // 2 + 50 * i, side // 2], fill=(200, 30, 30))
        img.save(folder / f"huge_{i}.png", compress_level=1)
        del img, arr


def _rss_child(folder: str, budget: bool, workers: int) -> None:
    """Index ``folder`` in this (fresh) process and print its peak resident set in MiB."""
    import fgsearch.decode
    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings

    if not budget:  # the old behaviour: every worker decodes whatever it has at once

        @contextlib.contextmanager
        def unbounded(self: object) -> object:
            yield lambda n: None

        fgsearch.decode.PixelBudget.hold = unbounded  # type: ignore[assignment,method-assign]
    with tempfile.TemporaryDirectory() as lib_dir:
        with Library.open(lib_dir, model="demo", regions=RegionSettings(proposer="none"), device="cpu") as lib:
            rep = lib.index(folder, workers=workers)
        assert rep.indexed == len(list(Path(folder).iterdir())), rep.to_dict()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def huge_memory(n: int, side: int, workers: int, work: Path) -> None:
    huge, one, normal = work / f"huge-{n}x{side}", work / f"huge-1x{side}", work / f"photos-{n}"
    if not huge.exists():
        t0 = time.perf_counter()
        make_huge_pngs(huge, n, side)
        print(f"generated {n} PNGs {side}x{side} in {time.perf_counter() - t0:.1f}s")
    if not one.exists():
        one.mkdir()
        os.link(huge / "huge_0.png", one / "huge_0.png")  # a symbolic link would lead outside the root
    if not normal.exists():
        normal.mkdir()
        make_photos(normal, n)

    def peak(folder: Path, budget: bool) -> float:
        cmd = [sys.executable, __file__, "--rss-child", str(folder), "--workers", str(workers)]
        out = subprocess.run([*cmd, *([] if budget else ["--no-budget"])], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    rows = {
        f"{n} huge PNGs, pixel budget": peak(huge, True),
        f"{n} huge PNGs, no budget (old)": peak(huge, False),
        "1 huge PNG": peak(one, True),
        f"{n} ordinary 1024x768 JPEGs": peak(normal, True),
    }
    print(f"peak RSS, --workers {workers}, {side}x{side} = {side * side / 1e6:.0f} MP per huge image")
    for name, mib in rows.items():
        print(f"  {name:34s} {mib:8.0f} MiB")
    budget, old = rows[f"{n} huge PNGs, pixel budget"], rows[f"{n} huge PNGs, no budget (old)"]
    print(f"  budget / no budget: {budget / old:.2f}; budget / one huge image: {budget / rows['1 huge PNG']:.2f}")


def index_runs(
    work: Path, photos: Path, model_dir: Path, enc: Any, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]], Any]:
    """End-to-end ``fgsearch index`` runs, alternating --regions none and auto: wall and CPU seconds."""
    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings

    wall: dict[str, list[float]] = {"none": [], "auto": []}
    cpu: dict[str, list[float]] = {"none": [], "auto": []}
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
    return wall, cpu, rep


def print_summary(n_img: int, wall: dict[str, list[float]], cpu: dict[str, list[float]], fwd: dict[str, float]) -> None:
    """The medians, the model-only rates and the ratios against the targets."""
    fwd_none, fwd_regions = fwd["global"], fwd["auto"]
    e_none, e_auto = n_img / float(np.median(wall["none"])), n_img / float(np.median(wall["auto"]))
    pair_wall = [a / b - 1 for a, b in zip(wall["auto"], wall["none"], strict=True)]
    pair_cpu = [a / b - 1 for a, b in zip(cpu["auto"], cpu["none"], strict=True)]
    print(f"end-to-end median, none              {e_none:.2f} images/s")
    print(f"end-to-end median, auto              {e_auto:.2f} images/s")
    print(f"model only, global                   {fwd['global']:.2f} images/s")
    print(f"model only, global+dense+16 regions  {fwd['fixed']:.2f} images/s")
    print(
        f"model only, global+dense+auto        {fwd['auto']:.2f} images/s  ({100 * (fwd_none / fwd_regions - 1):+.1f}%)"
    )
    print(f"ratio end-to-end/model, none         {e_none / fwd_none:.2f}   (target >= 0.85)")
    print(f"ratio end-to-end/model, auto         {e_auto / fwd_regions:.2f}   (target >= 0.85)")
    print(f"ratio end-to-end auto/model global   {e_auto / fwd_none:.2f}   (regions counted as overhead too)")
    print(
        f"auto vs none, per pair of adjacent runs (wall): {', '.join(f'{100 * x:+.1f}%' for x in pair_wall)}; "
        f"median {100 * float(np.median(pair_wall)):+.1f}%  (target <= 10%)"
    )
    print(
        f"auto vs none, per pair (process CPU time): {', '.join(f'{100 * x:+.1f}%' for x in pair_cpu)}; "
        f"median {100 * float(np.median(pair_cpu)):+.1f}%"
    )
    print(f"auto vs none, ratio of the medians above: {100 * (e_none / e_auto - 1):+.1f}%")


def main() -> None:
    if "--rss-child" in sys.argv:
        i = sys.argv.index("--rss-child")
        workers = int(sys.argv[sys.argv.index("--workers") + 1])
        _rss_child(sys.argv[i + 1], "--no-budget" not in sys.argv, workers)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="alternating none/auto runs; medians are compared")
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep generated photos and model here")
    ap.add_argument("--huge", type=int, default=0, help="measure peak memory of N huge PNGs instead")
    ap.add_argument("--side", type=int, default=10000, help="with --huge: the PNGs' width and height")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, in a temporary folder (tests)")
    runtime_peers.add_args(ap)
    args = ap.parse_args()
    if args.runtimes:  # CPU runtimes side by side (bench/runtime_peers.py)
        runtime_peers.index(args)
        return
    if args.smoke:  # a tiny model, 4 photos, one run of each kind
        args.n, args.batch, args.repeats, args.device, args.keep = 4, 4, 1, "cpu", Path(tempfile.mkdtemp())
        atexit.register(shutil.rmtree, args.keep, ignore_errors=True)
    if args.huge:
        work = args.keep or Path(tempfile.mkdtemp(prefix="fgsearch-bench-"))
        huge_memory(args.huge, args.side, args.workers or 3, work)
        return

    from fgsearch.model import FGCLIP, FGCLIPConfig, TorchEncoder, load_model, save_model

    work = args.keep or Path(tempfile.mkdtemp(prefix="fgsearch-bench-"))
    photos, model_dir = work / f"photos-{args.n}", work / "model"
    if not photos.exists() or len(list(photos.glob("*.jpg"))) != args.n:
        photos.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_photos(photos, args.n)
        print(f"generated {args.n} JPEGs 1024x768 in {time.perf_counter() - t0:.1f}s")
    if not (model_dir / "model.safetensors").exists():
        torch.manual_seed(0)
        save_model(FGCLIP(FGCLIPConfig.tiny() if args.smoke else FGCLIPConfig.base()), model_dir)
    net, spec = load_model(model_dir)
    enc = TorchEncoder(net, spec, device=args.device)
    print(f"device={enc.device} threads={torch.get_num_threads()} batch={args.batch} n={args.n}")
    size = spec.image_size[0]
    fwd = forward_rates(enc, args.batch, size)
    wall, cpu, rep = index_runs(work, photos, model_dir, enc, args)
    print_summary(rep.indexed, wall, cpu, fwd)
    if enc.device.type == "cuda":  # the GPU pipeline: images/s and the split decode/forward/proposals/storage
        from bench_gpu import agreement, run_pipelines

        gpu_batch = args.batch if args.batch != 32 else 256
        runs = run_pipelines(photos, str(model_dir), work, ["serial", "device"], gpu_batch, args.workers, 2, "cuda")
        agreement(runs["serial"], runs["device"], "device vs serial (Pillow) decode")


if __name__ == "__main__":
    main()
