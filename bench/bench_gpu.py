"""The index pipelines side by side: images/s and where the time goes (decode / forward / proposals / storage).

    python bench/bench_gpu.py [--device cuda] [--n 512] [--batch 256] [--model fg-clip-base|demo] [--regions auto]
    python bench/bench_gpu.py --smoke            # seconds, on the CPU, demo model
    python bench/bench_index.py --device cuda    # runs this after its own figures

Generates N 1024x768 JPEGs (bench_index's photos), builds fg-clip-base with random weights (or the
demo model), and indexes them once per pipeline (``serial``, ``overlap``, ``device``; alternated,
``--repeats`` rounds) into fresh libraries. Prints per run: images/s end to end, and each stage's
busy seconds as a share of the wall time (stages run in parallel threads, so shares add up to more
than 100 %): ``prepare`` (read, hash, header or CPU decode; summed over the worker threads),
``device_decode``/``collate`` (the stage thread), ``forward`` (the model), ``proposals`` (auto
boxes from the dense maps: torch on the model's device in the ``device`` pipeline and wherever
the model runs on a GPU, numpy on the host otherwise; each run says which), ``storage`` (the
committer thread) and ``commit_wait`` (the embed thread, which drives the device, waiting for
room in the commit queue: the device stalled by commits). A summary gives each pipeline's median
share of proposals and of commit waits. Then the agreement of the ``device`` run's vectors with
the ``serial`` (Pillow) run's: cosine of the global vectors and top-10 overlap of text queries.
Last, the proposals alone on one batch of the model's own dense maps: numpy on the host (the
maps copied there first) vs torch on the model's device, milliseconds per batch, and whether
their boxes are the same. On a CPU, ``device`` decodes with torchvision's libjpeg path and the
torch proposals run on the CPU: that measures the code, not a GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("prepare", "device_decode", "collate", "forward", "proposals", "storage", "commit_wait")
QUERIES = ("a red circle", "a blue square on grey", "two shapes", "a green ellipse", "an orange rectangle")


def run_pipelines(
    photos: Path, model: str, work: Path, pipelines: list[str], batch: int, workers: int, repeats: int, device: str
) -> dict[str, Any]:
    """Index ``photos`` once per pipeline and round; returns the last run's vectors per pipeline."""
    from fgsearch.library import Library
    from fgsearch.model import load_encoder
    from fgsearch.regions import RegionSettings

    enc = load_encoder(model, device=device)
    print(f"device={enc.device_name} precision={enc.precision} batch={batch} model={model}")
    out: dict[str, Any] = {}
    rates: dict[str, list[float]] = {p: [] for p in pipelines}
    shares: dict[str, dict[str, list[float]]] = {p: {"proposals": [], "commit_wait": []} for p in pipelines}
    with Library.open(work / "lib-warm-up", model=model, reindex=True, encoder=enc) as lib:
        lib.index(str(photos), batch_size=batch, workers=workers, pipeline=pipelines[0])  # first-use costs
    for r in range(repeats):
        for pipeline in pipelines:
            lib_dir = work / f"lib-{pipeline}"
            regions = RegionSettings(proposer="auto")
            with Library.open(lib_dir, model=model, regions=regions, reindex=True, encoder=enc) as lib:
                rep = lib.index(str(photos), batch_size=batch, workers=workers, pipeline=pipeline)
                vec = _vectors(lib)
                top = {q: _top(lib, q) for q in QUERIES}
            rates[pipeline].append(rep.images_per_second)
            for k in shares[pipeline]:
                shares[pipeline][k].append(100 * rep.stage_seconds.get(k, 0.0) / rep.seconds)
            split = "  ".join(
                f"{k} {100 * rep.stage_seconds[k] / rep.seconds:.0f}%" for k in STAGES if k in rep.stage_seconds
            )
            print(
                f"[{r + 1}/{repeats}] {pipeline:8s} {rep.indexed} images, {rep.regions} regions in {rep.seconds:.2f}s "
                f"= {rep.images_per_second:.1f} images/s  {split or '(serial: no split)'}"
            )
            out[pipeline] = (vec, top)
    print("median images/s: " + ", ".join(f"{p} {float(np.median(v)):.1f}" for p, v in rates.items()))
    for p in pipelines:
        if p == "serial":
            continue
        where = f"torch on {enc.device_name}" if p == "device" or enc.on_accelerator else "numpy on the host"
        print(
            f"{p}: proposals ({where}) {float(np.median(shares[p]['proposals'])):.1f}% of wall time; "
            f"device loop waiting on the commit queue {float(np.median(shares[p]['commit_wait'])):.1f}% of wall time"
        )
    return out


def proposal_times(photos: Path, model: str, batch: int, device: str, repeats: int = 3) -> None:
    """The ``auto`` proposals alone on one batch of the model's dense maps: numpy on the host
    (maps copied there first, as the host path does) vs torch where the maps are."""
    import torch

    from fgsearch.decode import load_image
    from fgsearch.model import load_encoder
    from fgsearch.regions import RegionSettings, auto_boxes_batch
    from fgsearch.regions.auto_torch import auto_boxes_torch

    enc = load_encoder(model, device=device)
    batch = batch or (256 if enc.on_accelerator else 32)
    files = sorted(photos.glob("*.jpg"))
    images = [load_image(files[i % len(files)].read_bytes()).image for i in range(batch)]
    maps: list[Any] = []

    def capture(dense: list[Any]) -> list[Any]:  # keep the maps (on the device), propose nothing
        maps.extend(dense)
        return [m.new_zeros((0, 4)) for m in dense]

    enc.encode_proposed_on_device(enc.preprocess(images), capture)
    settings = RegionSettings()

    def sync() -> None:
        if enc.on_accelerator:
            torch.cuda.synchronize()

    def on_host() -> list[np.ndarray]:
        return [b for b, _ in auto_boxes_batch([m.cpu().numpy() for m in maps], settings)]

    def on_device() -> list[np.ndarray]:
        got = [b for b, _ in auto_boxes_torch(maps, settings)]
        sync()
        return [b.cpu().numpy() for b in got]

    times: dict[str, list[float]] = {"numpy on the host": [], f"torch on {enc.device_name}": []}
    results = {}
    for fn in (on_host, on_device):
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in zip(times, (on_host, on_device), strict=True):
            sync()
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    h, w, d = maps[0].shape
    same = all(np.array_equal(a, b) for a, b in zip(*results.values(), strict=True))
    print(
        f"proposals alone, {batch} dense maps {h}x{w}x{d}: "
        + ", ".join(f"{k} {1000 * float(np.median(v)):.1f} ms" for k, v in times.items())
        + f"; same boxes: {same}"
    )
    ops = count_ops(lambda: auto_boxes_torch(maps, settings))
    print(
        f"torch proposals per batch: {ops} dispatched tensor operations (views included; a GPU launches fewer kernels)"
    )


def count_ops(fn: Any) -> int:
    """How many tensor operations ``fn`` dispatches (views included): an upper bound on the
    kernels it launches on a GPU, where each launch costs a few microseconds of host time."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def _vectors(lib: Any) -> dict[str, np.ndarray]:
    """Global vectors by content hash (ids follow commit order, which differs between pipelines)."""
    idx, cat = lib.store.global_index, lib.store.catalog
    ids = np.asarray(sorted(int(i) for i in idx.ids()), np.int64)
    return {str(cat.content_sha256(int(i))): v for i, v in zip(ids, idx.get(ids), strict=True)}


def _top(lib: Any, text: str) -> list[str]:
    from fgsearch.search import SearchQuery

    return [h.path for h in lib.search(query=SearchQuery(text=text, k=10, by="image"))]


def agreement(a: tuple[dict[str, np.ndarray], dict[str, list[str]]], b: tuple[Any, Any], label: str) -> None:
    """Cosine of the global vectors of the same images, and text top-10 overlap."""
    (va, ta), (vb, tb) = a, b
    cos = [float(np.dot(va[k], vb[k])) for k in sorted(set(va) & set(vb))]
    overlap = [len(set(ta[q]) & set(tb[q])) / max(1, len(ta[q])) for q in ta]
    if cos:
        print(f"{label}: global cosine min {min(cos):.5f} mean {float(np.mean(cos)):.5f} over {len(cos)} images")
    print(f"{label}: text top-10 overlap mean {float(np.mean(overlap)):.3f} over {len(overlap)} queries")


def main(argv: list[str] | None = None) -> None:
    from bench_data import make_photos

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=0, help="0: 256 on a GPU, 32 on a CPU")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="fg-clip-base-random", help="a model name or folder; the default is random")
    ap.add_argument("--pipelines", default="serial,overlap,device")
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="8 images, demo model, CPU, one round")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.model, args.device, args.repeats, args.batch = 8, "demo", "cpu", 1, 4
    with tempfile.TemporaryDirectory(prefix="fgsearch-bench-gpu-") as tmp:
        work = args.keep or Path(tmp)
        photos = work / f"photos-{args.n}"
        if not photos.exists() or len(list(photos.glob("*.jpg"))) != args.n:
            photos.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            make_photos(photos, args.n)
            print(f"generated {args.n} JPEGs 1024x768 in {time.perf_counter() - t0:.1f}s")
        model = args.model
        if model == "fg-clip-base-random":
            model = str(random_base(work / "model"))
        runs = run_pipelines(
            photos, model, work, args.pipelines.split(","), args.batch, args.workers, args.repeats, args.device
        )
        if "serial" in runs and "device" in runs:
            agreement(runs["serial"], runs["device"], "device vs serial (Pillow) decode")
        proposal_times(photos, model, args.batch, args.device)


def random_base(folder: Path) -> Path:
    """fg-clip-base's architecture with random weights (seed 0), saved once."""
    if not (folder / "model.safetensors").exists():
        import torch

        from fgsearch.model import FGCLIP, FGCLIPConfig, save_model

        torch.manual_seed(0)
        save_model(FGCLIP(FGCLIPConfig.base()), folder)
    return folder


if __name__ == "__main__":
    main()
