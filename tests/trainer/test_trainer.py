"""Trainer: FineShapes, the streaming readers, the losses (world size 1 and DDP), exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fgsearch.errors import DataError
from fgsearch.trainer.data import ReadStats, SampleStream, iter_json_array, resolve_data
from fgsearch.trainer.fineshapes import make_fineshapes
from fgsearch.trainer.losses import global_loss, hardneg_loss, region_loss, symmetric_infonce


def test_fineshapes_is_deterministic_and_finehard_shaped(tmp_path: Path) -> None:
    a = make_fineshapes(tmp_path / "a", n=20, seed=3)
    b = make_fineshapes(tmp_path / "b", n=20, seed=3)
    ra = json.loads((a / "jsonfiles" / "train.json").read_text())
    assert ra == json.loads((b / "jsonfiles" / "train.json").read_text())
    assert (a / "images" / "000000.png").read_bytes() == (b / "images" / "000000.png").read_bytes()
    held = json.loads((a / "jsonfiles" / "heldout.json").read_text())
    assert len(ra) == 18 and len(held) == 2
    for rec in ra:
        assert rec["caption"] and rec["short_caption"] and 2 <= len(rec["bbox_info"]) <= 4
        for b_ in rec["bbox_info"]:
            x1, y1, x2, y2 = b_["bbox"]
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            negs = list(b_["short_expr_negs"].values())
            assert len(negs) == 10 and b_["short_expr"] not in negs
            for neg in negs:  # exactly one attribute word differs
                diff = [p for p, q in zip(b_["short_expr"].split(), neg.split(), strict=False) if p != q]
                assert len(diff) == 1 or neg.split()[-2:] != b_["short_expr"].split()[-2:]


def test_streaming_reader_reports_and_skips_bad_records(tmp_path: Path) -> None:
    root = make_fineshapes(tmp_path / "fs", n=6, seed=1, heldout=0)
    recs = json.loads((root / "jsonfiles" / "train.json").read_text())
    recs[1]["bbox_info"][0]["bbox"] = [0.8, 0.1, 0.2, 0.5]  # inverted box
    recs[2]["caption"] = ""  # empty text
    recs[3]["f_path"] = "images/missing.png"  # missing image
    text = json.dumps(recs, indent=1)
    # a malformed record in the middle: the reader resynchronises at the next record
    start = text.index('"caption": "', text.index('"f_path": "images/000004.png"'))
    end = text.index('",', start + 12) + 1
    text = text[:start] + '"caption": not-json' + text[end:]  # a bad value; the record's brackets still balance
    (root / "jsonfiles" / "train.json").write_text(text)
    src = resolve_data(root)
    stats = ReadStats()
    good = list(src.iter_samples(stats))
    assert [Path(s.image).name for s in good] == ["000000.png", "000005.png"]
    assert stats.bad == 4
    joined = " | ".join(stats.reasons)
    assert "train.json:1: invalid bbox" in joined and "train.json:2: empty caption" in joined
    assert "missing" in joined and "train.json:4: malformed JSON" in joined
    # a file cut short: the complete records are read, the cut one is reported, nothing raises
    (root / "jsonfiles" / "train.json").write_text(text[: len(text) // 2])
    stats = ReadStats()
    assert len(list(resolve_data(root).iter_samples(stats))) == 1 and "malformed JSON" in stats.reasons[-1]


def test_stream_reader_is_incremental(tmp_path: Path) -> None:
    p = tmp_path / "big.json"
    p.write_text("[" + ",".join(json.dumps({"i": i, "pad": "x" * 100}) for i in range(3000)) + "]")
    got = [v["i"] for _, v in iter_json_array(p, ReadStats(), chunk=4096)]
    assert got == list(range(3000))
    (tmp_path / "notarray.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="JSON array"):
        list(iter_json_array(tmp_path / "notarray.json", ReadStats()))


def test_jsonl_and_resolution_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    lines = [
        {
            "image": "a.png",
            "caption": "a black square",
            "regions": [{"box": [0, 0, 0.5, 0.5], "caption": "x", "negatives": ["y", "z"]}],
        },
        {"image": "a.png", "caption": ""},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    stats = ReadStats()
    got = list(resolve_data(tmp_path / "d.jsonl").iter_samples(stats))
    assert len(got) == 1 and got[0].negatives == [["y", "z"]] and stats.bad == 2
    monkeypatch.delenv("FGSEARCH_FINEHARD", raising=False)
    with pytest.raises(DataError, match="img2dataset"):
        resolve_data("finehard")
    with pytest.raises(DataError, match="does not exist"):
        resolve_data(tmp_path / "nope")


def test_stream_resume_skips_exactly(tmp_path: Path) -> None:
    root = make_fineshapes(tmp_path / "fs", n=30, seed=2, heldout=0)
    stream = SampleStream(resolve_data(root), seed=5, buffer=8)
    full = [s.source for s in stream.epoch(1)]
    assert sorted(full) == sorted(f"train.json:{i}" for i in range(30)) and full != sorted(full)
    assert [s.source for s in stream.epoch(1, skip=11)] == full[11:]
    half = [s.source for s in SampleStream(resolve_data(root), seed=5, rank=1, world=2).epoch(0)]
    assert len(half) == 15


def test_losses_match_hand_computation() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    scale = torch.tensor(math.log(10.0))
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = 10.0 * an @ bn.T
    expected = 0.0
    for i in range(4):
        expected += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    assert symmetric_infonce(a, b, scale).item() == pytest.approx(expected.item() / 8, rel=1e-5)
    c = torch.randn(4, 8)
    assert global_loss(a, b, c, scale).item() == pytest.approx(
        (symmetric_infonce(a, b, scale) + symmetric_infonce(a, c, scale)).item(), rel=1e-6
    )
    assert region_loss(a, b, scale).item() == pytest.approx(symmetric_infonce(a, b, scale).item())
    texts = torch.randn(4, 3, 8)
    texts[:, 0] = a * 5  # the positive is the region itself: near-zero loss at a high temperature
    assert hardneg_loss(a, texts, torch.tensor(math.log(100.0))).item() < 0.05
    r = F.normalize(a, dim=-1)
    t = F.normalize(torch.randn(4, 3, 8), dim=-1)
    lg = 10.0 * torch.einsum("mp,mkp->mk", r, t)
    manual = -torch.log_softmax(lg, dim=1)[:, 0].mean()
    assert hardneg_loss(a, t, scale).item() == pytest.approx(manual.item(), rel=1e-5)


def _ddp_worker(rank: int, world: int, init: str, data: dict, out: str) -> None:
    import torch.distributed as dist

    from fgsearch.trainer.losses import global_loss, hardneg_loss, region_loss

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8)  # the same weights on every rank
    scale = torch.nn.Parameter(torch.tensor(2.0))
    sl = slice(rank * 3, rank * 3 + 3)
    img, long, short = (lin(data[k][sl]) for k in ("img", "long", "short"))
    reg, rtext, hard = lin(data["reg"][sl]), lin(data["rtext"][sl]), lin(data["hard"][sl])
    loss = (
        global_loss(img, long, short, scale)
        + 0.1 * region_loss(reg, rtext, scale)
        + 0.5 * hardneg_loss(reg, hard, scale)
    )
    loss.backward()
    for p in (lin.weight, lin.bias, scale):  # what DDP does after backward: average gradients over ranks
        dist.all_reduce(p.grad)
        p.grad /= world
    if rank == 0:
        torch.save({"w": lin.weight.grad, "b": lin.bias.grad, "s": scale.grad}, out)
    dist.barrier()  # nobody tears the group down while the other rank still talks
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_equal_single_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    data = {k: torch.randn(6, 8) for k in ("img", "long", "short", "reg", "rtext")}
    data["hard"] = torch.randn(6, 4, 8)
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", data, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8)
    scale = torch.nn.Parameter(torch.tensor(2.0))
    img, long, short = (lin(data[k]) for k in ("img", "long", "short"))
    reg, rtext, hard = lin(data["reg"]), lin(data["rtext"]), lin(data["hard"])
    loss = (
        global_loss(img, long, short, scale)
        + 0.1 * region_loss(reg, rtext, scale)
        + 0.5 * hardneg_loss(reg, hard, scale)
    )
    loss.backward()
    torch.testing.assert_close(got["w"], lin.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["b"], lin.bias.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["s"], scale.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_train_resume_is_exact_and_output_loads(tmp_path: Path) -> None:
    from fgsearch.model import load_model
    from fgsearch.trainer import TrainConfig, train

    data = make_fineshapes(tmp_path / "fs", n=40, seed=0)
    base = dict(
        data=str(data),
        steps=4,
        batch_size=6,
        save_every=100,
        eval_every=4,
        log_every=1,
        warmup=1,
        tiny_image_size=32,
        tiny_patch=8,
        tiny_width=32,
        tiny_layers=1,
    )
    train(TrainConfig(out=str(tmp_path / "a"), **base))
    train(TrainConfig(out=str(tmp_path / "b"), **base), stop_at=2)
    assert not (tmp_path / "b" / "model.safetensors").exists()
    train(TrainConfig(out=str(tmp_path / "b"), **base))
    la = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert set(la[-1]["eval"]) == {"t2i_r1", "i2t_r1", "region_text_acc", "hardneg_acc"}
    _, spec = load_model(tmp_path / "a")
    assert spec.image_size == (32, 32)
    cfg = json.loads((tmp_path / "a" / "train_config.json").read_text())
    assert cfg["steps"] == 4 and (tmp_path / "a" / "checkpoints").is_dir()


# the smallest model and run that still exercises every stage (a few seconds on a CPU)
TINY_RUN = dict(
    steps=2,
    batch_size=4,
    save_every=100,
    eval_every=2,
    warmup=1,
    tiny_image_size=32,
    tiny_patch=8,
    tiny_width=32,
    tiny_layers=1,
    tiny_text_width=32,
    tiny_text_layers=1,
    tiny_dim=16,
)


class _Planted:
    """Pickles as a call to os.mkdir: a checkpoint holding it runs code when unpickled freely."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.mkdir, (self.marker,)


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path) -> None:
    from fgsearch.trainer import TrainConfig, train

    data = make_fineshapes(tmp_path / "fs", n=8, seed=0)
    ck = tmp_path / "out" / "checkpoints" / "step-0000001"
    ck.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save({"model": _Planted(str(marker)), "step": 1, "position": [0, 4]}, ck / "state.pt")
    with pytest.raises(DataError, match=r"could run code; delete .*step-0000001 or run with --no-resume") as e:
        train(TrainConfig(data=str(data), out=str(tmp_path / "out"), **TINY_RUN))
    assert "\n" not in str(e.value)
    assert not marker.exists()
    # a truncated state file is refused with the same fix
    (ck / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"cannot resume from .*unreadable"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "out"), **TINY_RUN))
