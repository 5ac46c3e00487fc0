"""run_eval end to end: a tiny random model on every task, and a one-hot encoder with exact answers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from _eval_data import (
    OneHotEncoder,
    write_coco_captions,
    write_coco_instances,
    write_dci,
    write_fgovd,
    write_fineshapes,
    write_karpathy,
    write_sharegpt4v,
    write_urban1k,
)

from fgsearch.errors import InputError
from fgsearch.eval import TASKS, EvalResult, run_eval

# 4 images of classes [0, 1, 2, 2], 2 captions each (the same case as test_eval_metrics, by hand)
CLASSES = [0, 1, 2, 2]
CAPTIONS = [["c0 one", "c1 two"], ["c1 three", "c3 four"], ["c2 five", "c2 six"], ["c2 seven", "c0 eight"]]


def _write(task: str, root: Path) -> Path:
    """A tiny dataset for ``task``; returns the --data path."""
    long = [" ".join(c) for c in CAPTIONS]
    if task == "flickr30k":
        return write_karpathy(root, "flickr30k", CLASSES, CAPTIONS)
    if task == "coco":
        return write_coco_captions(root, CLASSES, CAPTIONS)
    if task == "dci":
        return write_dci(root, CLASSES, long)
    if task == "sharegpt4v":
        return write_sharegpt4v(root, CLASSES, long, extra=0)
    if task == "urban1k":
        return write_urban1k(root, CLASSES, long)
    if task == "fgovd":
        write_fgovd(root, [(1, 2, "c1", ["c2", "c3"]), (3, 3, "c3", ["c0"])])
        return root
    if task == "coco-boxcls":
        return write_coco_instances(root, [(1, 2, [([0, 0, 24, 32], 20), ([24, 0, 24, 32], 30)])])
    assert task == "fineshapes"
    return write_fineshapes(root, [(1, 2, "cap c1", [("c1", ["c2"]), ("c2", ["c1", "c3"])]), (3, 3, "cap c3", [])])


def test_registry_lists_every_task() -> None:
    assert set(TASKS) == {"flickr30k", "coco", "dci", "sharegpt4v", "urban1k", "fgovd", "coco-boxcls", "fineshapes"}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_tiny_model_every_task(task: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    data = _write(task, tmp_path / "data")
    seen: list[tuple[str, int, int]] = []
    res = run_eval(task, data, tiny_model_dir, batch_size=3, device="cpu", progress=lambda *a: seen.append(a))
    assert isinstance(res, EvalResult) and res.task == task
    expected = {
        "fgovd": {"hardneg_acc"},
        "coco-boxcls": {"top1_acc", "top5_acc"},
        "fineshapes": {f"{d}_r{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)} | {"hardneg_acc", "region_text_acc"},
    }.get(task, {f"{d}_r{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)})
    assert set(res.metrics) == expected
    assert all(0.0 <= v <= 100.0 for v in res.metrics.values())
    if "t2i_r10" in res.metrics:
        assert res.metrics["t2i_r10"] == 100.0  # 4 images only
    s = res.settings
    assert s["model"]["source"] == str(tiny_model_dir) and len(s["model"]["fingerprint"]) == 16
    assert s["data"] == str(Path(data).resolve()) and s["device"] == "cpu" and s["units"] == "percent"
    assert s["text_path"] == TASKS[task].text_path and s["sizes"]["images"] >= 1 and s["date"]
    # progress starts at 0 and reaches the end of each stage; images advance one batch of 3 at a time
    finals = {st: (d, t) for st, d, t in seen}
    assert finals and all(d == t for d, t in finals.values())
    img_stage = [d for st, d, _t in seen if st.startswith("images")]
    assert img_stage[0] == 0 and all(0 < b - a <= 3 for a, b in itertools.pairwise(img_stage))
    # the JSON record round-trips
    js = json.loads(res.to_json())
    assert js["metrics"] == res.metrics and js["settings"]["task"] == task


def test_paper_numbers_beside_ours(tmp_path: Path, tiny_model_dir: Path) -> None:
    res = run_eval("dci", _write("dci", tmp_path), tiny_model_dir, device="cpu")
    rows = {m: (ours, paper) for m, ours, paper in res.rows()}
    assert rows["t2i_r1"][1] == "60.6 (DCI)" and rows["i2t_r1"][1] == "61.8 (DCI)"
    assert rows["t2i_r5"][1] == ""
    assert float(rows["t2i_r1"][0]) == pytest.approx(res.metrics["t2i_r1"], abs=0.01)
    assert json.loads(res.to_json())["paper"]["t2i_r1"] == [{"value": 60.6, "label": "DCI"}]


@pytest.mark.parametrize("task", ["flickr30k", "coco", "urban1k"])
def test_exact_recall_with_known_features(task: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """One-hot features: the recall values are the ones worked out by hand in test_eval_metrics."""
    enc = OneHotEncoder(tiny_model_dir)
    data = _write(task, tmp_path)
    if task == "urban1k":  # one caption per image: the first one's class
        res = run_eval(task, data, enc, batch_size=2)
        # t2i: captions c0, c1, c2, c2 -> ranks 0, 0, 1 (image 3 ties), 1 ; i2t: same by symmetry
        assert res.metrics["t2i_r1"] == 50.0 and res.metrics["i2t_r1"] == 50.0
        return
    res = run_eval(task, data, enc, batch_size=3)
    assert res.metrics["t2i_r1"] == 25.0 and res.metrics["i2t_r1"] == 0.0
    assert res.metrics["t2i_r5"] == res.metrics["i2t_r5"] == 100.0
    res = run_eval(task, data, enc, batch_size=3, ties="index")
    assert res.metrics["t2i_r1"] == 50.0 and res.metrics["i2t_r1"] == 50.0
    assert ("texts:short", 8) in enc.calls  # retrieval on Flickr/COCO forces the short path


def test_exact_region_metrics_with_known_features(tmp_path: Path, tiny_model_dir: Path) -> None:
    enc = OneHotEncoder(tiny_model_dir)
    # the box is the left half: region classes 1, 3, 0, 5
    root = tmp_path / "fgovd"
    write_fgovd(
        root,
        [
            (1, 2, "c1", ["c2", "c3"]),  # right
            (3, 3, "c3", ["c0"]),  # right
            (0, 4, "c4", ["c0"]),  # wrong: the negative matches
            (5, 5, "c5", ["c5 again"]),  # a tie with a negative: wrong
        ],
    )
    res = run_eval("fgovd", root, enc, batch_size=3)
    assert res.metrics == {"hardneg_acc": 50.0}
    assert res.settings["sizes"]["regions"] == 4

    root = tmp_path / "coco"
    write_coco_instances(
        root,
        [
            (1, 2, [([0, 0, 24, 32], 20), ([24, 0, 24, 32], 30)]),  # c1 right, c2 right
            (3, 4, [([0, 0, 24, 32], 50)]),  # labelled c4 but the box shows c3: wrong
        ],
    )
    res = run_eval("coco-boxcls", root, enc, batch_size=3)
    assert res.metrics["top1_acc"] == pytest.approx(200 / 3)
    # with one-hot features every other class ties at 0: the true class is beyond the top 5
    assert res.metrics["top5_acc"] == pytest.approx(200 / 3)

    root = tmp_path / "fs"
    write_fineshapes(
        root,
        [
            (1, 2, "cap c1", [("c1", ["c2"]), ("c2", ["c1", "c3"])]),  # both regions right
            (3, 3, "cap c3", [("c4", ["c3"])]),  # region shows c3, labelled c4: wrong
            (5, 6, "cap c6", [("c5", [])]),  # no negatives: region->text only (right)
        ],
    )
    res = run_eval("fineshapes", root, enc, batch_size=2)
    assert res.metrics["hardneg_acc"] == pytest.approx(200 / 3)
    assert res.metrics["region_text_acc"] == 75.0  # texts c1, c2, c4, c5: 3 of 4 regions right
    # images of (left-half) classes 1, 3, 5 vs captions c1, c3, c6: the third matches nothing
    assert res.metrics["t2i_r1"] == res.metrics["i2t_r1"] == pytest.approx(200 / 3)
    assert res.metrics["t2i_r5"] == 100.0
    # long path for the 3 captions, short path for the 5 distinct region texts (c1..c5)
    assert enc.calls[-2:] == [("texts:long", 3), ("texts:short", 5)]


def test_bad_task_and_limit(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown evaluation task"):
        run_eval("imagenet", tmp_path)
    with pytest.raises(InputError, match="limit"):
        run_eval("dci", tmp_path, limit=0)
    with pytest.raises(InputError, match="batch size"):
        run_eval("dci", tmp_path, batch_size=0)


def test_limit_keeps_first_images(tmp_path: Path, tiny_model_dir: Path) -> None:
    res = run_eval("coco", _write("coco", tmp_path), tiny_model_dir, device="cpu", limit=2)
    assert res.settings["sizes"]["images"] == 2 and res.settings["sizes"]["texts"] == 4
    assert res.settings["limit"] == 2
    lines = dict(res.describe())
    assert "not comparable" in lines["limit"] and "images 2" in lines["sizes"]
    assert lines["model"].startswith("tiny-model") and res.settings["model"]["fingerprint"] in lines["model"]


def test_demo_model_beats_chance_on_fineshapes(tmp_path: Path) -> None:
    from fgsearch.trainer.fineshapes import make_fineshapes

    make_fineshapes(tmp_path, n=200, seed=12345, heldout=0.2)  # a seed the demo was not trained on
    res = run_eval("fineshapes", tmp_path, "demo", device="cpu", batch_size=32)
    n = res.settings["sizes"]["images"]
    m = res.metrics
    assert m["t2i_r1"] > 2 * 100 / n and m["i2t_r1"] > 2 * 100 / n
    assert m["hardneg_acc"] > 1.5 * 100 / 11  # 1 positive among 11
    assert m["region_text_acc"] > 2 * 100 / res.settings["sizes"]["region_texts"]


def test_readme_eval_example_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    import re

    page = (Path(__file__).resolve().parents[2] / "docs" / "eval.md").read_text()
    block = re.search(r"# Evaluation: `fgsearch eval`.*?## As a library\n\n```python\n(.*?)```", page, re.S)
    assert block, "docs/eval.md has no evaluation python example"
    data = _write("urban1k", tmp_path / "Urban1k")
    code = (
        block.group(1).replace('"/data/Urban1k"', repr(str(data))).replace('"fg-clip-base"', repr(str(tiny_model_dir)))
    )
    scope: dict[str, object] = {}
    exec(compile(code, "docs/eval.md", "exec"), scope)
    assert scope["result"].metrics["t2i_r10"] == 100.0  # type: ignore[attr-defined]


def test_corrupt_image_is_a_data_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    from fgsearch.errors import DataError

    data = _write("urban1k", tmp_path)
    (data / "image" / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot read evaluation image .*2\.jpg"):
        run_eval("urban1k", data, tiny_model_dir, device="cpu")


def test_a_limit_above_the_data_size_is_not_called_incomparable(tmp_path: Path, tiny_model_dir: Path) -> None:
    """--limit N on data with at most N images leaves nothing out: the report must not say the
    numbers are not comparable with the paper's (it did, whatever the limit)."""
    data = _write("coco", tmp_path)
    full = run_eval("coco", data, tiny_model_dir, device="cpu")
    res = run_eval("coco", data, tiny_model_dir, device="cpu", limit=1000)
    assert res.settings["sizes"] == full.settings["sizes"] and res.settings["limited"] is False
    line = dict(res.describe())["limit"]
    assert "not comparable" not in line and "nothing was left out" in line
    assert res.metrics == full.metrics
    cut = run_eval("coco", data, tiny_model_dir, device="cpu", limit=2)
    assert cut.settings["limited"] is True and "not comparable" in dict(cut.describe())["limit"]


def test_a_limit_runs_on_data_whose_later_images_are_missing(tmp_path: Path, tiny_model_dir: Path) -> None:
    """--limit is the quick check on a partial download: images past the limit may be absent. Finding
    out whether the limit left something out must not read (and demand) them."""
    data = _write("flickr30k", tmp_path)
    full = run_eval("flickr30k", data, tiny_model_dir, device="cpu")
    kept = run_eval("flickr30k", data, tiny_model_dir, device="cpu", limit=2)
    used = set(kept.settings["sizes"].items())
    assert used and full.settings["sizes"]["images"] > 2
    images = sorted((data / "flickr30k-images").iterdir())
    for p in images[2:]:
        p.unlink()
    res = run_eval("flickr30k", data, tiny_model_dir, device="cpu", limit=2)
    assert res.settings["limited"] is True and "not comparable" in dict(res.describe())["limit"]
    assert res.metrics == kept.metrics


# what --limit counts (images; FG-OVD: items), and how many of them each task's tiny data has
LIMIT_UNITS = {"fgovd": 2, "coco-boxcls": 1, "fineshapes": 2}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_says_not_comparable_only_when_the_limit_left_something_out(
    task: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Issue 23.5: `eval --limit N` must say "not comparable" only when the limit removed something,
    on every task: a limit of exactly the data's size, or above it, removes nothing; 1 removes
    something wherever the data holds more than one."""
    data = _write(task, tmp_path / "data")
    full = run_eval(task, data, tiny_model_dir, device="cpu")
    size = LIMIT_UNITS.get(task, len(CLASSES))
    for limit in (size, size + 1, 1000):
        res = run_eval(task, data, tiny_model_dir, device="cpu", limit=limit)
        line = dict(res.describe())["limit"]
        assert res.settings["limited"] is False and "not comparable" not in line, (limit, line)
        assert res.settings["sizes"] == full.settings["sizes"] and res.metrics == full.metrics
    cut = run_eval(task, data, tiny_model_dir, device="cpu", limit=1)
    assert cut.settings["limited"] is (size > 1)
    assert ("not comparable" in dict(cut.describe())["limit"]) is (size > 1)
