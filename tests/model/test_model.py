"""Model layer behaviour beyond the fixture: other configurations, loading, conversion, encoder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fgsearch.errors import CheckpointError, InputError, ModelNotFoundError
from fgsearch.model import (
    FGCLIP,
    FGCLIPConfig,
    TextConfig,
    TextPath,
    TextTruncatedWarning,
    Tokenizer,
    TorchEncoder,
    VisionConfig,
    convert_openai_clip,
    load_model,
    resolve_spec,
    save_model,
)

CONFIGS = [
    FGCLIPConfig.tiny(),
    FGCLIPConfig(  # non-default patch, depth, width, activation, non-square input
        text=TextConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3),
        vision=VisionConfig(
            hidden_size=40,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=5,
            image_size=(48, 80),
            patch_size=8,
            hidden_act="gelu",
        ),
        projection_dim=24,
    ),
    FGCLIPConfig.tiny(image_size=56, patch_size=14, width=32, layers=1),
]


def _naive_global(model: FGCLIP, pv: torch.Tensor) -> torch.Tensor:
    """Textbook CLIP vision forward: every layer on every token, then the class token."""
    vm = model.vision_model
    x = vm.pre_layrnorm(vm.embeddings(pv))
    for layer in vm.encoder.layers:
        x = layer(x)
    return model.visual_projection(vm.post_layernorm(x[:, 0]))


@pytest.mark.parametrize("cfg", CONFIGS, ids=["tiny", "rect-gelu", "p14-1layer"])
def test_one_pass_matches_separate_paths(cfg: FGCLIPConfig) -> None:
    torch.manual_seed(1)
    model = FGCLIP(cfg).eval()
    h, w = cfg.vision.image_size
    pv = torch.randn(2, 3, h, w)
    boxes = [
        torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 0.0, 0.0]]),
        torch.tensor([[0.3, 0.3, 0.7, 0.6]]),
    ]
    with torch.no_grad():
        out = model.encode_image_and_regions(pv, boxes)
        glob = model.encode_image(pv)
        dense = model.encode_dense(pv)
        naive = _naive_global(model, pv)
    gh, gw = cfg.vision.grid
    assert out.dense.shape == (2, gh, gw, cfg.projection_dim)
    assert out.regions.shape == (4, cfg.projection_dim)
    torch.testing.assert_close(out.image, glob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image, naive, atol=1e-5, rtol=1e-5)  # class-token-only last layer is exact
    torch.testing.assert_close(out.dense, dense, atol=1e-6, rtol=1e-6)
    # the full-image box is the mean of the dense map; an all-zero box gives a zero vector
    torch.testing.assert_close(out.regions[0], dense[0].mean(dim=(0, 1)), atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(out.regions[2]) == 0


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["tiny", "rect-gelu"])
def test_text_padding_and_trimming_do_not_change_vectors(cfg: FGCLIPConfig) -> None:
    torch.manual_seed(2)
    model = FGCLIP(cfg).eval()
    tok = Tokenizer()
    texts = ["a red mug", "a tabby cat sits on a wooden stool next to a window with a small brown sparrow"]
    for path in (TextPath.SHORT, TextPath.LONG):
        ids = tok(texts, path)
        with torch.no_grad():
            batch = model.encode_text(ids, path)
            one = torch.cat([model.encode_text(ids[i : i + 1], path) for i in range(2)])
            cut = model.encode_text(ids[:1, :10], path)  # padding removed entirely
        torch.testing.assert_close(batch, one, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cut[0], batch[0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        s = model.encode_text(tok(texts, "short"), "short")
        lg = model.encode_text(tok(texts, "long"), "long")
    assert not torch.allclose(s, lg)  # the two paths really differ (tables and projections)


def test_text_path_length_is_checked() -> None:
    model = FGCLIP(FGCLIPConfig.tiny()).eval()
    with pytest.raises(InputError, match="short text path takes"):
        model.encode_text(torch.full((1, 100), 5), TextPath.SHORT)
    with pytest.raises(InputError, match="pixel_values must be"):
        model.encode_image(torch.zeros(1, 3, 32, 32))


def test_tokenizer_rule_and_truncation() -> None:
    tok = Tokenizer()
    assert tok.choose_path("red mug left of laptop") is TextPath.SHORT
    long_text = " ".join(["a small red ceramic mug"] * 30)  # ~150 tokens
    assert tok.choose_path(long_text) is TextPath.LONG
    assert tok.count("") == 2
    ids = tok([""], TextPath.SHORT)
    assert ids[0, :3].tolist() == [49406, 49407, 49407]
    very_long = " ".join(["word"] * 300)
    with pytest.warns(TextTruncatedWarning, match="dropped 54 tokens"):
        ids = tok([very_long], TextPath.LONG)
    assert ids.shape == (1, 248) and ids[0, -1] == 49407
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(["short text"], TextPath.SHORT)  # no warning when nothing is dropped


def test_save_load_roundtrip_formats(tmp_path: Path) -> None:
    torch.manual_seed(3)
    cfg = CONFIGS[1]
    model = FGCLIP(cfg).eval()
    d = save_model(model, tmp_path / "st")
    loaded, spec = load_model(d)
    assert spec.image_size == cfg.vision.image_size
    assert loaded.config == cfg
    pv = torch.randn(1, 3, *cfg.vision.image_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(pv), model.encode_image(pv))

    # pytorch_model.bin with an ignorable position_ids buffer
    b = tmp_path / "bin"
    b.mkdir()
    (b / "config.json").write_text((d / "config.json").read_text())
    state = dict(model.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(state, b / "pytorch_model.bin")
    load_model(b)

    # sharded safetensors
    s = tmp_path / "sharded"
    s.mkdir()
    (s / "config.json").write_text((d / "config.json").read_text())
    keys = sorted(model.state_dict())
    half = len(keys) // 2
    wm = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: model.state_dict()[k].contiguous() for k in part}, str(s / name))
        wm.update({k: name for k in part})
    (s / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    loaded, _ = load_model(s)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(pv), model.encode_image(pv))

    # fp16 shipping format loads back as float32
    h = save_model(model, tmp_path / "half", dtype=torch.float16)
    loaded, _ = load_model(h)
    assert next(loaded.parameters()).dtype == torch.float32


def test_bad_checkpoints_give_clear_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    state = FGCLIP(FGCLIPConfig.tiny()).state_dict()
    state.pop("logit_scale_hardneg")
    state["extra.weight"] = torch.zeros(2)
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing logit_scale_hardneg; unknown extra.weight"):
        load_model(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(bad)
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        load_model(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(empty)
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        load_model("nope")


def test_plain_clip_is_recognised_and_converted(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = FGCLIP(FGCLIPConfig.tiny())
    clip_dir = tmp_path / "openai-clip"
    clip_dir.mkdir()
    cfg = model.config.to_hf_dict()
    cfg.pop("fgsearch")
    (clip_dir / "config.json").write_text(json.dumps(cfg))
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if "position_embedding_ori" not in k
        and "position_embedding_res" not in k
        and k not in ("text_filip_projection.weight", "logit_scale_finegraind", "logit_scale_hardneg")
    }
    save_file(state, str(clip_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="fgsearch convert-clip"):
        load_model(clip_dir)
    out = convert_openai_clip(clip_dir, tmp_path / "converted")
    fg, _ = load_model(out)
    torch.testing.assert_close(fg.text_filip_projection.weight, model.text_projection.weight)
    pos = model.text_model.embeddings.position_embedding.weight
    ori = fg.text_model.embeddings.position_embedding_ori.weight
    assert ori.shape[0] == 248
    torch.testing.assert_close(ori[:20], pos[:20])
    torch.testing.assert_close(ori[22], 0.5 * pos[20] + 0.5 * pos[21])
    with pytest.raises(CheckpointError, match="already an FG-CLIP"):
        convert_openai_clip(out, tmp_path / "again")


def test_registry_and_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_spec("fg-clip-base").hub_id == "qihoo360/fg-clip-base"
    assert resolve_spec("fg-clip-large").image_size == (336, 336)
    spec = resolve_spec("hf-hub:someone/model@v2")
    assert (spec.hub_id, spec.revision) == ("someone/model", "v2")
    with pytest.raises(ModelNotFoundError, match="hf-hub:ORG/NAME"):
        resolve_spec("hf-hub:nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"fg-clip-base \(qihoo360/fg-clip-base\).*--model PATH"):
        load_model("fg-clip-base")


def test_hub_download_goes_through_snapshot_download(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    import huggingface_hub

    calls = []

    def fake_snapshot_download(
        repo_id: str, revision: str | None = None, allow_patterns=None, local_files_only: bool = False, **kw: object
    ) -> str:
        calls.append((repo_id, revision, tuple(allow_patterns), local_files_only))
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    _, spec = load_model("hf-hub:org/tiny@abc123")
    assert calls[0][:2] == ("org/tiny", "abc123") and "*.safetensors" in calls[0][2]
    assert calls[0][3] is False
    assert spec.image_size == (64, 64)


def test_encoder_outputs(tiny_model_dir: Path) -> None:
    from PIL import Image

    enc = TorchEncoder.load(str(tiny_model_dir), device="cpu")
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (40 + 10 * i, 60, 3), dtype=np.uint8)) for i in range(5)]
    boxes = [np.array([[0, 0, 1, 1], [0.2, 0.2, 0.6, 0.8]], np.float32)] * 5
    full = enc.encode_images(imgs, boxes, batch_size=2)
    one = enc.encode_images(imgs[3:4], boxes[3:4])
    assert full.image.shape == (5, enc.dim) and len(full.regions) == 5 and full.regions[0].shape == (2, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(full.image, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(full.image[3], one.image[0], atol=1e-5)
    np.testing.assert_allclose(full.regions[3], one.regions[0], atol=1e-5)
    texts = ["a red mug", " ".join(["a long detailed caption about a kitchen"] * 12)]
    auto = enc.encode_texts(texts)
    forced = enc.encode_texts(texts, path="long")
    np.testing.assert_allclose(auto[1], forced[1], atol=1e-5)  # the long text takes the long path anyway
    assert not np.allclose(auto[0], forced[0])  # the short one took the short path
    assert enc.encode_texts(texts[::-1])[0] == pytest.approx(auto[1], abs=1e-5)
