"""Micro-batching of query texts: concurrent ``encode_texts`` calls share one forward pass.

``shelfsight serve`` answers each request in its own thread. Embedded one at a time, query texts
cap the server at one text tower pass per text (about 20 ms for the ViT-B/32 shape on 2 cores,
about 50 queries/s), while the same tower runs a batch of 16 short texts several times faster
per text. So the serving engine's query texts go through a ``TextBatcher`` (and, where it keeps
fp32's vectors, an int8 copy of the text tower: ``text_int8``):

- a caller that finds no forward pass running runs one at once with its own texts: a lone
  request waits for nothing;
- callers that arrive while a pass runs queue up; when it ends, the first of them runs the next
  pass for all the queued texts (up to ``MAX_BATCH_TEXTS``) and each caller takes its own rows.

There is no worker thread: the pass runs in a caller's (request) thread, so there is nothing
to start or stop, and an engine dropped by a switch leaves nothing behind. The wait for
company is exactly the pass in flight, never a fixed window.

An error in a pass reaches every caller of that pass as the same exception. A caller's own bad
input (a text that is not a string) is refused in its own thread before it joins a batch, so it
never fails the others.

Example::

    batch_query_texts(engine)                     # what serve does to each engine it opens
    engine.encode_query_texts(["red bag"])        # (1, d); shares a pass when busy
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from shelfsight.search.text_int8 import Int8TextEncoder
from shelfsight.search.text_process import TextProcess, TextProcessError, WithFallback

if TYPE_CHECKING:
    from shelfsight.search.embedder import Embedder
    from shelfsight.search.engine import SearchEngine

log = logging.getLogger(__name__)

# Most texts in one pass. sentence-transformers runs at most the embedder's batch_size (32) texts
# per forward anyway; 16 concurrent clients with a few query parts each fit in one or two passes.
MAX_BATCH_TEXTS = 32


@dataclass(eq=False)
class _Call:
    """One caller's texts, and what its pass left for it."""

    texts: list[str]
    rows: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


def _checked(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"encode_texts takes strings, got {type(bad).__name__}")
    return texts


class TextBatcher:
    """Runs ``encode(texts) -> (n, d) rows`` once for the texts of every caller waiting together.

    Thread-safe; callers are served in the order they arrive.
    """

    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_texts: int = MAX_BATCH_TEXTS):
        self._encode = encode
        self.max_texts = max_texts
        self._queue: deque[_Call] = deque()
        self._running = False
        self._changed = threading.Condition()

    @property
    def queued(self) -> int:
        """Callers waiting for a pass (not counting those inside the running one)."""
        with self._changed:
            return len(self._queue)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """This caller's rows, from a pass it may share with concurrent callers."""
        call = _Call(_checked(texts))
        if not call.texts:
            return self._encode([])
        with self._changed:
            self._queue.append(call)
            while not call.done and (self._running or self._queue[0] is not call):
                self._changed.wait()
            batch = None if call.done else self._take_batch()
        if batch is not None:
            self._run(batch)
        if call.error is not None:
            raise call.error
        assert call.rows is not None
        return call.rows

    def _take_batch(self) -> list[_Call]:
        """The queue's head (the caller) and the callers after it, up to ``max_texts`` texts in all;
        a head with more texts than that runs alone. Called with the lock held."""
        batch = [self._queue.popleft()]
        count = len(batch[0].texts)
        while self._queue and count + len(self._queue[0].texts) <= self.max_texts:
            count += len(self._queue[0].texts)
            batch.append(self._queue.popleft())
        self._running = True
        return batch

    def _run(self, batch: list[_Call]) -> None:
        texts = [t for call in batch for t in call.texts]
        rows: np.ndarray | None = None
        error: BaseException | None = None
        try:
            rows = self._encode(texts)
            if len(rows) != len(texts):
                raise RuntimeError(f"the encoder returned {len(rows)} rows for {len(texts)} texts")
        except BaseException as exc:  # every caller of this pass gets it, the running one included
            error = exc
        with self._changed:
            start = 0
            for call in batch:
                if error is None and rows is not None:
                    call.rows = rows[start : start + len(call.texts)]
                call.error = error
                call.done = True
                start += len(call.texts)
            self._running = False
            self._changed.notify_all()


def limit_torch_threads() -> int:
    """Give torch's intra-op pool every core but one (at least one) for ``serve``; returns the count.

    Request threads run Python one at a time under the GIL, so they need about one core, and a
    pass releases the GIL. Measured through ``serve`` on 2 shared cores (four runs, load average
    8 to 33 from other work): with torch's default of 2 threads a lone request cost 350 to 880 ms
    of CPU, its threads spinning for a sibling that was not scheduled, against 68 to 87 ms with 1;
    under 16 batched clients, 47 to 49 against 41 to 47 ms. ``OMP_NUM_THREADS`` set by the
    operator wins. Not measured on a quiet machine, where 2 threads would shorten a lone pass.
    """
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    return int(torch.get_num_threads())


def batch_query_texts(engine: SearchEngine, int8: bool = True, process: bool = False) -> str:
    """Make ``engine`` embed query texts in shared passes, through an int8 copy of the text tower
    where it keeps fp32's vectors (``text_int8``); with ``process``, in a child process of its own
    (``text_process``; a CPU model on a machine of two cores or more). Returns which tower, for the
    log. Serve only: the CLI, the storefront and the Python API embed each query directly, and
    product texts (the write routes) always take the embedder's own tower (in its precision). Image queries are not
    batched: the image tower gains little from batches on CPU (1.11x at 32, shared/NOTES.md)."""
    encode, description = _query_encoder(engine, int8, process)
    engine.encode_query_texts = TextBatcher(encode).encode_texts
    return description


def in_process_encoder(embedder: Embedder, int8: bool) -> tuple[Callable[[list[str]], np.ndarray], str]:
    """The int8 text tower where it holds fp32's vectors (else the model's own), and which one it is."""
    fast, cosine = Int8TextEncoder.build(embedder) if int8 else (None, float("nan"))
    if fast is not None:
        return fast.encode_texts, f"int8 text tower for queries (least probe cosine to fp32 {cosine:.4f})"
    checked = "" if math.isnan(cosine) else f" (int8 probe cosine {cosine:.4f} too low)"
    return embedder.encode_texts, f"{embedder.precision} text tower for queries" + checked


def _query_encoder(engine: SearchEngine, int8: bool, process: bool) -> tuple[Callable[[list[str]], np.ndarray], str]:
    embedder = engine.embedder
    if not process or str(embedder.model.device) != "cpu" or (os.cpu_count() or 1) < 2:
        return in_process_encoder(embedder, int8)
    location = Path(embedder.model_path)
    try:
        texts = TextProcess(str(location.resolve()) if location.is_dir() else embedder.model_path, int8)
    except TextProcessError as exc:
        log.warning("%s; query texts are embedded in the serving process", exc)
        return in_process_encoder(embedder, int8)
    engine.on_close(texts.close)
    return WithFallback(texts, lambda: in_process_encoder(embedder, int8)[0]), texts.description
