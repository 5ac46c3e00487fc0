"""CLIP byte-pair tokenizer producing the reference's exact ids, and the short/long path rule.

The vocabulary is the one open_clip ships (``bpe_simple_vocab_16e6.txt.gz``); it is located on
disk without importing open_clip. Text is NFC-normalised, whitespace-collapsed and lower-cased
(what transformers' ``CLIPTokenizerFast`` does), split with CLIP's pattern, and byte-pair merged.
A row is ``[BOS, tokens..., EOS, pad...]`` with pad = EOS id; truncation keeps EOS last.

The path rule (one place decides it, :meth:`Tokenizer.choose_path`): a text whose tokens, BOS and
EOS included, fit in the short table (77) takes the SHORT path; a longer one takes the LONG path
(up to 248 tokens). Callers may force either path. Text beyond the chosen path's length is
truncated with a :class:`TextTruncatedWarning` that says how many tokens were dropped.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import regex

from fgsearch.errors import ModelNotFoundError
from fgsearch.model.protocol import TextPath

BOS_ID = 49406
EOS_ID = 49407
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WS = regex.compile(r"\s+")


class TextTruncatedWarning(UserWarning):
    """A text was longer than its path allows and lost tokens."""


#: the notices of this thread's :func:`collecting_truncations` block (None: none is open)
_collected: ContextVar[list[str] | None] = ContextVar("fgsearch_truncation_notices", default=None)


def warn_truncated(message: str, stacklevel: int = 2) -> None:
    """Report a truncated text: into the caller's :func:`collecting_truncations` block when this
    thread has one open, else as a :class:`TextTruncatedWarning`."""
    sink = _collected.get()
    if sink is not None:
        if message not in sink:
            sink.append(message)
        return
    warnings.warn(message, TextTruncatedWarning, stacklevel=stacklevel + 1)


def warn_dropped(texts: Sequence[str], dropped: Sequence[int], length: int, where: str, stacklevel: int = 2) -> None:
    """:func:`warn_truncated` for each text that lost tokens (``dropped[i]`` of them) when cut to
    ``length`` tokens on ``where`` (e.g. ``"long path"``, ``"box walk"``)."""
    for text, n in zip(texts, dropped, strict=True):
        if n:
            warn_truncated(
                f"text truncated to {length} tokens ({where}): dropped {n} tokens from {text[:40]!r}...",
                stacklevel=stacklevel + 1,
            )


@contextmanager
def collecting_truncations() -> Iterator[list[str]]:
    """Collect the truncation notices of the texts this thread encodes inside the block.

    ``warnings.catch_warnings`` swaps process-wide state, so two threads (a server's requests)
    inside it at once lose or swap each other's warnings; a context variable is per thread."""
    notices: list[str] = []
    token = _collected.set(notices)
    try:
        yield notices
    finally:
        _collected.reset(token)


def default_vocab_path() -> Path:
    """The CLIP BPE merges file shipped by open_clip (found without importing open_clip)."""
    env = os.environ.get("FGSEARCH_BPE_PATH")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the CLIP vocabulary ships with open_clip, which is not installed; run `pip install open_clip_torch`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise ModelNotFoundError(f"CLIP vocabulary not found at {path}; reinstall open_clip_torch")
    return path


def _byte_alphabet() -> dict[int, str]:
    """Reversible byte -> printable unicode character map used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclass(frozen=True)
class Tokenized:
    """Token rows for one path, with how many tokens each text lost to truncation."""

    ids: list[list[int]]
    path: TextPath
    dropped: list[int]


class Tokenizer:
    """CLIP BPE. ``short_length`` and ``long_length`` come from the model (77 and 248 for FG-CLIP)."""

    def __init__(
        self, vocab_path: str | os.PathLike[str] | None = None, short_length: int = 77, long_length: int = 248
    ) -> None:
        self.short_length = short_length
        self.long_length = long_length
        path = Path(vocab_path) if vocab_path else default_vocab_path()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        self._bytes = _byte_alphabet()
        vocab = list(self._bytes.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.bos_id = self.encoder["<|startoftext|>"]
        self.eos_id = self.encoder["<|endoftext|>"]
        self.pad_id = self.eos_id
        self._bpe = functools.lru_cache(maxsize=65536)(self._bpe_uncached)

    @staticmethod
    def clean(text: str) -> str:
        return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip().lower()

    def _bpe_uncached(self, word: str) -> tuple[str, ...]:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, 1 << 30))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == best[0] and parts[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """Text -> BPE ids without BOS/EOS."""
        out: list[int] = []
        for piece in _PATTERN.findall(self.clean(text)):
            if piece in ("<|startoftext|>", "<|endoftext|>"):
                out.append(self.encoder[piece])
                continue
            word = "".join(self._bytes[b] for b in piece.encode("utf-8"))
            out.extend(self.encoder[t] for t in self._bpe(word))
        return out

    def count(self, text: str) -> int:
        """Number of tokens a text takes, BOS and EOS included."""
        return len(self.encode(text)) + 2

    def choose_path(self, text: str) -> TextPath:
        """THE rule: SHORT when the text fits the short table (BOS/EOS included), else LONG."""
        return TextPath.SHORT if self.count(text) <= self.short_length else TextPath.LONG

    def length(self, path: TextPath | str) -> int:
        return self.short_length if TextPath(path) is TextPath.SHORT else self.long_length

    def tokenize_rows(self, texts: Sequence[str], path: TextPath | str) -> Tokenized:
        """Texts -> padded id rows of the path's length, recording truncation."""
        path = TextPath(path)
        length = self.length(path)
        rows, dropped = [], []
        for text in texts:
            body = self.encode(text)
            keep = length - 2
            dropped.append(max(0, len(body) - keep))
            row = [self.bos_id, *body[:keep], self.eos_id]
            rows.append(row + [self.pad_id] * (length - len(row)))
        return Tokenized(rows, path, dropped)

    def __call__(self, texts: str | Sequence[str], path: TextPath | str, *, warn: bool = True):
        """Texts -> ``LongTensor [B, length]`` for ``path``; warns when text is truncated."""
        import torch

        return torch.tensor(self.rows(texts, path, warn=warn), dtype=torch.long)

    def rows(self, texts: str | Sequence[str], path: TextPath | str, *, warn: bool = True) -> list[list[int]]:
        """:meth:`__call__` without torch: padded id rows; warns when text is truncated."""
        if isinstance(texts, str):
            texts = [texts]
        tok = self.tokenize_rows(texts, path)
        if warn:
            warn_dropped(texts, tok.dropped, self.length(path), f"{tok.path.value} path", stacklevel=3)
        return tok.ids
