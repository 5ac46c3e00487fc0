"""Text encoding that batches concurrent callers: :class:`BatchingEncoder` wraps an encoder; one
worker thread owns the model and encodes the short-path texts of concurrent requests as one batch
(a batch of 8 costs far less than 8 single forwards); long or forced-path texts are encoded one at
a time so a truncation notice reaches the request it belongs to. Image encoding takes the same
model lock."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from fgsearch.model import EncodedImages, Encoder, ImagePreprocessor, ModelSpec, ScoreCalibration, TextPath
    from fgsearch.model.protocol import DenseProposer


class _Job:
    __slots__ = ("done", "error", "path", "result", "text")

    def __init__(self, text: str, path: str) -> None:
        self.text, self.path = text, path
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class BatchingEncoder:
    """An :class:`~fgsearch.model.Encoder` whose text encoding batches concurrent callers.

    It implements the protocol by delegating to the wrapped encoder; every forward pass (the
    worker's text batches, images, lone texts) holds ``model_lock``.
    """

    def __init__(
        self, encoder: Encoder, *, window_ms: float = 4.0, max_batch: int = 32, text: Encoder | None = None
    ) -> None:
        self._enc = encoder
        self._text = text or encoder  # texts may run elsewhere: the fast text tower (fgsearch.model.fast_text)
        self._window = window_ms / 1000
        self._max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self.model_lock = threading.Lock()  # one forward pass at a time: they would only fight for the cores
        self.batches = 0  # statistics: forwards run by the worker, texts encoded by them
        self.batched_texts = 0
        self._worker = threading.Thread(target=self._run, name="fgsearch-text-encoder", daemon=True)
        self._worker.start()

    # ---- what the wrapped encoder is ---------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._enc.dim

    @property
    def spec(self) -> ModelSpec:
        return self._enc.spec

    @property
    def family_name(self) -> str:
        return self._enc.family_name

    @property
    def walks(self) -> tuple[str, ...]:
        return self._enc.walks

    @property
    def calibration(self) -> ScoreCalibration | None:
        return self._enc.calibration

    @property
    def transform(self) -> ImagePreprocessor:
        return self._enc.transform

    @property
    def on_accelerator(self) -> bool:
        return self._enc.on_accelerator

    @property
    def device_name(self) -> str:
        return self._enc.device_name

    @property
    def precision(self) -> str:
        return self._enc.precision

    def text_path(self, text: str) -> TextPath:
        return self._enc.text_path(text)

    def region_walk(self, text: str) -> TextPath:
        return self._enc.region_walk(text)

    # ---- forward passes, one at a time --------------------------------------------------------
    def encode_pixels(self, pixels: Any, boxes: Sequence[np.ndarray] | None) -> EncodedImages:
        with self.model_lock:
            return self._enc.encode_pixels(pixels, boxes)

    def encode_proposed(self, pixels: Any, propose: DenseProposer) -> tuple[EncodedImages, list[np.ndarray]]:
        with self.model_lock:
            return self._enc.encode_proposed(pixels, propose)

    def encode_images(
        self, images: Sequence[PILImage], boxes: Sequence[np.ndarray] | None = None, batch_size: int = 32
    ) -> EncodedImages:
        with self.model_lock:
            return self._enc.encode_images(images, boxes, batch_size=batch_size)

    def encode_texts(
        self, texts: Sequence[str], path: TextPath | str | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """A lone short-path text joins the worker's next batch; anything else runs alone."""
        from fgsearch.model import TextPath

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        rule = [self._enc.text_path(t) for t in texts]
        forced = TextPath(path) if path is not None else None
        if len(texts) != 1 or rule[0] is not TextPath.SHORT or forced not in (None, TextPath.SHORT):
            # long (may truncate: the notice must reach this caller's warnings) or unusual: run alone
            with self.model_lock:
                return self._text.encode_texts(texts, path=path, batch_size=batch_size)
        job = _Job(texts[0], TextPath.SHORT.value)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result[None]

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            deadline = time.monotonic() + self._window
            while len(jobs) < self._max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=max(left, 0)) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(nxt)
            try:
                with self.model_lock:
                    vecs = self._text.encode_texts([j.text for j in jobs], path=jobs[0].path)
                self.batches += 1
                self.batched_texts += len(jobs)
                for j, v in zip(jobs, vecs, strict=True):
                    j.result = v
            except BaseException as e:  # handed to every waiting caller, who raises it
                for j in jobs:
                    j.error = e
            for j in jobs:
                j.done.set()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)
