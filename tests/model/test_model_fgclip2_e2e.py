"""FG-CLIP 2 end to end: index / query / eval / train with a random tiny FG-CLIP 2 checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.model.tiny import write_fgclip2

SHAPES = [(120, 200), (200, 90), (97, 97), (40, 28), (300, 150), (64, 256), (180, 180), (120, 200)]  # (h, w)


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), terminal_width=120)


@pytest.fixture(scope="module")
def tiny2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fgclip2(tmp_path_factory.mktemp("fgclip2-e2e") / "tiny2")


def _photos(root: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(SHAPES):
        arr = np.full((h, w, 3), 40 + 25 * i, np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        arr[y : y + h // 3, x : x + w // 3] = rng.integers(0, 256, 3, dtype=np.uint8)  # an "object"
        p = root / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_index_mixed_shapes_then_query_in_english_and_chinese(tiny2: Path, tmp_path: Path) -> None:
    from fgsearch.library import Library
    from fgsearch.model import TorchEncoder
    from fgsearch.search import QueryInfo, SearchQuery

    photos = _photos(tmp_path / "photos")
    lib_dir = tmp_path / "lib"
    # fp32: the vectors are compared with an fp32 encoder's below (--precision auto takes bf16 on a bf16 CPU)
    r = run("index", str(tmp_path / "photos"), "--library", str(lib_dir), "--model", str(tiny2), "--device", "cpu",
            "--batch-size", "4", "--quiet", "--precision", "fp32")  # fmt: skip
    assert r.exit_code == 0, r.output
    for text in ("a red mug", "一只黑色的猫坐在窗台上"):
        r = run("query", text, "--library", str(lib_dir), "--json", "--device", "cpu", "-k", "3")  # fmt: skip
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        assert (out["query"]["text_path"], out["query"]["region_walk"]) == ("short", "box")
        assert len(out["results"]) == 3
        for h in out["results"]:  # the model's own probability beside each cosine
            assert h["probability"] == pytest.approx(
                1 / (1 + np.exp(-(h["global_score"] * np.exp(2.3) - 5.0))), abs=2e-6
            )
            assert h["region_probability"] is not None and 0 < h["region_probability"] < 1
    r = run("query", "a red mug", "--library", str(lib_dir), "--json", "--device", "cpu", "-k", "2",
            "--by", "region", "--text-path", "box")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (json.loads(r.output)["query"]["text_path"], json.loads(r.output)["query"]["region_walk"]) == ("box", "box")
    enc = TorchEncoder.load(str(tiny2), device="cpu")
    with Library.open(lib_dir, read_only=True, encoder=enc) as lib:
        st = lib.status()
        assert st["family"] == "fgclip2" and st["score_calibration"]["kind"] == "sigmoid"
        assert st["score_calibration"]["bias"] == pytest.approx(-5.0)
        info = QueryInfo()
        lib.search(query=SearchQuery(text="a red mug", k=2), info=info)
        assert (info.text_path, info.region_walk) == ("short", "box")  # region matching: the box walk
        # --text-path box forces the box walk for a text the rule sends down the long walk
        long_text = "a red mug on a wooden table " * 40
        assert enc.region_walk(long_text).value == "long"
        info = QueryInfo()
        hit = lib.search(query=SearchQuery(text=long_text, k=1, by="region", text_path="box"), info=info)[0]
        assert (info.text_path, info.region_walk) == ("box", "box")
        assert any("truncated to 64 tokens (box walk)" in n for n in info.notices)
        with pytest.warns(UserWarning, match="box walk"):
            box_vec = enc.encode_texts([long_text], path="box")[0]
        want = box_vec @ lib.region_index.get(np.asarray([hit.region_id]))[0]
        assert hit.score == pytest.approx(float(want), abs=1e-5)
        # every image was embedded in a padded mixed-shape batch exactly as it is alone
        rows = {r.path: r.id for r in lib.catalog.contents_by_ids(list(lib.catalog.all_vector_ids()[0]))}
        for p in photos:
            alone = enc.encode_images([Image.open(p).convert("RGB")]).image[0]
            stored = lib.global_index.get(np.asarray([rows[str(p)]], np.int64))[0]
            np.testing.assert_allclose(stored, alone, atol=2e-5)


def test_auto_regions_come_from_each_images_own_map(tiny2: Path, tmp_path: Path) -> None:
    import torch

    from fgsearch.library import Library
    from fgsearch.model import TorchEncoder
    from fgsearch.regions import RegionSettings, auto_boxes

    photos = _photos(tmp_path / "photos")
    enc = TorchEncoder.load(str(tiny2), device="cpu")
    settings = RegionSettings(proposer="auto", max_regions=6)
    with Library.open(tmp_path / "lib", model=str(tiny2), regions=settings, encoder=enc) as lib:
        rep = lib.index(tmp_path / "photos", batch_size=len(photos))  # one padded batch of 7 shapes
        assert rep.indexed == len(photos) and rep.regions > 0
        ids = list(lib.catalog.all_vector_ids()[0])
        rows = {r.path: r.id for r in lib.catalog.contents_by_ids(ids)}
        stored = lib.catalog.region_arrays(ids)
        batch = enc.preprocess([Image.open(p).convert("RGB") for p in photos])  # the same batch
        with torch.inference_mode():
            _, maps = enc.family.encode_image_and_dense(enc.model, batch.to("cpu"))
        for p, m, (h, w) in zip(photos, maps, batch.shapes.tolist(), strict=True):
            assert m.shape[:2] == (h, w)  # each image's own (h, w) grid
            boxes, _ = auto_boxes(m.float().numpy(), settings)  # proposed on that map alone
            _, got = stored[rows[str(p)]]
            np.testing.assert_allclose(got, boxes, atol=1e-6)


@pytest.mark.slow
def test_eval_and_train_accept_an_fgclip2_checkpoint(tiny2: Path, tmp_path: Path) -> None:
    from fgsearch.model import load_model
    from fgsearch.trainer.fineshapes import make_fineshapes

    data = make_fineshapes(tmp_path / "fs", n=12, seed=3, heldout=0.25)
    r = run("eval", "fineshapes", "--data", str(data), "--model", str(tiny2), "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["settings"]["model"]["family"] == "fgclip2"
    assert {"t2i_r1", "hardneg_acc", "region_text_acc"} <= set(res["metrics"])
    out = tmp_path / "trained"
    r = run("train", "--data", str(data), "--out", str(out), "--init", str(tiny2), "--steps", "2",
            "--batch-size", "4", "--warmup", "1", "--eval-every", "2", "--device", "cpu")  # fmt: skip
    assert r.exit_code == 0, r.output
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(rec["loss"]) for rec in log) and log[-1]["step"] == 2
    assert log[-1]["global"] > 0 and log[-1]["region"] > 0
    before, _ = load_model(tiny2)
    after, spec = load_model(out)
    assert spec.family == "fgclip2" and (out / "tokenizer.json").exists()
    changed = [k for k, v in after.state_dict().items() if not np.allclose(v.numpy(), before.state_dict()[k].numpy())]
    assert {"boxtext_head.weight", "longtext_head.weight", "logit_bias"} <= set(changed)
    assert any(k.startswith("vision_model.encoder") for k in changed)


@pytest.mark.slow
def test_train_from_a_fresh_tiny_fgclip2_with_a_tokenizer_of_the_datas_texts(tmp_path: Path) -> None:
    import hashlib

    from fgsearch.model import load_model
    from fgsearch.model.hf_tokenizer import _tokenizers
    from fgsearch.trainer.fineshapes import make_fineshapes

    data = make_fineshapes(tmp_path / "fs", n=16, seed=5, heldout=0.25)
    out = tmp_path / "trained"
    args = ["train", "--data", str(data), "--out", str(out), "--init", "tiny-fgclip2", "--batch-size", "4",
            "--warmup", "1", "--eval-every", "2", "--device", "cpu"]  # fmt: skip
    r = run(*args, "--steps", "2")
    assert r.exit_code == 0, r.output
    _, spec = load_model(out)
    assert (
        spec.family == "fgclip2"
        and (out / "tokenizer.json").read_bytes() == (out / "init-tiny-fgclip2" / "tokenizer.json").read_bytes()
    )
    tok = _tokenizers().Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() > 300  # merges learned from the data's captions, beyond bytes and specials
    assert len(tok.encode("square").ids) <= 2  # a word of the data is (nearly) one token
    digest = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    r = run(*args, "--steps", "3")  # resumes with the tokenizer it started with
    assert r.exit_code == 0 and "resuming" in r.output, r.output
    assert hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest() == digest
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and all(np.isfinite(rec["loss"]) for rec in log)
    r = run("train", "--data", str(data), "--out", str(tmp_path / "bad"), "--init", "tiny-fgclip2",
            "--tiny-image-size", "100", "--tiny-patch", "12", "--steps", "1", "--device", "cpu")  # fmt: skip
    assert r.exit_code != 0 and "--tiny-image-size 100 must be a multiple of --tiny-patch 12" in r.output
