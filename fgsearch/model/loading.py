"""Find, download, load and save FG-CLIP checkpoints.

A model reference is a registry name (``fg-clip-base``), ``hf-hub:ORG/NAME[@REVISION]`` or a
local directory holding ``config.json`` and weights (``model.safetensors``, ``pytorch_model.bin``
or a sharded ``*.index.json``). Hub models are downloaded through huggingface_hub into its cache
on first use (with its progress bar) and read from the cache afterwards, also offline.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgsearch.errors import CheckpointError, ModelNotFoundError
from fgsearch.model.config import FGCLIPConfig
from fgsearch.model.families import ModelFamily, family_for_config, get_family
from fgsearch.model.files import FGSEARCH_META, read_json
from fgsearch.model.registry import REGISTRY, ModelSpec

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Buffers some transformers versions saved; they are recomputed, never learned.
IGNORED_KEY_SUFFIXES = ("embeddings.position_ids",)


def resolve_spec(model: str | os.PathLike[str]) -> ModelSpec:
    """Turn a model reference into a :class:`ModelSpec` (no download)."""
    ref = str(model)
    if ref in REGISTRY:
        return REGISTRY[ref]
    if ref.startswith("hf-hub:"):
        repo, _, rev = ref[len("hf-hub:") :].partition("@")
        if repo.count("/") != 1:
            raise ModelNotFoundError(f"bad hub reference {ref!r}; expected hf-hub:ORG/NAME[@REVISION]")
        return ModelSpec(name=ref, hub_id=repo, revision=rev or None)
    path = Path(ref).expanduser()
    if path.is_dir():
        for spec in REGISTRY.values():  # a registry model's own folder: the registry's name
            if spec.local_dir and Path(spec.local_dir).resolve() == path.resolve():
                return spec
        return ModelSpec(name=path.name, local_dir=str(path.resolve()))
    names = ", ".join(REGISTRY)
    raise ModelNotFoundError(
        f"unknown model {ref!r}: not a registry name ({names}), not hf-hub:ORG/NAME, and not a directory"
    )


def checkpoint_dir(spec: ModelSpec, *, download: bool = True) -> Path:
    """Local directory with the spec's checkpoint, downloading it into the HF cache if needed."""
    if spec.local_dir:
        path = Path(spec.local_dir)
        if not (path / "config.json").exists():
            hint = " (train it with the command in README's Training section)" if spec.name == "demo" else ""
            raise ModelNotFoundError(f"model {spec.name}: no config.json in {path}{hint}")
        return path
    assert spec.hub_id is not None
    return _download(spec, download=download)


def _download(spec: ModelSpec, *, download: bool) -> Path:
    from huggingface_hub import snapshot_download

    kw: dict[str, Any] = {"repo_id": spec.hub_id, "revision": spec.revision}
    base = [
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ]
    attempts = [
        [*base, "*.safetensors", "model.safetensors.index.json"],
        [*base, "pytorch_model*.bin", "*.bin.index.json"],
    ]
    last_error: Exception | None = None
    for patterns in attempts:
        try:
            path = Path(snapshot_download(allow_patterns=patterns, local_files_only=not download, **kw))
        except Exception as e:  # huggingface_hub raises many types for offline / missing / auth
            last_error = e
            continue
        if _weight_files(path, required=False):
            return path
    env_offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    reason = f"{type(last_error).__name__}: {last_error}" if last_error else "no weight files in the repo"
    from huggingface_hub.constants import HF_HUB_CACHE

    state = " and HF_HUB_OFFLINE is set" if env_offline else (" and could not be downloaded" if download else "")
    raise ModelNotFoundError(
        f"model {spec.name} ({spec.hub_id}) is not in the Hugging Face cache ({HF_HUB_CACHE}){state} "
        f"[{_first_sentence(reason)}]; connect once to download it"
        + (" (unset HF_HUB_OFFLINE)" if env_offline else "")
        + ", pass --model PATH to a local checkpoint directory (config.json + model.safetensors), "
        "or work offline with the small shipped model: --model demo (`fgsearch demo` shows it)"
    )


def _first_sentence(text: str) -> str:
    """The first sentence of an error text (whole: never cut mid-sentence), on one line."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    end = re.search(r"[.!?](\s|$)", line)
    return line[: end.start() + 1] if end else line


def is_cached(spec: ModelSpec) -> bool:
    """Whether a model's weights are available without a download."""
    if spec.local_dir:
        return (Path(spec.local_dir) / "config.json").exists()
    try:
        _download(spec, download=False)
    except ModelNotFoundError:
        return False
    return True


def _weight_files(path: Path, required: bool = True) -> list[Path]:
    for name in INDEX_FILES:
        index = path / name
        if index.exists():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid sharded-checkpoint index: {e}") from e
            missing = [s for s in shards if not (path / s).exists()]
            if missing:
                raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing)}")
            return [path / s for s in shards]
    for name in WEIGHT_FILES:
        if (path / name).exists():
            return [path / name]
    if required:
        raise CheckpointError(
            f"no weights in {path}: expected model.safetensors, pytorch_model.bin or a sharded *.index.json"
        )
    return []


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (safetensors, torch .bin with weights_only, shards)."""
    import torch

    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(str(f))
            else:
                part = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read weights {f}: {e}") from e
        if not isinstance(part, dict):
            raise CheckpointError(f"{f} does not hold a state dict")
        state.update(part)
    return state


def read_config(path: Path) -> tuple[FGCLIPConfig, dict[str, Any]]:
    raw = read_json(path / "config.json")
    return FGCLIPConfig.from_hf_dict(raw), raw


def registry_name(name: str | None, fingerprint: str | None = None) -> str | None:
    """One name per model everywhere: the registry's name for a model recorded as ``name`` (a
    checkpoint folder's name, a hub id) when it is a registry model (the same hub id, or a folder
    whose weights have a registry folder's ``fingerprint``); any other name as it is. Libraries
    made before the registry's name was recorded for a folder (``demo-model``) show it too."""
    if name is None or name in REGISTRY:
        return name
    repo, _, rev = name.removeprefix("hf-hub:").partition("@")
    for key, spec in REGISTRY.items():
        if name.startswith("hf-hub:") and spec.hub_id == repo and rev in ("", spec.revision or ""):
            return key
        if fingerprint and spec.local_dir and _folder_fingerprint(spec.local_dir) == fingerprint:
            return key
    return name


@functools.cache
def _folder_fingerprint(folder: str) -> str | None:
    path = Path(folder)
    return checkpoint_fingerprint(path) if (path / "config.json").is_file() else None


def checkpoint_fingerprint(path: Path) -> str:
    """Cheap identity of a checkpoint directory: sha256 over config + weight file names and sizes,
    plus the first and last MiB of each weight file (full hashing of GBs is too slow for each run)."""
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for f in _weight_files(path):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if st.st_size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def read_family_config(path: Path, spec: ModelSpec) -> tuple[ModelFamily, Any, dict[str, Any]]:
    """The checkpoint's family (the registry's, else from ``model_type``), its config and the raw dict."""
    cfg_file = path / "config.json"
    raw = read_json(cfg_file)
    found = family_for_config(raw, str(cfg_file))
    if spec.family is not None and get_family(spec.family) is not found:
        raise CheckpointError(
            f"model {spec.name} is registered as family {spec.family!r} but {cfg_file} is a {found.name!r} "
            "checkpoint; pass the directory with --model PATH instead"
        )
    return found, found.read_config(raw), raw


def load_model(
    model: str | os.PathLike[str] = "fg-clip-base", *, device: str | torch.device = "cpu", download: bool = True
) -> tuple[torch.nn.Module, ModelSpec]:
    """Load a model by registry name, ``hf-hub:`` id or directory -> (model in eval mode, resolved spec).

    The family (FG-CLIP or FG-CLIP 2) comes from the registry or the checkpoint's ``model_type``.
    Unknown or missing parameter names are an error listing them (``*.position_ids`` buffers that
    older transformers versions saved are ignored). Weights are loaded as float32.
    """
    import torch

    spec = resolve_spec(model)
    path = checkpoint_dir(spec, download=download)
    family, cfg, _ = read_family_config(path, spec)
    state = {k: v for k, v in read_state_dict(path).items() if not k.endswith(IGNORED_KEY_SUFFIXES)}
    from fgsearch.model.noinit import skip_init

    with skip_init():  # no random init: every parameter comes from the checkpoint
        net = family.build(cfg)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        hint = ""
        if "text_filip_projection.weight" in missing and "text_projection.weight" in state:
            hint = " This looks like a plain CLIP checkpoint: convert it with `fgsearch convert-clip SRC OUT`."
        raise CheckpointError(
            f"checkpoint {path} does not match the {family.name} architecture in its config.json: "
            f"missing {_short_list(missing)}; unknown {_short_list(unknown)}.{hint}"
        )
    bad_shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad_shapes:
        raise CheckpointError(f"checkpoint {path} has tensors of the wrong shape: {_short_list(bad_shapes)}")
    net.load_state_dict({k: v.to(torch.float32).contiguous() for k, v in state.items()}, assign=True)
    net.eval().requires_grad_(False).to(device)
    spec = family.resolve_spec(path, spec, cfg).resolved(
        family=family.name, local_dir=spec.local_dir or str(path), fingerprint=checkpoint_fingerprint(path)
    )
    return net, spec


def _short_list(items: list[str], n: int = 8) -> str:
    if not items:
        return "none"
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def save_model(
    model: torch.nn.Module,
    out_dir: str | os.PathLike[str],
    spec: ModelSpec | None = None,
    *,
    dtype: torch.dtype | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``fgsearch.json``) that :func:`load_model` reads.

    ``dtype=torch.float16`` halves the size (for shipping small models); loading upcasts to float32.
    The files are written to a temporary name and renamed, so a crash never leaves half a checkpoint.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(dtype) if dtype is not None else v.detach()).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    cfg: Any = model.config
    _write_json(out / "config.json", cfg.to_hf_dict())
    family_for_config(cfg.to_hf_dict()).save_files(spec, out)
    meta: dict[str, Any] = {"preprocess": {}}
    if spec is not None:
        meta["preprocess"] = {"image_mean": list(spec.mean), "image_std": list(spec.std)}
        meta["source"] = spec.source
    meta.update(extra or {})
    _write_json(out / FGSEARCH_META, meta)
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def convert_openai_clip(src: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert an OpenAI CLIP checkpoint (transformers format: config.json + weights) into an
    FG-CLIP starting point in ``out_dir`` (77 -> 248 position stretch, projection copy)."""
    import torch

    from fgsearch.model.convert import openai_to_fgclip_state
    from fgsearch.model.fgclip import FGCLIP

    src_path = Path(src)
    cfg, _ = read_config(src_path)
    state = {k: v for k, v in read_state_dict(src_path).items() if not k.endswith(IGNORED_KEY_SUFFIXES)}
    if "text_filip_projection.weight" in state:
        raise CheckpointError(f"{src_path} is already an FG-CLIP checkpoint; use it directly with --model")
    if "text_model.embeddings.position_embedding.weight" not in state or "text_projection.weight" not in state:
        raise CheckpointError(f"{src_path} is not a CLIP checkpoint in transformers format (no text tower found)")
    state = openai_to_fgclip_state(state, cfg.text.long_keep, cfg.text.long_positions, cfg.logit_scale_init_value)
    net = FGCLIP(cfg)
    missing = sorted(set(net.state_dict()) - set(state))
    unknown = sorted(set(state) - set(net.state_dict()))
    if missing or unknown:
        raise CheckpointError(
            f"{src_path} does not match CLIP's layout: missing {_short_list(missing)}; unknown {_short_list(unknown)}"
        )
    net.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    spec = ModelSpec(name=src_path.name, local_dir=str(src_path), image_size=cfg.vision.image_size)
    proc = src_path / "preprocessor_config.json"
    if proc.exists():
        p = json.loads(proc.read_text())
        if "image_mean" in p and "image_std" in p:
            spec = spec.resolved(mean=tuple(p["image_mean"]), std=tuple(p["image_std"]))
    return save_model(net, out_dir, spec, extra={"converted_from": str(src_path)})
