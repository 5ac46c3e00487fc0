"""Model throughput: fgsearch's FG-CLIP vs open_clip's ViT-B-16, and fgsearch's FG-CLIP 2 vs
open_clip's SigLIP 2 ViT-B-16-256, under the same conditions.

    python bench/bench_model.py [--device cpu|cuda] [--repeats 5] [--batch 32] [--family fgclip|fgclip2|both]

FG-CLIP 2 (``--family fgclip2``): fg-clip2-base architecture (NaFlex ViT-B/16, width 768, vocab
256000), random weights, against open_clip's ``ViT-B-16-SigLIP2-256`` (the same towers at a fixed
256x256 input = 256 patches, 64-token text pooled at the last position). Rows: images/s at 256
patches (global; global + dense + 16 regions), images/s for a batch of mixed aspect ratios (each
image its own shape within the 256 budget, padded with masks; compare per patch), texts/s for
20-word queries on the short walk (64 tokens, both sides the same ids), and the index pipeline end
to end on mixed-aspect images against the model alone on the same images (``--index-images``).

Random weights, fg-clip-base architecture (ViT-B/16, 224 px, 512-d). Prints images/s at batch 1
and at --batch (global vector only, and global + dense + 16 regions from one pass), texts/s on the
short (77) and long (248) paths, and the ratio of each to open_clip's ViT-B-16 forward on the same
inputs (>= 1.0 means we are faster). Median of --repeats runs after a warm-up; each pair of
measurements alternates so machine noise hits both sides alike. The long-path row compares 150-word
texts (which open_clip cannot read) against open_clip's 77-token forward: it shows the price of
long text, not a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch


def timed_pair(fa, fb, repeats: int) -> tuple[float, float]:
    """Median seconds of fa and fb, run alternately so machine noise hits both alike."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        for fn, acc in ((fa, ta), (fb, tb)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--family", choices=("fgclip", "fgclip2", "both"), default="both")
    ap.add_argument("--index-images", type=int, default=32, help="FG-CLIP 2 index e2e: images (0: skip)")
    ap.add_argument("--index-only", action="store_true", help="FG-CLIP 2: only the index e2e measurement")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, in a temporary folder (tests)")
    args = ap.parse_args()
    if args.smoke:  # the architectures are base-sized: one family, batch 1, one repeat
        args.repeats, args.batch, args.index_images, args.family = 1, 1, 0, "fgclip"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.family in ("fgclip", "both"):
        bench_fgclip(args)
    if args.family in ("fgclip2", "both"):
        bench_fgclip2(args)


def print_rows(rows: list[tuple[str, float, float]], ours: str = "fgsearch", theirs: str = "open_clip") -> None:
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {ours:>10}  {theirs:>10}  {'ratio':>6}")
    for name, a, b in rows:
        print(f"{name:<{w}}  {a:>10.1f}  {b:>10.1f}  {a / b:>6.2f}")


def bench_fgclip(args: argparse.Namespace) -> None:
    import open_clip

    from fgsearch.model import FGCLIP, FGCLIPConfig, TextPath, Tokenizer

    dev = torch.device(args.device)
    amp = dev.type == "cuda"
    torch.manual_seed(0)
    ours = FGCLIP(FGCLIPConfig.base()).eval().to(dev)
    ref = open_clip.create_model("ViT-B-16", pretrained=None).eval().to(dev)
    refq = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval().to(dev)  # same activation as ours
    tok = Tokenizer()
    ref_tok = open_clip.get_tokenizer("ViT-B-16")
    rng = np.random.default_rng(0)
    words = "red mug left of an open silver laptop next to a potted cactus on a wooden desk".split()
    short_texts = [" ".join(rng.choice(words, 20)) for _ in range(args.batch)]
    long_texts = [" ".join(rng.choice(words, 150)) for _ in range(args.batch)]
    boxes = [torch.rand(16, 2).sort(dim=1).values.repeat_interleave(2, 1)[:, [0, 2, 1, 3]] for _ in range(args.batch)]

    def ctx():
        return torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)

    rows = []
    print(f"device={dev} threads={torch.get_num_threads()} torch={torch.__version__} open_clip={open_clip.__version__}")
    with torch.inference_mode():
        for bs in sorted({1, args.batch}):
            pv = torch.randn(bs, 3, 224, 224, device=dev)
            bx = boxes[:bs]
            with ctx():
                t_glob, t_ref = timed_pair(
                    lambda pv=pv: ours.encode_image(pv), lambda pv=pv: ref.encode_image(pv), args.repeats
                )
                t_all, t_ref2 = timed_pair(
                    lambda pv=pv, bx=bx: ours.encode_image_and_regions(pv, bx),
                    lambda pv=pv: ref.encode_image(pv),
                    args.repeats,
                )
                t_glob_q, t_q = timed_pair(
                    lambda pv=pv: ours.encode_image(pv), lambda pv=pv: refq.encode_image(pv), args.repeats
                )
            rows.append((f"images/s batch {bs} (global)", bs / t_glob, bs / t_ref))
            rows.append((f"images/s batch {bs} (global+dense+16 regions)", bs / t_all, bs / t_ref2))
            rows.append((f"images/s batch {bs} (global) vs ViT-B-16-quickgelu", bs / t_glob_q, bs / t_q))
        ids_ref = ref_tok(short_texts).to(dev)
        for name, texts, path in (("short", short_texts, TextPath.SHORT), ("long", long_texts, TextPath.LONG)):
            ids = tok(texts, path, warn=False).to(dev)
            with ctx():
                t_ours, t_ref = timed_pair(
                    lambda ids=ids, path=path: ours.encode_text(ids, path),
                    lambda: ref.encode_text(ids_ref),
                    args.repeats,
                )
            n = len(texts)
            rows.append((f"texts/s {name} ({len(texts[0].split())} words, batch {n})", n / t_ours, n / t_ref))
        with ctx():
            rows.append(_full_short_row(ours, ref, args, dev))
    print_rows(rows)


def _full_short_row(ours: Any, ref: Any, args: argparse.Namespace, dev: torch.device) -> tuple[str, float, float]:
    """Same work as open_clip on the short path: a full 77-token row (no trimming possible)."""
    from fgsearch.model import TextPath

    full = torch.randint(1, 49000, (args.batch, 77), device=dev)
    full[:, -1] = 49407
    full_ref = full.clone()
    t_ours, t_ref = timed_pair(
        lambda: ours.encode_text(full, TextPath.SHORT), lambda: ref.encode_text(full_ref), args.repeats
    )
    return (f"texts/s short (77 tokens full, batch {args.batch})", args.batch / t_ours, args.batch / t_ref)


def _add(rows: list[tuple[str, float, float]], row: tuple[str, float, float]) -> None:
    """Keep a row and show it at once (a long run that fails later keeps what it measured)."""
    rows.append(row)
    print(f"  {row[0]}: {row[1]:.2f} vs {row[2]:.2f} (ratio {row[1] / row[2]:.2f})", flush=True)


def _mixed_images(n: int, seed: int = 0) -> list:
    """Images of mixed aspect ratios (portrait, landscape, panorama, square) that fall in the 256 bucket."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(240, 180), (180, 240), (120, 360), (256, 256), (200, 300), (300, 160)]  # (height, width)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        out.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return out


def bench_fgclip2(args: argparse.Namespace) -> None:
    import open_clip

    from fgsearch.model import FGCLIP, FGCLIPConfig, ImageBatch, TextPath, Tokenizer

    dev = torch.device(args.device)
    amp = dev.type == "cuda"
    torch.manual_seed(0)
    ours, enc = _fgclip2_encoder(dev, amp)
    ref = open_clip.create_model("ViT-B-16-SigLIP2-256", pretrained=None).eval().to(dev)
    v1 = FGCLIP(FGCLIPConfig.base()).eval().to(dev)  # built outside inference mode (its q/k/v cache)
    words = "red mug left of an open silver laptop next to a potted cactus on a wooden desk".split()
    rng = np.random.default_rng(0)
    short_texts = [" ".join(rng.choice(words, 20)) for _ in range(args.batch)]
    boxes = [torch.rand(16, 2).sort(dim=1).values.repeat_interleave(2, 1)[:, [0, 2, 1, 3]] for _ in range(args.batch)]

    def ctx():
        return torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)

    if args.index_only:
        bench_index2(enc, args.index_images, args.batch, args.repeats)
        return
    rows = []
    print(f"\nFG-CLIP 2: device={dev} threads={torch.get_num_threads()} vs open_clip ViT-B-16-SigLIP2-256")
    with torch.inference_mode():
        bs = args.batch
        pv = torch.randn(bs, 256, 3 * 16 * 16, device=dev)
        full = ImageBatch(pixels=pv, shapes=np.tile([16, 16], (bs, 1)), mask=torch.ones(bs, 256, device=dev))
        ref_pv = torch.randn(bs, 3, 256, 256, device=dev)
        with ctx():
            t_a, t_b = timed_pair(
                lambda: enc.family.encode_image(ours, full), lambda: ref.encode_image(ref_pv), args.repeats
            )
            _add(rows, (f"images/s batch {bs}, 256 patches (global)", bs / t_a, bs / t_b))

            def all_paths() -> None:
                _, maps = enc.family.encode_image_and_dense(ours, full)
                enc.family.encode_regions(ours, maps, boxes[:bs])

            t_a, t_b = timed_pair(all_paths, lambda: ref.encode_image(ref_pv), args.repeats)
            _add(rows, (f"images/s batch {bs}, 256 patches (global+dense+16 regions)", bs / t_a, bs / t_b))
            mixed = enc.preprocess(_mixed_images(bs)).to(dev)
            real = int(np.prod(mixed.shapes, axis=1).sum())
            t_a, t_b = timed_pair(
                lambda: enc.family.encode_image(ours, mixed), lambda: ref.encode_image(ref_pv), args.repeats
            )
            # per patch: the mixed batch holds fewer real patches than bs * 256
            _add(rows, (f"patches/s batch {bs}, mixed aspect (global, padded+masked)", real / t_a, bs * 256 / t_b))
            ids = enc.tokenizer(short_texts, "short", warn=False).to(dev)
            t_a, t_b = timed_pair(lambda: ours.encode_text(ids, "short"), lambda: ref.encode_text(ids), args.repeats)
            _add(rows, (f"texts/s 20 words, short walk (64 tokens), batch {bs}", bs / t_a, bs / t_b))
            # what a fixed padded length costs a query: FG-CLIP v1 (base) stops its causal pass at EOS
            ids1 = Tokenizer()(short_texts, TextPath.SHORT, warn=False).to(dev)
            t_a, t_b = timed_pair(
                lambda: ours.encode_text(ids, "short"), lambda: v1.encode_text(ids1, TextPath.SHORT), args.repeats
            )
            v1_row = (f"texts/s 20 words: FG-CLIP 2 short walk vs v1 short path, batch {bs}", bs / t_a, bs / t_b)
    print_rows(rows)
    print_rows([v1_row], "FG-CLIP 2", "FG-CLIP v1")
    if args.index_images:
        bench_index2(enc, args.index_images, bs, args.repeats)


def _fgclip2_encoder(dev: torch.device, amp: bool) -> tuple[Any, Any]:
    """The FG-CLIP 2 base architecture with random weights, and an encoder around it."""
    import tempfile
    from pathlib import Path

    from fgsearch.model import FGCLIP2, FGCLIP2Config, ModelSpec, TorchEncoder
    from fgsearch.model.tiny import write_tokenizer

    ours = FGCLIP2(FGCLIP2Config.base()).eval().to(dev)
    tmp = Path(tempfile.mkdtemp(prefix="fgsearch-bench-"))
    write_tokenizer(tmp, 2000)  # a small stand-in vocabulary: tokenizing is not what is timed
    spec = ModelSpec(
        name="fg-clip2-base (random)",
        family="fgclip2",
        local_dir=str(tmp),
        patch_size=16,
        short_length=64,
        long_length=196,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        fingerprint="bench",
    )
    return ours, TorchEncoder(ours, spec, device=dev, precision="bf16" if amp else "fp32")


def bench_index2(enc, n: int, batch: int, repeats: int) -> None:  # type: ignore[no-untyped-def]
    """``fgsearch index`` (decode, NaFlex, mixed-shape batches, auto proposals, storage) vs the model
    alone on the same images already preprocessed (global + dense + auto proposals + regions)."""
    import shutil
    import tempfile
    from pathlib import Path

    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings, auto_boxes_batch

    tmp = Path(tempfile.mkdtemp(prefix="fgsearch-bench-index-"))
    (tmp / "photos").mkdir()
    images = _mixed_images(n, seed=1)
    for i, im in enumerate(images):
        im.save(tmp / "photos" / f"{i:04d}.png")
    settings = RegionSettings()
    batches = [enc.preprocess(images[s : s + batch]) for s in range(0, n, batch)]  # not timed

    def model_only() -> None:
        for b in batches:
            enc.encode_proposed(b, lambda d: [x for x, _ in auto_boxes_batch(d, settings)])

    model_only()  # warm-up: the kernels for these batch shapes are built once, outside the timings
    t_index, t_model = [], []
    for r in range(max(1, repeats // 2)):  # alternate, so drift in machine speed hits both alike
        t0 = time.perf_counter()
        with Library.open(tmp / f"lib{r}", model="bench", regions=settings, encoder=enc) as lib:
            lib.index(tmp / "photos", batch_size=batch)
        t_index.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model_only()
        t_model.append(time.perf_counter() - t0)
    a, b = n / statistics.median(t_index), n / statistics.median(t_model)
    print(f"index runs {[round(t, 1) for t in t_index]} s, model-only runs {[round(t, 1) for t in t_model]} s")
    print_rows([(f"index e2e, {n} mixed-aspect images, batch {batch} (images/s)", a, b)], "index", "model only")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
