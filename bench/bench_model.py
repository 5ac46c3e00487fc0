"""Model throughput: fgsearch's FG-CLIP vs open_clip's ViT-B-16 under the same conditions.

    python bench/bench_model.py [--device cpu|cuda] [--repeats 5] [--batch 32]

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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
    words = [
        "red",
        "mug",
        "left",
        "of",
        "an",
        "open",
        "silver",
        "laptop",
        "next",
        "to",
        "a",
        "potted",
        "cactus",
        "on",
        "a",
        "wooden",
        "desk",
    ]
    short_texts = [" ".join(rng.choice(words, 20)) for _ in range(args.batch)]
    long_texts = [" ".join(rng.choice(words, 150)) for _ in range(args.batch)]
    boxes = [torch.rand(16, 2).sort(dim=1).values.repeat_interleave(2, 1)[:, [0, 2, 1, 3]] for _ in range(args.batch)]

    def ctx():
        return torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)

    rows = []
    print(f"device={dev} threads={torch.get_num_threads()} torch={torch.__version__} open_clip={open_clip.__version__}")
    with torch.inference_mode():
        for bs in (1, args.batch):
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
        # same work as open_clip on the short path: a full 77-token row (no trimming possible)
        full = torch.randint(1, 49000, (args.batch, 77), device=dev)
        full[:, -1] = 49407
        full_ref = full.clone()
        with ctx():
            t_ours, t_ref = timed_pair(
                lambda: ours.encode_text(full, TextPath.SHORT), lambda: ref.encode_text(full_ref), args.repeats
            )
        rows.append((f"texts/s short (77 tokens full, batch {args.batch})", args.batch / t_ours, args.batch / t_ref))
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {'fgsearch':>10}  {'open_clip':>10}  {'ratio':>6}")
    for name, a, b in rows:
        print(f"{name:<{w}}  {a:>10.1f}  {b:>10.1f}  {a / b:>6.2f}")


if __name__ == "__main__":
    main()
