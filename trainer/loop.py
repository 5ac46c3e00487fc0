"""The training loop: AdamW, warmup + cosine, accumulation, clipping, checkpoints with exact resume,
held-out evaluation, JSONL log; world size 1 or torchrun DDP.

:func:`train` runs named stages: ``_device`` (the process's device, the process group under
torchrun), ``_start`` (seeded starting model, its family's preprocessing, optimizer and schedule),
``_resume`` (the latest checkpoint, :mod:`fgsearch.trainer.checkpoint`), then per step
``_accumulate`` (forward and backward over ``grad_accum`` batches), ``_optimizer_step`` and
``_record``, and finally ``_save_final``. The options are one :class:`TrainConfig`
(:mod:`fgsearch.trainer.config`).

Output directory::

    OUT/config.json, model.safetensors, fgsearch.json   the final model (``--model OUT`` loads it)
    OUT/train_config.json                                 the resolved TrainConfig
    OUT/checkpoints/step-000500/{state.pt,train_config.json}   resumable checkpoints (latest kept + every N)
    OUT/log.jsonl                                         one line per logged step / evaluation
"""

from __future__ import annotations

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
from typing import TYPE_CHECKING, Any

from fgsearch.errors import DataError, InputError, ModelNotFoundError
from fgsearch.trainer.checkpoint import latest_checkpoint, load_state, save_checkpoint, set_rng_state
from fgsearch.trainer.config import FREEZE_CHOICES, LOSS_CHOICES, TrainConfig

if TYPE_CHECKING:
    import torch

    from fgsearch.model import ModelFamily, ModelSpec
    from fgsearch.trainer.data import DataSource, ReadStats

__all__ = ["FREEZE_CHOICES", "LOSS_CHOICES", "TrainConfig", "latest_checkpoint", "train"]

logger = logging.getLogger(__name__)

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
        raise InputError(
            "{tiny_image_size} {size} must be a multiple of {tiny_patch} {patch}",
            field="tiny_image_size",
            size=cfg.tiny_image_size,
            patch=cfg.tiny_patch,
        )
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
            raise InputError("{init} tiny-fgclip2 trains its tokenizer on the training data: give {data}", field="data")
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

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
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


@dataclass
class _Run:
    """What one training process works with, built once by :func:`_start` and read by each stage."""

    cfg: TrainConfig
    out: Path
    rank: int
    device: torch.device
    model: torch.nn.Module
    spec: ModelSpec
    family: ModelFamily
    transform: Any
    tokenizer: Any
    region_walk: str  # the walk for region texts: FG-CLIP 2's box walk, else short
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    ddp: torch.nn.Module | None = None

    def evaluate(self, heldout: list[Any]) -> dict[str, float]:
        """Held-out metrics of the model as it is now (rank 0 only); the model goes back to training."""
        from fgsearch.trainer.evaluation import evaluate_heldout

        self.model.eval()
        metrics = evaluate_heldout(
            self.model,
            heldout,
            self.transform,
            self.tokenizer,
            self.device,
            family=self.family.name,
            region_walk=self.region_walk,
        )
        self.model.train()
        return metrics


def train(
    cfg: TrainConfig, progress: ProgressFn | None = None, stop_at: int | None = None, notice: NoticeFn | None = None
) -> Path:
    """Run (or resume) a training run; returns the output directory holding the final model.

    ``stop_at`` ends this process after that step (with a checkpoint), as an interruption would;
    running again with ``resume`` continues exactly where it stopped. ``notice`` receives one-line
    messages for the user (warnings, resumption, evaluation results); without it they are logged."""
    from fgsearch.trainer.data import SampleStream, resolve_data
    from fgsearch.trainer.evaluation import heldout_samples

    rank, world, local_rank = _dist_env()
    say: NoticeFn = notice if notice is not None and rank == 0 else (lambda m: logger.info("%s", m))
    if cfg.warmup >= cfg.steps:
        say(f"warning: --warmup {cfg.warmup} >= --steps {cfg.steps}: the learning rate never gets past warmup")
    device = _device(cfg, world, local_rank)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    source = resolve_data(cfg.data, cfg.data_root)
    run = _start(cfg, out, source, device, rank)
    step, position = _resume(run, say) if cfg.resume else (0, (0, 0))
    if rank == 0:
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        from fgsearch.trainer.losses import FeatureModule

        ids = [local_rank] if device.type == "cuda" else None
        run.ddp = DistributedDataParallel(FeatureModule(run.model), device_ids=ids)
    stream = SampleStream(source, cfg.seed, rank, world)
    heldout = heldout_samples(cfg, source) if rank == 0 else []
    log = open(out / "log.jsonl", "a") if rank == 0 else None  # noqa: SIM115 - closed in finally
    batches = _batches(stream, cfg.batch_size, position)
    t0 = time.perf_counter()
    try:
        while step < cfg.steps:
            parts, position = _accumulate(run, batches)
            _optimizer_step(run)
            step += 1
            record = _record(run, step, parts, t0)
            if rank == 0 and heldout and (step % cfg.eval_every == 0 or step == cfg.steps):
                record["eval"] = run.evaluate(heldout)
                say(f"step {step} held-out: " + ", ".join(f"{k} {v:.3f}" for k, v in record["eval"].items()))
            if log is not None and (step % cfg.log_every == 0 or "eval" in record or step == cfg.steps):
                log.write(json.dumps(record) + "\n")
                log.flush()
            if progress is not None and rank == 0:
                progress(step, cfg.steps, {k: v for k, v in record.items() if isinstance(v, float)})
            if rank == 0 and (step % cfg.save_every == 0 or step == cfg.steps or step == stop_at):
                save_checkpoint(out, step, run.model, run.opt, run.sched, position, cfg)
            if stop_at is not None and step >= stop_at:
                return out
        if rank == 0:
            _save_final(run, step, stream.stats)
    finally:
        if log is not None:
            log.close()
    return out


def _device(cfg: TrainConfig, world: int, local_rank: int) -> torch.device:
    """This process's device: ``--device`` alone, or under torchrun the local rank's GPU (the
    process group is started here: NCCL on GPUs, else gloo)."""
    import torch

    from fgsearch.model import resolve_device

    if world == 1:
        return resolve_device(cfg.device)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _start(cfg: TrainConfig, out: Path, source: DataSource, device: torch.device, rank: int) -> _Run:
    """Seed, build the starting model (frozen parts set, on ``device``), its family's preprocessing,
    and the optimizer with its warmup + cosine schedule."""
    import torch

    from fgsearch.model import get_family

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model, spec = init_model(cfg, out, source)
    apply_freeze(model, cfg.freeze)
    model.train().to(device)
    family = get_family(spec.family or "fgclip")
    opt = make_optimizer(model, cfg)
    return _Run(
        cfg=cfg,
        out=out,
        rank=rank,
        device=device,
        model=model,
        spec=spec,
        family=family,
        transform=family.transform(spec),
        tokenizer=family.tokenizer(spec),
        region_walk="box" if "box" in family.walks else "short",
        opt=opt,
        sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg)),
    )


def _resume(run: _Run, say: NoticeFn) -> tuple[int, tuple[int, int]]:
    """The step and data position to continue from: the latest checkpoint's (weights, optimizer,
    schedule and random generators restored), or the start when there is none."""
    ck = latest_checkpoint(run.out)
    if ck is None:
        return 0, (0, 0)
    state = load_state(ck / "state.pt")
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    step, (epoch, consumed) = int(state["step"]), state["position"]
    set_rng_state(state["rng"])
    steps = run.cfg.steps
    if step >= steps:
        say(
            f"already at step {step} of {steps} in {run.out}: nothing to train "
            "(a larger --steps continues, --no-resume starts over)"
        )
    else:
        say(f"resuming from {ck} (step {step} of {steps})")
    return step, (int(epoch), int(consumed))


def _accumulate(
    run: _Run, batches: Iterator[tuple[list[Any], tuple[int, int]]]
) -> tuple[dict[str, float], tuple[int, int]]:
    """Forward and backward over ``grad_accum`` batches; the mean loss and its parts, and the data
    position after the last batch."""
    import torch

    from fgsearch.trainer.data import collate
    from fgsearch.trainer.losses import total_loss

    cfg = run.cfg
    parts_sum = {"loss": 0.0, "global": 0.0, "region": 0.0, "hardneg": 0.0}
    position = (0, 0)
    for _ in range(cfg.grad_accum):
        samples, position = next(batches)
        batch = collate(samples, run.transform, run.tokenizer, family=run.family.name, region_walk=run.region_walk)
        batch = _to(batch, run.device)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
            weights = (cfg.region_weight, cfg.hardneg_weight)
            parts = total_loss(run.model, batch, cfg.losses, ddp=run.ddp, weights=weights)
        (parts.total / cfg.grad_accum).backward()
        parts_sum["loss"] += float(parts.total.detach()) / cfg.grad_accum
        parts_sum["global"] += parts.global_ / cfg.grad_accum
        parts_sum["region"] += parts.region / cfg.grad_accum
        parts_sum["hardneg"] += parts.hardneg / cfg.grad_accum
    return parts_sum, position


def _optimizer_step(run: _Run) -> None:
    """Clip, step the optimizer and the schedule, and keep the temperatures in range."""
    import torch

    if run.cfg.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], run.cfg.clip_grad)
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    with torch.no_grad():  # as in CLIP: temperatures stay within exp(4.6052) = 100
        for p in _temperatures(run.model):
            p.clamp_(0, math.log(100))


def _record(run: _Run, step: int, parts: dict[str, float], t0: float) -> dict[str, Any]:
    """The log line of a step: losses (rounded), learning rate and seconds since the start."""
    return {
        "step": step,
        **{k: round(v, 6) for k, v in parts.items()},
        "lr": run.sched.get_last_lr()[0],
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _save_final(run: _Run, step: int, stats: ReadStats) -> None:
    """The trained model in ``OUT`` (loadable with ``--model OUT``), with the config it was trained with."""
    from fgsearch.model import save_model

    cfg, out = run.cfg, run.out
    run.model.eval()
    extra: dict[str, Any] = {"trained_with": cfg.to_dict(), "steps": step}
    if cfg.init == "tiny":
        extra["source"] = "fgsearch train --init tiny (a fresh tiny model)"
    save_model(run.model, out, run.spec, extra=extra)
    # the weights get the same permissions as the JSON files beside them (umask), not 0600
    os.chmod(out / "model.safetensors", (out / "config.json").stat().st_mode & 0o777)
    if stats.bad:
        logger.warning("%d bad records skipped; first: %s", stats.bad, stats.reasons[:3])


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
