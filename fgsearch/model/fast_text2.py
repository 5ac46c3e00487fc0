"""FG-CLIP 2's text tower without torch: the export and the ``onnx-text`` encoder for the fgclip2 family.

What FG-CLIP 2 computes for a query text (``/work/shared/oracle2`` conventions, as
:mod:`fgsearch.model.fgclip2` does): the checkpoint's own ``tokenizer.json`` (lower-cased, ``<eos>``
appended, padded with ``<pad>`` to EXACTLY the walk's length: 64 for the short and box walks, 196
for the long walk; :class:`~fgsearch.model.hf_tokenizer.HFTokenizer`, which needs only the
``tokenizers`` package), token + position rows (short/box: ``position_embedding``; long:
``position_embedding_ori`` below ``keep_len`` then ``position_embedding_res``), the transformer
WITHOUT a causal mask, the final layer norm at the LAST position, and the walk's head
(``text_model.head``, ``boxtext_head`` or ``longtext_head``); the caller L2-normalises.

Split for a fast cold start:

* ``embeddings.npy``: the token table (256,000 x 768 float32, 786 MB for fg-clip2-base), read
  memory-mapped: a query touches its 64 or 196 rows, never the whole table;
* ``positions.npz``: the short and the long walk's position rows (``[64, D]``, ``[196, D]``);
* ``text.onnx`` (+ ``.data``): the transformer and the three heads, one graph: input ``hidden``
  ``[B, L, D]`` (token + position rows, added in numpy in float32 as torch adds them), output
  ``[B, 3, D]``: the pooled state through ``text_model.head``, ``boxtext_head`` and
  ``longtext_head``. A short query is matched against images by the short walk and against regions
  by the box walk: the same tokens and positions, so one pass gives both (the encoder keeps the
  last texts' three outputs, keyed by token ids and position table).

The cache layout, check and refusal are :mod:`fgsearch.model.fast_text`'s.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgsearch.errors import InputError
from fgsearch.model.fast_text_files import GRAPH, FastTextUnusable, session_options
from fgsearch.model.protocol import TextPath

EMBEDDINGS, POSITIONS = "embeddings.npy", "positions.npz"
HEADS = {TextPath.SHORT: 0, TextPath.BOX: 1, TextPath.LONG: 2}
MEMO = 256  # texts whose three head outputs the encoder keeps (a query asks short, then box)


# ---- export (torch) ------------------------------------------------------------------------------
def export(encoder: Any, folder: Path) -> None:
    """Write ``raw.onnx`` (the transformer and heads), :data:`EMBEDDINGS` and :data:`POSITIONS`
    of a torch fgclip2 encoder into ``folder``."""
    import torch

    model = encoder.model
    tm = model.text_model
    cfg = tm.cfg
    with torch.no_grad():
        table = tm.embeddings.token_embedding.weight.detach().float().cpu().numpy()
        short = tm.embeddings.positions(cfg.max_position_embeddings, TextPath.SHORT).detach().float().cpu().numpy()
        long = tm.embeddings.positions(cfg.longtext_len, TextPath.LONG).detach().float().cpu().numpy()
    np.save(folder / EMBEDDINGS, np.ascontiguousarray(table))
    np.savez(folder / POSITIONS, short=short, long=long)
    wrapper = _graph_class()(model).eval()
    hidden = torch.zeros(2, cfg.max_position_embeddings, cfg.hidden_size)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            wrapper,
            (hidden,),
            str(folder / "raw.onnx"),
            input_names=["hidden"],
            output_names=["features"],
            dynamic_axes={"hidden": {0: "batch", 1: "tokens"}, "features": {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )


def _graph_class() -> Any:
    import torch

    class Text2Graph(torch.nn.Module):
        """The transformer after the embedding lookup and the three heads ``[B, 3, D]`` in
        :data:`HEADS` order (D x D each: small beside the transformer)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.m = model

        def forward(self, hidden: Any) -> Any:
            m = self.m
            pooled = m.text_model.pool_embedded(hidden)
            return torch.stack([m.text_model.head(pooled), m.boxtext_head(pooled), m.longtext_head(pooled)], dim=1)

    return Text2Graph


def meta_extra(encoder: Any) -> dict[str, Any]:
    """What the fgclip2 encoder needs beside the common meta: the tokenizer's special ids."""
    tok = encoder.tokenizer
    return {"pad_id": int(tok.pad_id), "vocab_rows": int(encoder.model.text_model.cfg.vocab_size)}


# ---- the runtime (no torch) ----------------------------------------------------------------------
class OnnxText2Encoder:
    """FG-CLIP 2's text half of the :class:`~fgsearch.model.protocol.Encoder` protocol on ONNX
    Runtime (short, box and long walks); image calls raise :class:`InputError`."""

    precision = "fp32"
    device_name = "cpu"
    on_accelerator = False

    def __init__(self, folder: Path, meta: dict[str, Any], checkpoint: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        from fgsearch.model.hf_tokenizer import HFTokenizer
        from fgsearch.model.protocol import ScoreCalibration
        from fgsearch.model.registry import ModelSpec

        self.meta = meta
        # the checkpoint's own tokenizer files, as the torch encoder reads them
        self.tokenizer = HFTokenizer(checkpoint, meta["short_length"], meta["long_length"])
        if int(self.tokenizer.pad_id) != int(meta["pad_id"]):
            raise FastTextUnusable("the fast text tower was exported with another tokenizer; prepare it again")
        try:
            self.table = np.load(folder / EMBEDDINGS, mmap_mode="r")
            with np.load(folder / POSITIONS) as pos:
                self.rows = {TextPath.SHORT: pos["short"], TextPath.LONG: pos["long"]}
        except (OSError, ValueError, KeyError) as e:
            raise FastTextUnusable(
                f"the fast text tower in {folder} is damaged ({e}); prepare it again with "
                "`fgsearch index ... --fast-text`"
            ) from e
        self.rows[TextPath.BOX] = self.rows[TextPath.SHORT]
        d = int(meta["dim"])
        want = {
            "token table": (self.table.shape, (int(meta["vocab_rows"]), d)),
            "short positions": (self.rows[TextPath.SHORT].shape, (int(meta["short_length"]), d)),
            "long positions": (self.rows[TextPath.LONG].shape, (int(meta["long_length"]), d)),
        }
        for what, (got, expected) in want.items():
            if tuple(got) != expected:
                raise FastTextUnusable(
                    f"the fast text tower in {folder} is damaged: its {what} is {list(got)}, not {list(expected)}; "
                    "prepare it again with `fgsearch index ... --fast-text`"
                )
        opts = session_options(threads)
        self.session = ort.InferenceSession(str(folder / GRAPH), opts, providers=["CPUExecutionProvider"])
        self.spec = ModelSpec(
            name=meta["name"],
            family=meta["family"],
            local_dir=str(checkpoint),
            short_length=meta["short_length"],
            long_length=meta["long_length"],
            fingerprint=meta["fingerprint"],
        )
        self.calibration = ScoreCalibration.from_dict(meta.get("calibration"))
        self.dim = d
        self._memo: OrderedDict[tuple[bytes, bool], np.ndarray] = OrderedDict()
        self._memo_lock = threading.Lock()
        self.family_name = str(meta["family"])
        self.walks = tuple(meta["walks"])

    @property
    def transform(self) -> Any:
        raise InputError("the onnx-text runtime encodes texts only; images need the torch runtime")

    def text_path(self, text: str) -> TextPath:
        return self.tokenizer.choose_path(text)

    def region_walk(self, text: str) -> TextPath:
        return self.tokenizer.region_walk(text)  # the box walk for texts that fit the short length

    def _ids(self, texts: Sequence[str], walk: TextPath) -> np.ndarray:
        """Padded token ids ``[N, L]`` of the walk (truncation warned as the torch encoder does)."""
        from fgsearch.model.tokenizer import warn_dropped

        rows, dropped = self.tokenizer.rows(texts, walk)
        warn_dropped(texts, dropped, self.tokenizer.length(walk), f"{walk.value} walk", stacklevel=3)
        ids = np.asarray(rows, np.int64).reshape(len(texts), self.tokenizer.length(walk))
        if ids.size and int(ids.max()) >= self.table.shape[0]:
            raise InputError(f"token id {int(ids.max())} is outside the model's {self.table.shape[0]} embeddings")
        return ids

    def _heads(self, ids: np.ndarray, long: bool) -> np.ndarray:
        """The three head outputs ``[N, 3, D]`` of token rows (one pass for the rows not kept)."""
        keys = [(row.tobytes(), long) for row in ids]
        with self._memo_lock:
            known = {k: self._memo[k] for k in keys if k in self._memo}
        todo = sorted({i for i, k in enumerate(keys) if k not in known})
        if todo:
            rows = self.rows[TextPath.LONG if long else TextPath.SHORT]
            # float32 + float32, elementwise: the same sums as torch's token_embedding(ids) + positions
            hidden = np.asarray(self.table[ids[todo]], np.float32) + rows[None, : ids.shape[1]]
            got = self.session.run(None, {"hidden": hidden})[0]
            with self._memo_lock:
                for i, feats in zip(todo, got, strict=True):
                    known[keys[i]] = self._memo[keys[i]] = feats
                while len(self._memo) > MEMO:
                    self._memo.popitem(last=False)
        return np.stack([known[k] for k in keys])

    def encode_texts(
        self, texts: Sequence[str], path: TextPath | str | None = None, batch_size: int = 64, normalize: bool = True
    ) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        paths = [TextPath(path) if path is not None else self.text_path(t) for t in texts]
        for bad in {p for p in paths if p.value not in self.walks}:
            raise InputError(f"the {self.family_name} family has no {bad.value!r} text walk ({', '.join(self.walks)})")
        for p in (TextPath.SHORT, TextPath.BOX, TextPath.LONG):
            idx = [i for i, q in enumerate(paths) if q is p]
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                ids = self._ids([texts[i] for i in chunk], p)
                out[chunk] = self._heads(ids, p is TextPath.LONG)[:, HEADS[p]]
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _images(self, *_: Any, **__: Any) -> Any:
        raise InputError("the onnx-text runtime encodes texts only; images need the torch runtime")

    encode_pixels = encode_proposed = encode_images = _images
