"""The training loop: AdamW, warmup + cosine, accumulation, clipping, checkpoints with exact resume,
held-out evaluation, JSONL log; world size 1 or torchrun DDP.

Output directory::

    OUT/config.json, model.safetensors, fgsearch.json   the final model (``--model OUT`` loads it)
    OUT/train_config.json                                 the resolved TrainConfig
    OUT/checkpoints/step-000500/{state.pt,train_config.json}   resumable checkpoints (latest kept + every N)
    OUT/log.jsonl                                         one line per logged step / evaluation
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgsearch.errors import DataError, InputError, ModelNotFoundError

logger = logging.getLogger(__name__)

FREEZE_CHOICES = ("none", "vision", "text", "all-but-projections")
LOSS_CHOICES = ("global", "region", "hardneg")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (saved next to every checkpoint)."""

    data: str
    out: str
    data_root: str | None = None
    init: str = "tiny"  # tiny | tiny-fgclip2 | registry name | checkpoint dir | hf-hub:ORG/NAME | openai-clip:DIR
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 100
    grad_accum: int = 1
    clip_grad: float = 1.0
    freeze: str = "none"
    losses: tuple[str, ...] = LOSS_CHOICES
    region_weight: float = 0.1  # the paper's weights
    hardneg_weight: float = 0.5
    save_every: int = 500
    eval_every: int = 500
    eval_limit: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    resume: bool = True
    # shape of a fresh model (--init tiny, tiny-fgclip2: its towers both have tiny_width and tiny_layers)
    tiny_image_size: int = 96
    tiny_patch: int = 12
    tiny_width: int = 128
    tiny_layers: int = 4
    tiny_text_width: int = 64
    tiny_text_layers: int = 2
    tiny_dim: int = 64

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE_CHOICES:
            raise InputError(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}, got {self.freeze!r}")
        bad = [x for x in self.losses if x not in LOSS_CHOICES]
        if bad or not self.losses:
            raise InputError(f"--losses takes a comma list of {', '.join(LOSS_CHOICES)}, got {','.join(self.losses)}")
        for name in ("steps", "batch_size", "grad_accum", "save_every", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["losses"] = list(self.losses)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["losses"] = tuple(d.get("losses", LOSS_CHOICES))
        return cls(**d)


ProgressFn = Callable[[int, int, dict[str, float]], None]
NoticeFn = Callable[[str], None]


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


TINY_FGCLIP2_VOCAB = 4096  # largest tokenizer trained for --init tiny-fgclip2 (fewer ids if the captions are few)
TINY_FGCLIP2_CAPTIONS = 20_000  # training samples whose texts the tokenizer is trained on


def init_model(cfg: TrainConfig, out: Path, source: Any = None) -> tuple[Any, Any]:
    """The starting model and its spec, from --init (``source``: the training data, whose texts
    train the tokenizer of ``tiny-fgclip2``)."""
    from fgsearch.model import FGCLIP, FGCLIPConfig, ModelSpec, TextConfig, VisionConfig, load_model
    from fgsearch.model.loading import convert_openai_clip

    if cfg.init in ("tiny", "tiny-fgclip2") and cfg.tiny_image_size % cfg.tiny_patch:
        raise InputError(f"--tiny-image-size {cfg.tiny_image_size} must be a multiple of --tiny-patch {cfg.tiny_patch}")
    if cfg.init == "tiny-fgclip2":
        model, spec = load_model(_tiny_fgclip2(cfg, out, source))
        model.requires_grad_(True)
        return model, spec
    if cfg.init == "tiny":
        mc = FGCLIPConfig(
            text=TextConfig(
                hidden_size=cfg.tiny_text_width,
                intermediate_size=4 * cfg.tiny_text_width,
                num_hidden_layers=cfg.tiny_text_layers,
                num_attention_heads=max(1, cfg.tiny_text_width // 32),
            ),
            vision=VisionConfig(
                hidden_size=cfg.tiny_width,
                intermediate_size=4 * cfg.tiny_width,
                num_hidden_layers=cfg.tiny_layers,
                num_attention_heads=max(1, cfg.tiny_width // 32),
                image_size=(cfg.tiny_image_size, cfg.tiny_image_size),
                patch_size=cfg.tiny_patch,
            ),
            projection_dim=cfg.tiny_dim,
        )
        model = FGCLIP(mc)
        spec = ModelSpec(name="tiny", image_size=mc.vision.image_size)
        return model, spec
    try:
        if cfg.init.startswith("openai-clip:"):
            src = cfg.init.split(":", 1)[1]
            model, spec = load_model(convert_openai_clip(src, out / "init"))
        else:
            model, spec = load_model(cfg.init)
    except ModelNotFoundError as e:  # the model layer names --model; here the option is --init
        raise ModelNotFoundError(str(e).replace("--model ", "--init ")) from e
    model.requires_grad_(True)
    return model, spec


def _tiny_fgclip2(cfg: TrainConfig, out: Path, source: Any) -> Path:
    """A fresh small FG-CLIP 2 checkpoint in ``out/init-tiny-fgclip2``: a byte-fallback BPE tokenizer
    trained on the texts of the training data (captions and region expressions of its first
    samples; English, Chinese, anything) and the model's own random initialisation. A resumed run
    reuses the one it started with (its checkpoints were trained with that tokenizer)."""
    from fgsearch.model.fgclip2 import FGCLIP2Config
    from fgsearch.model.tiny import write_fgclip2
    from fgsearch.trainer.data import ReadStats

    init = out / "init-tiny-fgclip2"
    rank = _dist_env()[0]
    if rank == 0 and not (
        cfg.resume and (init / "model.safetensors").is_file() and (init / "tokenizer.json").is_file()
    ):
        if source is None:
            raise InputError("--init tiny-fgclip2 trains its tokenizer on the training data: give --data")
        texts: list[str] = []
        for i, s in enumerate(source.iter_samples(ReadStats(), check_images=False)):
            if i >= TINY_FGCLIP2_CAPTIONS:
                break
            texts += [
                s.caption,
                s.short_caption,
                *s.region_short,
                *s.region_long,
                *(n for ns in s.negatives for n in ns),
            ]
        if not texts:
            raise DataError(f"--init tiny-fgclip2: no usable records with captions in {cfg.data}")
        grid = cfg.tiny_image_size // cfg.tiny_patch
        mc = FGCLIP2Config.tiny(
            width=cfg.tiny_width,
            layers=cfg.tiny_layers,
            patch_size=cfg.tiny_patch,
            grid=grid,
            vocab_size=TINY_FGCLIP2_VOCAB,
        )
        shutil.rmtree(init, ignore_errors=True)
        tmp = out / "init-tiny-fgclip2.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # SigLIP's initial temperature and bias (log 10, -10); weights as the model initialises them
        write_fgclip2(tmp, mc, seed=cfg.seed, logit_bias=-10.0, max_patches=grid * grid, corpus=texts, weight_std=None)
        tmp.rename(init)
    if _dist_env()[1] > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()  # the other ranks load what rank 0 wrote
    return init


def apply_freeze(model: Any, freeze: str) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze == "vision":
        model.vision_model.requires_grad_(False)
    elif freeze == "text":
        model.text_model.requires_grad_(False)
    elif freeze == "all-but-projections":
        model.requires_grad_(False)
        names = {n for n, _ in model.named_modules()}
        for name in HEADS:
            if name in names:
                model.get_submodule(name).requires_grad_(True)
        for p in _temperatures(model):
            p.requires_grad_(True)


# what "all-but-projections" keeps trainable: FG-CLIP's projections, FG-CLIP 2's heads
HEADS = (
    "visual_projection",
    "text_projection",
    "text_filip_projection",
    "text_model.head",
    "longtext_head",
    "boxtext_head",
    "vision_model.head",
    "dense_feature_head",
)
TEMPERATURES = ("logit_scale", "logit_scale_finegraind", "logit_scale_hardneg")


def _temperatures(model: Any) -> list[Any]:
    """The model's learned log temperatures (FG-CLIP: three; FG-CLIP 2: one, beside its bias)."""
    return [getattr(model, n) for n in TEMPERATURES if hasattr(model, n)]


def make_optimizer(model: Any, cfg: TrainConfig) -> Any:
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``cfg.steps``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors and plain values (loadable with weights_only=True)."""
    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    npst = np.random.get_state(legacy=False)
    st: dict[str, Any] = {
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": {
            "key": torch.from_numpy(npst["state"]["key"].astype(np.int64)),
            "pos": int(npst["state"]["pos"]),
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, mt, gauss = st["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    n = st["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's resume state, loaded so that it cannot run code (tensors and plain values only)."""
    import pickle

    import torch

    fix = f"delete {path.parent} or run with --no-resume"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataError(
            f"refusing to resume from {path}: it holds objects other than tensors and plain values, "
            f"and loading them could run code; {fix}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise DataError(f"cannot resume from {path}: unreadable ({type(e).__name__}); {fix}") from e


def latest_checkpoint(out: Path) -> Path | None:
    ck = out / "checkpoints"
    if not ck.is_dir():
        return None
    steps = sorted(p for p in ck.iterdir() if p.name.startswith("step-") and (p / "state.pt").exists())
    return steps[-1] if steps else None


def _save_checkpoint(
    out: Path, step: int, model: Any, opt: Any, sched: Any, position: tuple[int, int], cfg: TrainConfig
) -> Path:
    import torch

    final = out / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "position": list(position),
            "rng": _rng_state(),
        },
        tmp / "state.pt",
    )
    (tmp / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def _batches(stream: Any, batch_size: int, start: tuple[int, int]) -> Iterator[tuple[list[Any], tuple[int, int]]]:
    """Endless batches over epochs; yields (samples, position after the batch)."""
    epoch, consumed = start
    while True:
        batch: list[Any] = []
        got_any = False
        for s in stream.epoch(epoch, skip=consumed):
            got_any = True
            batch.append(s)
            consumed += 1
            if len(batch) == batch_size:
                yield batch, (epoch, consumed)
                batch = []
        if not got_any and consumed == 0:
            raise DataError(
                f"no usable training records ({stream.stats.bad} bad of {stream.stats.records}); first problems: "
                + "; ".join(stream.stats.reasons[:3])
            )
        if batch:
            yield batch, (epoch + 1, 0)
        epoch, consumed = epoch + 1, 0


def train(
    cfg: TrainConfig, progress: ProgressFn | None = None, stop_at: int | None = None, notice: NoticeFn | None = None
) -> Path:
    """Run (or resume) a training run; returns the output directory holding the final model.

    ``stop_at`` ends this process after that step (with a checkpoint), as an interruption would;
    running again with ``resume`` continues exactly where it stopped. ``notice`` receives one-line
    messages for the user (warnings, resumption, evaluation results); without it they are logged."""
    import torch

    from fgsearch.model import get_family, resolve_device, save_model
    from fgsearch.trainer.data import SampleStream, collate, resolve_data
    from fgsearch.trainer.evaluation import evaluate_heldout, heldout_samples
    from fgsearch.trainer.losses import FeatureModule, total_loss

    rank, world, local_rank = _dist_env()
    say = notice if notice is not None and rank == 0 else (lambda m: logger.info("%s", m))
    if cfg.warmup >= cfg.steps:
        say(f"warning: --warmup {cfg.warmup} >= --steps {cfg.steps}: the learning rate never gets past warmup")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    source = resolve_data(cfg.data, cfg.data_root)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model, spec = init_model(cfg, out, source)
    apply_freeze(model, cfg.freeze)
    model.train().to(device)
    family = get_family(spec.family or "fgclip")
    transform = family.transform(spec)
    tokenizer = family.tokenizer(spec)
    region_walk = "box" if "box" in family.walks else "short"  # region texts: FG-CLIP 2's box walk
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    step, position = 0, (0, 0)
    ck = latest_checkpoint(out) if cfg.resume else None
    if ck is not None:
        state = _load_state(ck / "state.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, position = int(state["step"]), tuple(state["position"])
        _set_rng_state(state["rng"])
        if step >= cfg.steps:
            say(
                f"already at step {step} of {cfg.steps} in {out}: nothing to train "
                "(a larger --steps continues, --no-resume starts over)"
            )
        else:
            say(f"resuming from {ck} (step {step} of {cfg.steps})")
    if rank == 0:
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    ddp = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(FeatureModule(model), device_ids=[local_rank] if device.type == "cuda" else None)
    stream = SampleStream(source, cfg.seed, rank, world)
    heldout = heldout_samples(cfg, source) if rank == 0 else []
    amp = device.type == "cuda"
    log = open(out / "log.jsonl", "a") if rank == 0 else None  # noqa: SIM115 - closed in finally
    batches = _batches(stream, cfg.batch_size, position)
    t0 = time.perf_counter()
    try:
        while step < cfg.steps:
            parts_sum = {"loss": 0.0, "global": 0.0, "region": 0.0, "hardneg": 0.0}
            for _ in range(cfg.grad_accum):
                samples, position = next(batches)
                batch = collate(samples, transform, tokenizer, family=family.name, region_walk=region_walk)
                batch = _to(batch, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    parts = total_loss(
                        model, batch, cfg.losses, ddp=ddp, weights=(cfg.region_weight, cfg.hardneg_weight)
                    )
                (parts.total / cfg.grad_accum).backward()
                parts_sum["loss"] += float(parts.total.detach()) / cfg.grad_accum
                parts_sum["global"] += parts.global_ / cfg.grad_accum
                parts_sum["region"] += parts.region / cfg.grad_accum
                parts_sum["hardneg"] += parts.hardneg / cfg.grad_accum
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.clip_grad)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():  # as in CLIP: temperatures stay within exp(4.6052) = 100
                for p in _temperatures(model):
                    p.clamp_(0, math.log(100))
            step += 1
            record: dict[str, Any] = {
                "step": step,
                **{k: round(v, 6) for k, v in parts_sum.items()},
                "lr": sched.get_last_lr()[0],
                "seconds": round(time.perf_counter() - t0, 2),
            }
            if rank == 0 and heldout and (step % cfg.eval_every == 0 or step == cfg.steps):
                model.eval()
                record["eval"] = evaluate_heldout(
                    model, heldout, transform, tokenizer, device, family=family.name, region_walk=region_walk
                )
                model.train()
                say(f"step {step} held-out: " + ", ".join(f"{k} {v:.3f}" for k, v in record["eval"].items()))
            if log is not None and (step % cfg.log_every == 0 or "eval" in record or step == cfg.steps):
                log.write(json.dumps(record) + "\n")
                log.flush()
            if progress is not None and rank == 0:
                progress(step, cfg.steps, {k: v for k, v in record.items() if isinstance(v, float)})
            if rank == 0 and (step % cfg.save_every == 0 or step == cfg.steps or step == stop_at):
                _save_checkpoint(out, step, model, opt, sched, position, cfg)
            if stop_at is not None and step >= stop_at:
                return out
        if rank == 0:
            model.eval()
            extra: dict[str, Any] = {"trained_with": cfg.to_dict(), "steps": step}
            if cfg.init == "tiny":
                extra["source"] = "fgsearch train --init tiny (a fresh tiny model)"
            save_model(model, out, spec, extra=extra)
            # the weights get the same permissions as the JSON files beside them (umask), not 0600
            os.chmod(out / "model.safetensors", (out / "config.json").stat().st_mode & 0o777)
            if stream.stats.bad:
                logger.warning("%d bad records skipped; first: %s", stream.stats.bad, stream.stats.reasons[:3])
    finally:
        if log is not None:
            log.close()
    return out


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[k] = [t.to(device) for t in v]
        else:
            out[k] = v
    return out
