"""FG-CLIP 2's fast text tower (fgsearch.model.fast_text2): parity with torch and with the original
FG-CLIP 2 code (oracle2 fixture), a cold text query without torch, and a damaged or refused
cache said in one line (torch answers) and exported again by ``index --fast-text``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _library_data import scene
from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.model import load_encoder
from fgsearch.model.fast_text import (
    CHECK_TEXTS,
    GRAPH,
    META,
    FastTextUnusable,
    cache_dir,
    load_fast_text,
    prepare_fast_text,
)
from fgsearch.model.tiny import write_fgclip2

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ORACLE2 = Path(__file__).resolve().parents[1] / "fixtures" / "oracle2" / "visible"
TEXTS = [*CHECK_TEXTS[:3], CHECK_TEXTS[-1], "红色的杯子在笔记本电脑的左边", "word " * 300]  # short, long, CJK, cut


@pytest.fixture(scope="module")
def tiny2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fgclip2(tmp_path_factory.mktemp("fast-text2") / "tiny2")


def _agrees(torch_enc: object, fast: object) -> None:
    for walk in (None, "short", "box", "long"):
        with pytest.warns(UserWarning, match="truncated"):  # the last text is cut on every walk
            a = torch_enc.encode_texts(TEXTS, walk)  # type: ignore[attr-defined]
        with pytest.warns(UserWarning, match="truncated"):
            b = fast.encode_texts(TEXTS, walk)  # type: ignore[attr-defined]
        assert np.min(np.sum(a * b, axis=1)) > 0.99999, walk
        assert np.abs(a - b).max() < 1e-5, walk
    for t in TEXTS:
        assert fast.text_path(t) == torch_enc.text_path(t)  # type: ignore[attr-defined]
        assert fast.region_walk(t) == torch_enc.region_walk(t)  # type: ignore[attr-defined]


def test_oracle2_checkpoint_matches_torch_and_the_reference() -> None:
    """On the checkpoint the original FG-CLIP 2 code saved: the fast tower gives torch's vectors
    on every walk, and the reference's own text features for the reference's token ids."""
    checkpoint = ORACLE2 / "checkpoint"
    torch_enc = load_encoder(str(checkpoint), device="cpu")
    meta = prepare_fast_text(torch_enc)
    assert meta["family"] == "fgclip2" and meta["passed"] and meta["cosine_min"] >= 0.9999
    assert meta["texts"] > len(CHECK_TEXTS)  # the box walk was checked too
    fast = load_fast_text(str(checkpoint))
    _agrees(torch_enc, fast)
    expected = np.load(ORACLE2 / "expected.npz")
    for walk, head in (("short", 0), ("box", 1), ("long", 2)):
        got = fast._heads(expected[f"ids_{walk}"], walk == "long")[:, head]
        assert np.abs(got - expected[f"text_{walk}_features"]).max() < 1e-4, walk

    calls: list[int] = []
    session = fast.session

    class Counting:
        def run(self, *args: object) -> object:
            calls.append(1)
            return session.run(*args)

    fast.session = Counting()
    short, box = fast.encode_texts(["a new text"], "short"), fast.encode_texts(["a new text"], "box")
    assert len(calls) == 1  # the box walk of a text just asked by the short walk: no second pass
    assert np.allclose(box, torch_enc.encode_texts(["a new text"], "box"), atol=1e-5) and not np.allclose(short, box)


def _query_child(lib: Path, text: str, *extra: str) -> str:
    return (
        "import sys, json\n"
        "from fgsearch.console.cli import app\n"
        f"sys.argv = ['fgsearch', 'query', {text!r}, '--library', {str(lib)!r}, '--json', *{list(extra)!r}]\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )


def test_cold_query_without_torch_and_a_damaged_or_refused_tower(tmp_path: Path, tiny2: Path) -> None:
    """A cold text query on an FG-CLIP 2 library imports no torch and finds what torch finds; a
    cache that is damaged or refused is said in one line, torch answers, and ``index --fast-text``
    exports it again (one test: the library and the export are made once)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        scene(i).save(photos / f"p{i}.png")
    lib = tmp_path / "lib"
    runner = CliRunner()
    index = ["index", str(photos), "--library", str(lib), "--model", str(tiny2), "-q"]
    assert runner.invoke(app, index).exit_code == 0
    text = "the red mug left of a laptop"

    def cold(*extra: str) -> tuple[list[tuple[str, float]], str]:
        child = _query_child(lib, text, *extra)
        p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=True)
        hits = [(h["path"], h["score"]) for h in json.loads(p.stdout)["results"]]
        return hits, p.stderr.strip().splitlines()[-1]

    # fp32: the torch path's default on a CPU with native bf16 is bf16 (scores then differ by ~1e-3)
    good, imported = cold("--precision", "fp32")
    assert imported == "TORCH" and len(good) == 4  # nothing prepared: the torch path
    out = runner.invoke(app, [*index, "--fast-text"])
    assert out.exit_code == 0 and "fast text path: cosine to torch" in out.output, out.output
    assert "queries use it" in out.output
    fast_hits, imported = cold()
    assert imported == "NO-TORCH"

    def same(hits: list[tuple[str, float]]) -> bool:  # the torch fp32 hits, scores within 1e-4
        return [p for p, _ in hits] == [p for p, _ in good] and np.allclose(
            [s for _, s in hits], [s for _, s in good], atol=1e-4
        )

    assert same(fast_hits)
    _agrees(load_encoder(str(tiny2), device="cpu"), load_fast_text(str(tiny2)))

    from fgsearch.library.settings import clear_shared_encoders

    folder = cache_dir(load_fast_text(str(tiny2)).meta["fingerprint"])
    meta = json.loads((folder / META).read_text())
    query = ["query", text, "--library", str(lib), "--json", "--precision", "fp32"]

    def in_process(expect: str | None) -> None:
        clear_shared_encoders()
        out = runner.invoke(app, query)
        assert out.exit_code == 0, out.output
        notices = [line for line in out.stderr.splitlines() if "fast text tower" in line]
        assert (notices == []) if expect is None else (len(notices) == 1 and expect in notices[0]), out.stderr
        assert same([(h["path"], h["score"]) for h in json.loads(out.stdout)["results"]])  # torch answered

    backup = {n: (folder / n).read_bytes() for n in ("embeddings.npy", GRAPH, GRAPH + ".data")}
    damages = {
        "embeddings.npy": lambda f: f.write_bytes(f.read_bytes()[:-100]),  # cut short
        GRAPH + ".data": lambda f: f.unlink(),
        GRAPH: lambda f: f.write_bytes(b"\0" * f.stat().st_size),  # the same size, not a graph
    }
    for name, damage in damages.items():
        damage(folder / name)
        with pytest.raises(FastTextUnusable, match="damaged"):
            load_fast_text(str(tiny2))
        in_process("damaged")
        if name != GRAPH:
            (folder / name).write_bytes(backup[name])
    out = runner.invoke(app, [*index, "--fast-text"])  # a graph of the right size but unreadable: exported again
    assert out.exit_code == 0 and "queries use it" in out.output, out.output
    assert same(fast_hits) and load_fast_text(str(tiny2)).encode_texts([text]).shape == (1, meta["dim"])

    (folder / META).write_text(json.dumps({**meta, "passed": False, "cosine_min": 0.5}))
    in_process("failed its check against torch")
    shutil.rmtree(folder)
    in_process(None)  # never prepared: torch, and nothing to say


def test_one_tokenizer_pads_and_truncates_as_the_tokenizers_library_does(tiny2: Path) -> None:
    """HFTokenizer parses tokenizer.json once (no copy per walk length: seconds for a Gemma-sized
    vocabulary on every cold query) and cuts and pads by hand: the same rows as the ``tokenizers``
    library's own truncation and padding, special tokens kept, on texts of every length."""
    import random

    import tokenizers

    from fgsearch.model.hf_tokenizer import HFTokenizer

    rng = random.Random(0)
    words = "a red Mug cat 红色的杯子 LAPTOP éclair 🙂 the of, . -- x".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 120))) for _ in range(60)] + ["", "A" * 500]
    for folder in (ORACLE2 / "checkpoint", tiny2):
        tok = HFTokenizer(folder, 64, 196)
        for length, walk in ((64, "short"), (196, "long")):
            ref = tokenizers.Tokenizer.from_str(tok._tok.to_str())
            ref.enable_truncation(max_length=length)
            ref.enable_padding(length=length, pad_id=tok.pad_id, pad_token=tok._tok.id_to_token(tok.pad_id))
            rows, dropped = tok.rows(texts, walk)
            lowered = [t.lower() for t in texts]
            assert rows == [e.ids for e in ref.encode_batch(lowered)]
            assert dropped == [max(0, len(e.ids) - length) for e in tok._tok.encode_batch(lowered)]
            assert any(dropped) and not all(dropped)


def test_fgclip_tower_with_an_unreadable_graph_is_said_not_raised(tiny_model_dir: Path) -> None:
    """FG-CLIP's tower too: a graph ONNX Runtime cannot parse was an uncaught onnxruntime error
    in every text query; now it is a one-line note and the caller loads torch."""
    from fgsearch.library.settings import clear_shared_encoders, fast_text_encoder

    meta = prepare_fast_text(load_encoder(str(tiny_model_dir), device="cpu"))
    graph = cache_dir(meta["fingerprint"]) / GRAPH
    graph.write_bytes(b"\0" * graph.stat().st_size)
    clear_shared_encoders()
    notes: list[str] = []
    assert fast_text_encoder(str(tiny_model_dir), notes) is None
    assert len(notes) == 1 and "damaged" in notes[0] and "fgsearch index ... --fast-text" in notes[0]
