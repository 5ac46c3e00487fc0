"""Random-weight FG-CLIP 2 checkpoint directories (tests, benchmarks, offline demos).

:func:`write_fgclip2` writes what a released FG-CLIP 2 directory holds (``config.json``,
``model.safetensors``, ``preprocessor_config.json`` and a Gemma-layout tokenizer) with random weights
and a small byte-fallback BPE tokenizer trained on the fly (English and Chinese), so every code path
that reads a real checkpoint runs offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from fgsearch.model.fgclip2 import FGCLIP2, FGCLIP2Config

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as in Gemma
CORPUS = (
    "a photo of a cat sitting on a red chair next to a green plant",
    "the red mug left of a laptop on a wooden table",
    "a tabby cat with amber eyes watching a small brown bird",
    "blue circle, orange square, white triangle and a yellow star",
    "一只黑色的猫坐在窗台上",
    "红色的杯子在笔记本电脑的左边",
    "绿色植物和蓝色的圆形",
)


def write_tokenizer(out: str | os.PathLike[str], vocab_size: int, corpus: Iterable[str] = CORPUS) -> Path:
    """Train a byte-fallback BPE of at most ``vocab_size`` ids and write it in the Gemma layout."""
    from fgsearch.model.hf_tokenizer import _tokenizers

    tk = _tokenizers()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    if vocab_size < len(SPECIALS) + len(byte_tokens):
        raise ValueError(f"vocab_size must be >= {len(SPECIALS) + len(byte_tokens)} for a byte-fallback tokenizer")
    tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = tk.normalizers.Replace(" ", "\u2581")
    tok.decoder = tk.decoders.Sequence(
        [tk.decoders.Replace("\u2581", " "), tk.decoders.ByteFallback(), tk.decoders.Fuse()]
    )
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIALS, *byte_tokens], show_progress=False
    )
    tok.train_from_iterator([t.lower() for t in corpus], trainer)
    tok.save(str(out / "tokenizer.json"))
    specials = dict(zip(("pad_token", "eos_token", "bos_token", "unk_token"), SPECIALS, strict=True))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": False,
                "add_eos_token": True,
                "padding_side": "right",
                "model_input_names": ["input_ids"],
                "tokenizer_class": "GemmaTokenizerFast",
                **specials,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return out


def write_fgclip2(
    out: str | os.PathLike[str],
    cfg: FGCLIP2Config | None = None,
    *,
    seed: int = 0,
    logit_scale: float = 2.3,
    logit_bias: float = -5.0,
    max_patches: int = 256,
    dynamic: bool = True,
    corpus: Iterable[str] = CORPUS,
    weight_std: float | None = 0.1,
) -> Path:
    """A random FG-CLIP 2 checkpoint directory that :func:`~fgsearch.model.load_model` reads.

    The tokenizer is trained on ``corpus``. ``weight_std``: every matrix drawn from N(0, std), larger
    than the model's own 0.02 so that random features differ clearly (tests); None keeps the model's
    initialisation (a model to train)."""
    import torch

    from fgsearch.model.loading import save_model
    from fgsearch.model.registry import ModelSpec

    cfg = cfg or FGCLIP2Config.tiny()
    out = Path(out)
    write_tokenizer(out, cfg.text.vocab_size, corpus)
    torch.manual_seed(seed)
    model = FGCLIP2(cfg)
    with torch.no_grad():
        if weight_std is not None:
            for p in model.parameters():
                if p.ndim >= 2:
                    p.normal_(0, weight_std)
        model.logit_scale.fill_(logit_scale)
        model.logit_bias.fill_(logit_bias)
    spec = ModelSpec(
        name=out.name,
        family="fgclip2",
        local_dir=str(out),
        patch_size=cfg.vision.patch_size,
        max_patches=max_patches,
        dynamic_patches=dynamic,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    return save_model(model, out, spec)
