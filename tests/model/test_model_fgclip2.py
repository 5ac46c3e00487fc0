"""FG-CLIP 2: self-consistency on other configs (parity with the original code: test_model_parity.py)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fgsearch.errors import CheckpointError, InputError
from fgsearch.model import (
    FGCLIP2,
    FGCLIP2Config,
    ImageBatch,
    ModelSpec,
    NaFlexTransform,
    TextPath,
    TextTruncatedWarning,
    TorchEncoder,
    get_family,
    load_model,
)
from fgsearch.model.fgclip2 import Text2Config, Vision2Config
from fgsearch.model.loading import read_family_config
from fgsearch.model.naflex import dynamic_budget, naflex_size
from fgsearch.model.tiny import write_fgclip2

CONFIGS = [
    FGCLIP2Config.tiny(),
    FGCLIP2Config(  # other patch, grid, width, heads, depth, activation, text lengths, keep_len
        text=Text2Config(
            vocab_size=400,
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=3,
            max_position_embeddings=24,
            keep_len=6,
            longtext_len=54,
            projection_size=48,
            hidden_act="gelu",
        ),
        vision=Vision2Config(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_patches=36,
            patch_size=8,
        ),
    ),
    FGCLIP2Config.tiny(width=32, layers=1, patch_size=14, grid=5, vocab_size=300, text_length=16, long_length=40),
]
IDS = ["tiny", "p8-g6-w48", "p14-g5-1layer"]
SIZES = [(120, 200), (170, 90), (97, 97), (28, 40), (300, 64)]  # (height, width)


def _images(seed: int = 0, sizes: list[tuple[int, int]] = SIZES) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _model(cfg: FGCLIP2Config, seed: int = 1) -> FGCLIP2:
    torch.manual_seed(seed)
    m = FGCLIP2(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.1)
    return m


def _tensors(b: ImageBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.from_numpy(b.pixels), torch.from_numpy(b.mask), torch.from_numpy(b.shapes)


def _transform(cfg: FGCLIP2Config) -> NaFlexTransform:
    return NaFlexTransform(patch_size=cfg.vision.patch_size)


# ---- vision: one pass, padding, mixed batches ---------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_one_pass_equals_separate_paths(cfg: FGCLIP2Config) -> None:
    m = _model(cfg)
    b = _transform(cfg).collate([_transform(cfg).item(im) for im in _images()])
    pv, mask, ss = _tensors(b)
    with torch.inference_mode():
        glob, maps = m.encode_image_and_dense(pv, mask, ss)
        torch.testing.assert_close(glob, m.encode_image(pv, mask, ss), rtol=0, atol=1e-6)
        dense = m.encode_dense(pv, mask, ss)
    for i, (h, w) in enumerate(b.shapes.tolist()):
        torch.testing.assert_close(maps[i], dense[i, : h * w].reshape(h, w, -1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_padding_rows_change_nothing(cfg: FGCLIP2Config) -> None:
    m = _model(cfg)
    tr = _transform(cfg)
    items = [tr.item(im) for im in _images(2)]
    short = tr.collate(items)
    long = tr.collate(items, short.pixels.shape[1] + 37)
    long.pixels[long.mask == 0] = 7.0  # garbage in padding rows must be ignored too
    boxes = [torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.1, 0.7, 0.9]])] * len(items)
    with torch.inference_mode():
        g1, m1 = m.encode_image_and_dense(*_tensors(short))
        g2, m2 = m.encode_image_and_dense(*_tensors(long))
        r1, r2 = m.encode_regions(m1, boxes), m.encode_regions(m2, boxes)
    torch.testing.assert_close(g1, g2, rtol=0, atol=2e-5)
    torch.testing.assert_close(r1, r2, rtol=0, atol=2e-5)
    for a, b in zip(m1, m2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_mixed_shapes_batch_equals_one_by_one(cfg: FGCLIP2Config) -> None:
    m = _model(cfg)
    tr = _transform(cfg)
    items = [tr.item(im) for im in _images(3)]
    assert len({it.shape for it in items}) > 2  # really mixed
    with torch.inference_mode():
        g, maps = m.encode_image_and_dense(*_tensors(tr.collate(items)))
        for i, it in enumerate(items):
            g1, maps1 = m.encode_image_and_dense(*_tensors(tr.collate([it])))
            torch.testing.assert_close(g[i], g1[0], rtol=0, atol=2e-5)
            torch.testing.assert_close(maps[i], maps1[0], rtol=0, atol=2e-5)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_full_image_region_is_the_mean_of_the_real_dense_rows(cfg: FGCLIP2Config) -> None:
    m = _model(cfg)
    b = _transform(cfg).collate([_transform(cfg).item(im) for im in _images(4)])
    with torch.inference_mode():
        _, maps = m.encode_image_and_dense(*_tensors(b))
        reg = m.encode_regions(maps, [torch.tensor([[0.0, 0.0, 1.0, 1.0]])] * len(maps))
    for i, mp in enumerate(maps):
        torch.testing.assert_close(reg[i], mp.reshape(-1, mp.shape[-1]).mean(0), rtol=0, atol=1e-5)


def test_position_grid_is_used_as_is_at_its_own_size() -> None:
    cfg = FGCLIP2Config.tiny(grid=6)
    emb = _model(cfg).vision_model.embeddings
    with torch.no_grad():
        same = emb.positions([(6, 6)], 40, torch.float32)[0]
        torch.testing.assert_close(same[:36], emb.position_embedding.weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(same[36:], same[:1].expand(4, -1))  # padding rows get row 0


def test_a_three_times_shrink_is_antialiased() -> None:
    cfg = FGCLIP2Config.tiny(grid=6)
    emb = _model(cfg).vision_model.embeddings
    with torch.no_grad():
        got = emb.positions([(2, 2)], 4, torch.float32)[0]
    table = emb.position_embedding.weight.reshape(6, 6, -1).permute(2, 0, 1)[None]
    plain = torch.nn.functional.interpolate(table, size=(2, 2), mode="bilinear", align_corners=False)
    assert (got - plain[0].reshape(table.shape[1], 4).t()).abs().max() > 1e-3  # not plain bilinear


# ---- text walks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_text_walks_lengths_heads_and_position_tables(cfg: FGCLIP2Config) -> None:
    m = _model(cfg)
    t = cfg.text
    ids = torch.randint(4, t.vocab_size, (3, t.max_position_embeddings))
    long_ids = torch.randint(4, t.vocab_size, (2, t.longtext_len))
    with torch.inference_mode():
        short, box = m.encode_text(ids, "short"), m.encode_text(ids, "box")
        pooled = m.text_model(ids, TextPath.SHORT)
        torch.testing.assert_close(short, m.text_model.head(pooled))
        torch.testing.assert_close(box, m.boxtext_head(pooled))  # the raw pooled state, no text head
        long = m.encode_text(long_ids, "long")
        with pytest.raises(InputError, match="exactly"):
            m.encode_text(ids[:, :-1], "short")
        with pytest.raises(InputError, match="exactly"):
            m.encode_text(long_ids[:, :-1], "long")
        emb = m.text_model.embeddings
        emb.position_embedding_res.weight[: t.keep_len] += 5.0  # rows the long walk never reads
        emb.position_embedding_ori.weight[t.keep_len :] += 5.0
        torch.testing.assert_close(m.encode_text(long_ids, "long"), long)
        pos = emb.positions(t.longtext_len, TextPath.LONG)
        torch.testing.assert_close(pos[: t.keep_len], emb.position_embedding_ori.weight[: t.keep_len])
        torch.testing.assert_close(pos[t.keep_len :], emb.position_embedding_res.weight[t.keep_len :])
        emb.position_embedding_res.weight[-1] += 5.0  # the pooled position's row: read by the long walk
        assert not torch.allclose(m.encode_text(long_ids, "long"), long)


def test_text_pools_the_last_position_so_padding_changes_the_vector() -> None:
    m = _model(FGCLIP2Config.tiny())
    ids = torch.full((1, 64), 0)
    ids[0, :3] = torch.tensor([10, 11, 1])
    other = ids.clone()
    other[0, 3:] = 5  # a different pad id
    with torch.inference_mode():
        assert not torch.allclose(m.encode_text(ids, "short"), m.encode_text(other, "short"))


# ---- preprocessing -------------------------------------------------------------------------------
def test_naflex_size_fits_the_budget_and_the_budget_buckets() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        h, w = (int(x) for x in rng.integers(1, 3000, 2))
        p = int(rng.choice([8, 14, 16]))
        budget = int(rng.choice([64, 128, 256, 576, 1024]))
        hh, ww = naflex_size(h, w, p, budget)
        assert hh % p == 0 and ww % p == 0 and hh >= p and ww >= p
        assert (hh // p) * (ww // p) <= budget or (hh == p or ww == p)
    assert [
        dynamic_budget(h, w, 16) for h, w in [(16, 16), (176, 176), (208, 208), (384, 384), (440, 460), (800, 800)]
    ] == [
        128,
        128,
        256,
        576,
        784,
        1024,
    ]


def test_each_image_gets_its_own_budget_and_the_reference_batch_rule_is_kept() -> None:
    tr = NaFlexTransform(patch_size=16)
    small, big = _images(6, [(40, 28), (300, 500)])
    assert tr.item(small).budget == 128 and tr.item(big).budget == 576
    ref = tr.batch([small, big])  # the reference: one budget for the batch (the largest)
    assert ref.pixels.shape[1] == 576 and ref.mask[0].sum() > tr.item(small).patches
    fixed = tr.batch([small, big], max_num_patches=64)
    assert fixed.pixels.shape[1] == 64 and (fixed.shapes.prod(1) <= 64).all()


# ---- checkpoints, registry, tokenizer, encoder ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fgclip2(tmp_path_factory.mktemp("fgclip2") / "tiny")


def test_config_defaults_fill_missing_keys(tiny2: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "sparse"
    shutil.copytree(tiny2, d)
    raw = json.loads((d / "config.json").read_text())
    for k in ("hidden_act", "layer_norm_eps", "keep_len", "longtext_len", "projection_size", "max_position_embeddings"):
        raw["text_config"].pop(k)
    for k in ("hidden_act", "layer_norm_eps", "num_channels", "patch_size"):
        raw["vision_config"].pop(k)
    (d / "config.json").write_text(json.dumps(raw))
    full, _ = load_model(tiny2)
    sparse, spec = load_model(d)
    assert sparse.config == full.config
    assert (spec.family, spec.short_length, spec.long_length, spec.patch_size) == ("fgclip2", 64, 196, 16)


def test_registry_names_families_and_rejects_unknown_or_mismatched_ones(tiny2: Path, tiny_model_dir: Path) -> None:
    from fgsearch.model import REGISTRY

    assert {n: REGISTRY[n].hub_id for n in ("fg-clip2-base", "fg-clip2-large", "fg-clip2-so400m")} == {
        "fg-clip2-base": "qihoo360/fg-clip2-base",
        "fg-clip2-large": "qihoo360/fg-clip2-large",
        "fg-clip2-so400m": "qihoo360/fg-clip2-so400m",
    }
    assert all(REGISTRY[n].family == "fgclip2" for n in REGISTRY if n.startswith("fg-clip2"))
    with pytest.raises(CheckpointError, match=r"unknown model family 'nope'.*fgclip, fgclip2"):
        get_family("nope")
    with pytest.raises(CheckpointError, match="registered as family 'fgclip2'"):
        read_family_config(tiny_model_dir, ModelSpec(name="x", family="fgclip2", local_dir=str(tiny_model_dir)))
    with pytest.raises(CheckpointError, match="unknown model family"):
        read_family_config(tiny2, ModelSpec(name="x", family="siglip", local_dir=str(tiny2)))


def test_unknown_model_type_is_an_error(tiny2: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "odd"
    shutil.copytree(tiny2, d)
    raw = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**raw, "model_type": "siglip2"}))
    with pytest.raises(CheckpointError, match="model_type 'siglip2'; supported: clip"):
        load_model(d)


def test_missing_tokenizer_is_named(tiny2: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "notok"
    shutil.copytree(tiny2, d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json"):
        load_model(d)


def test_tokenizer_lowercases_appends_eos_pads_and_truncates_keeping_eos(tiny2: Path) -> None:
    enc = TorchEncoder.load(str(tiny2), device="cpu")
    tok = enc.tokenizer
    a = tok(["A Red MUG", "一只黑色的猫"], "short")
    assert a.shape == (2, 64)
    assert torch.equal(a[0], tok(["a red mug"], "short")[0])
    for row in a:
        n = int((row != 0).sum())
        assert row[n - 1] == 1 and (row[n:] == 0).all()  # <eos> last, <pad>=0 after it
    assert 3 not in a[1].tolist()  # byte fallback: no <unk> for Chinese
    with pytest.warns(TextTruncatedWarning, match="long walk"):
        long = tok(["red mug " * 200], "long")
    assert long.shape == (1, 196) and long[0, -1] == 1


def test_encoder_rules_calibration_and_bilingual_queries(tiny2: Path) -> None:
    enc = TorchEncoder.load(str(tiny2), device="cpu")
    assert enc.family.name == "fgclip2" and enc.dim == 64
    cal = enc.calibration
    assert cal is not None and cal.kind == "sigmoid"
    assert cal.scale == pytest.approx(np.exp(2.3), rel=1e-5) and cal.bias == pytest.approx(-5.0)
    assert cal.probability(0.5) == pytest.approx(1 / (1 + np.exp(-(0.5 * np.exp(2.3) - 5.0))))
    assert enc.text_path("a red mug") is TextPath.SHORT and enc.region_walk("a red mug") is TextPath.BOX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncatedWarning)
        assert enc.text_path("a red mug " * 40) is TextPath.LONG
        assert enc.region_walk("a red mug " * 40) is TextPath.LONG
    v = enc.encode_texts(["a red mug", "红色的杯子", "a red mug"], path=None)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5) and np.allclose(v[0], v[2])
    assert not np.allclose(v[0], v[1])
    box = enc.encode_texts(["a red mug"], path="box")
    assert not np.allclose(box[0], v[0])


def test_encoder_images_mixed_shapes_with_boxes_equal_one_by_one(tiny2: Path) -> None:
    enc = TorchEncoder.load(str(tiny2), device="cpu")
    ims = _images(8)
    boxes = [np.array([[0, 0, 1, 1], [0.25, 0.1, 0.75, 0.6]], np.float32)] * len(ims)
    both = enc.encode_images(ims, boxes=boxes, batch_size=8)
    for i, im in enumerate(ims):
        one = enc.encode_images([im], boxes=[boxes[i]])
        np.testing.assert_allclose(both.image[i], one.image[0], atol=1e-5)
        np.testing.assert_allclose(both.regions[i], one.regions[0], atol=1e-5)
    with pytest.raises(InputError, match="ImageBatch"):
        enc.encode_pixels(np.zeros((1, 3, 32, 32), np.float32))


def test_v1_family_has_no_box_walk_and_no_calibration(tiny_model_dir: Path) -> None:
    enc = TorchEncoder.load(str(tiny_model_dir), device="cpu")
    assert enc.family.name == "fgclip" and enc.calibration is None
    with pytest.raises(InputError, match="no 'box' text walk"):
        enc.encode_texts(["a cat"], path="box")
    assert enc.region_walk("a cat") is TextPath.SHORT


def test_save_and_reload_roundtrip_keeps_tokenizer_and_processor(tiny2: Path, tmp_path: Path) -> None:
    from fgsearch.model import save_model

    model, spec = load_model(tiny2)
    spec = replace(spec, max_patches=128, dynamic_patches=False)
    out = save_model(model, tmp_path / "again", spec)
    again, spec2 = load_model(out)
    assert (spec2.max_patches, spec2.dynamic_patches, spec2.family) == (128, False, "fgclip2")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    ids_a = TorchEncoder(model, spec, device="cpu").tokenizer(["红色的杯子 and a mug"], "short")
    ids_b = TorchEncoder(again, spec2, device="cpu").tokenizer(["红色的杯子 and a mug"], "short")
    assert torch.equal(ids_a, ids_b)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_text_last_layer_shortcut_equals_the_textbook_forward(cfg: FGCLIP2Config) -> None:
    """The last layer runs for the pooled (last) position only; a full pass gives the same vector."""
    m = _model(cfg)
    tm = m.text_model
    ids = torch.randint(4, cfg.text.vocab_size, (2, cfg.text.max_position_embeddings))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    for am in (None, mask):
        with torch.inference_mode():
            x = tm.embeddings.token_embedding(ids) + tm.embeddings.positions(ids.shape[1], TextPath.SHORT)
            km = None if am is None else am.bool()[:, None, None, :]
            for layer in tm.encoder.layers:
                x = layer(x, mask=km)
            naive = tm.head(tm.final_layer_norm(x)[:, -1])
            torch.testing.assert_close(m.encode_text(ids, "short", attention_mask=am), naive, rtol=0, atol=2e-6)


def _oracle2_adapter(checkpoint: Path) -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "oracle2_adapter.py"
    spec = importlib.util.spec_from_file_location("oracle2_adapter_under_test", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.load(str(checkpoint))


def test_position_stretch_keeps_the_references_20_rows_and_warns_once_when_keep_len_differs(tmp_path: Path) -> None:
    # the reference's resize_postion_embeding() hard-codes 20 kept rows: 4L - 60 rows, whatever keep_len says
    cfg = FGCLIP2Config.tiny(text_length=40, long_length=100, keep_len=16)
    adapter = _oracle2_adapter(write_fgclip2(tmp_path / "keep16", cfg))
    table = np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32)
    with pytest.warns(UserWarning, match="keep_len is 16.*keeping 20 rows"):
        got = np.asarray(adapter.resize_position_embedding(table))
    assert got.shape == (4 * 40 - 60, 64)
    t = table.astype(np.float64)
    want = [t[:20]]
    for i in range(20, 39):
        want.append(np.stack([(1 - j / 4) * t[i] + j / 4 * t[i + 1] for j in range(4)]))
    want.append(np.stack([t[39] + j / 4 * (t[39] - t[38]) for j in range(4)]))
    np.testing.assert_allclose(got, np.concatenate(want), rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: a second stretch with the same keep_len is silent
        adapter.resize_position_embedding(table)
        from fgsearch.model import stretch_short_positions

        assert stretch_short_positions(torch.from_numpy(table), keep_len=20).shape == (100, 64)  # no warning
