"""FG-CLIP 2's tokenizer: the checkpoint's own ``tokenizer.json`` through the ``tokenizers`` library.

The reference calls ``AutoTokenizer`` (Gemma) as ``tok([t.lower() for t in texts],
padding="max_length", max_length=L, truncation=True).input_ids``. This reproduces it: ``str.lower()``
first (the tokenizer does not lower-case), the special tokens that ``tokenizer_config.json`` asks for
(``add_bos_token`` / ``add_eos_token``: no ``<bos>``, ``<eos>`` appended, as transformers' Gemma
class rebuilds them), truncation that keeps ``<eos>`` last, and right padding with ``<pad>`` to
EXACTLY L (64 for the short and box walks, 196 for the long walk, read from the checkpoint). No
attention mask is produced: the model pools the last position, and a mask changes the features.

The walk rule (one place decides it, :meth:`HFTokenizer.choose_path`): a text whose tokens, special
tokens included, fit the short length takes the SHORT walk, a longer one the LONG walk. Region
matching uses the BOX walk for texts that fit the short length (:meth:`HFTokenizer.region_walk`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgsearch.errors import CheckpointError, ModelNotFoundError
from fgsearch.model.files import read_json
from fgsearch.model.protocol import TextPath
from fgsearch.model.tokenizer import warn_dropped

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:
        raise ModelNotFoundError("FG-CLIP 2 models need the `tokenizers` package: run `pip install tokenizers`") from e
    return tokenizers


class HFTokenizer:
    """A ``tokenizer.json`` tokenizer with fixed padded lengths per walk."""

    def __init__(self, path: str | Path, short_length: int, long_length: int) -> None:
        tk = _tokenizers()
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.exists():
            raise CheckpointError(f"no tokenizer.json in {path}; FG-CLIP 2 checkpoints ship their tokenizer with it")
        try:
            tok = tk.Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises its own Exception type
            raise CheckpointError(f"cannot read {file}: {e}") from e
        cfg = read_json(path / "tokenizer_config.json", required=False)
        self.short_length = short_length
        self.long_length = long_length
        self.pad_id = self._special_id(tok, cfg.get("pad_token", "<pad>"), "pad")
        if "add_bos_token" in cfg or "add_eos_token" in cfg:
            # transformers' Gemma class rebuilds the template from these flags (its defaults: bos yes, eos no)
            edges = {}
            for flag, name, default in (("add_bos_token", "bos_token", True), ("add_eos_token", "eos_token", False)):
                if cfg.get(flag, default):
                    content = _content(cfg.get(name, ""))
                    edges[name] = (content, self._special_id(tok, content, name))
            bos = [edges["bos_token"][0]] if "bos_token" in edges else []
            eos = [edges["eos_token"][0]] if "eos_token" in edges else []
            single = " ".join([*(t + ":0" for t in bos), "$A:0", *(t + ":0" for t in eos)])
            pair = " ".join([single, *(t + ":1" for t in bos), "$B:1", *(t + ":1" for t in eos)])
            tok.post_processor = tk.processors.TemplateProcessing(
                single=single, pair=pair, special_tokens=sorted(set(edges.values()))
            )
        tok.no_truncation()
        tok.no_padding()
        # ONE tokenizer, never reconfigured (no shared mutable state): truncation and padding are
        # done per call as the library does them (content cut to L minus the special tokens, then
        # the template, then padding). A copy per length cost a re-parse of tokenizer.json each:
        # seconds for a 256,000-token vocabulary, on every cold query (docs/fast-start.md)
        self._tok = tok
        self._added = int(tok.num_special_tokens_to_add(False))

    @staticmethod
    def _special_id(tok: Any, token: Any, what: str) -> int:
        content = _content(token)
        tid = tok.token_to_id(content)
        if tid is None:
            raise CheckpointError(f"the tokenizer has no {what} token {content!r}")
        return int(tid)

    def length(self, walk: TextPath | str) -> int:
        return self.long_length if TextPath(walk) is TextPath.LONG else self.short_length

    def encode(self, text: str) -> list[int]:
        """Ids of a text with its special tokens, not truncated or padded."""
        return list(self._tok.encode(text.lower()).ids)

    def count(self, text: str) -> int:
        """Number of tokens a text takes, special tokens included."""
        return len(self.encode(text))

    def choose_path(self, text: str) -> TextPath:
        """THE rule: SHORT when the text fits the short length, else LONG."""
        return TextPath.SHORT if self.count(text) <= self.short_length else TextPath.LONG

    def region_walk(self, text: str) -> TextPath:
        """Region matching: BOX for texts that fit the short length, else LONG."""
        return TextPath.BOX if self.count(text) <= self.short_length else TextPath.LONG

    def rows(self, texts: Sequence[str], walk: TextPath | str) -> tuple[list[list[int]], list[int]]:
        """Padded rows of exactly the walk's length, and how many tokens each text lost."""
        length = self.length(walk)
        keep = max(0, length - self._added)
        rows, dropped = [], []
        for e in self._tok.encode_batch([t.lower() for t in texts], add_special_tokens=False):
            dropped.append(max(0, len(e.ids) - keep))
            e.truncate(keep)
            ids = list(self._tok.post_process(e).ids)[:length]
            rows.append(ids + [self.pad_id] * (length - len(ids)))
        return rows, dropped

    def __call__(self, texts: str | Sequence[str], walk: TextPath | str, *, warn: bool = True) -> Any:
        """Texts -> ``LongTensor [B, length]`` for ``walk``; warns when text is truncated."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        rows, dropped = self.rows(texts, walk)
        if warn:
            warn_dropped(texts, dropped, self.length(walk), f"{TextPath(walk).value} walk", stacklevel=2)
        return torch.tensor(rows, dtype=torch.long).reshape(len(texts), self.length(walk))


def _content(token: Any) -> str:
    return str(token["content"]) if isinstance(token, dict) else str(token)
