"""``serve``'s query texts embedded in a process of their own.

In one process, the text tower's passes and the store's queries take turns: qdrant-edge holds the
GIL through each query, and a forward pass needs the GIL between its operations. Measured through
``serve`` on 2 cores, 100k products, ViT-B/32 shape: 16 clients got 22.9 requests/s against 21.9
for one, the server using about one core. With the tower in a child process the two run side by
side. The child loads the model, keeps only the tower that embeds query texts (int8 where it
holds fp32's vectors, ``text_int8``) and answers ``encode`` calls; ``batching.TextBatcher`` still
gathers concurrent texts into one call. If the child goes away, texts are embedded in the serving
process from then on (logged once), so no query fails for it.

Example::

    texts = TextProcess(model_path, int8=True)
    texts.encode_texts(["red bag"])      # (1, d) unit rows
    texts.close()
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from collections.abc import Callable, Sequence

import numpy as np
from shelfsight.search.child_process import ChildProcess, connect, fail, greet, serve_calls
from shelfsight.search.errors import ShelfsightError

log = logging.getLogger(__name__)


class TextProcessError(ShelfsightError):
    """The query text process could not start or went away."""


class TextProcess:
    """Query texts through a child process's text tower; ``description`` says which tower."""

    def __init__(self, model: str, int8: bool):
        self._child = ChildProcess(
            __name__, [model, "int8" if int8 else "fp32"], TextProcessError, "the query text process"
        )
        self.description = f"{self._child.greeting}, in a process of its own"

    @property
    def pid(self) -> int:
        return self._child.pid

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._child.call("encode", list(texts))  # type: ignore[no-any-return]

    def close(self) -> None:
        self._child.close()


class WithFallback:
    """``encode`` through the process; after it fails once, through ``fallback()`` (built then)."""

    def __init__(self, process: TextProcess, fallback: Callable[[], Callable[[list[str]], np.ndarray]]):
        self.process = process
        self._make_fallback = fallback
        self._fallback: Callable[[list[str]], np.ndarray] | None = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self._fallback is None:
            try:
                return self.process.encode_texts(texts)
            except TextProcessError as exc:
                log.warning("%s; query texts are embedded in the serving process from now on", exc)
                self._fallback = self._make_fallback()
        return self._fallback(texts)


def main(argv: list[str]) -> None:
    recv, send, (model, mode) = connect(argv)
    try:
        encode, description = _tower(model, mode == "int8")
    except Exception as exc:
        fail(send, exc)
        return
    greet(send, description)
    serve_calls({"encode": encode}, recv, send)


def _tower(model: str, int8: bool) -> tuple[Callable[[list[str]], np.ndarray], str]:
    """The query text tower, with the rest of the model freed: the int8 tower alone keeps the
    child near 550 MB where the whole model kept it at 930 (ViT-B/32 shape)."""
    from shelfsight.search.batching import in_process_encoder, limit_torch_threads
    from shelfsight.search.embedder import Embedder

    limit_torch_threads()
    tower = in_process_encoder(Embedder(model, device="cpu"), int8)
    gc.collect()  # the embedder is unreferenced now (unless the tower is its fp32 one)
    _return_freed_memory()
    return tower


def _return_freed_memory() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # no glibc: the memory stays with the allocator
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
