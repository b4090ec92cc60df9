"""The embed stage: a batch of read items into points, both towers on the model's device.

Images arrive in one of three forms (``read_stage.ReadItem``): prepared uint8 pixels, which go to
the device in one copy from pinned memory (on CUDA) and are normalized there; JPEG bytes, decoded on
the GPU (``gpu_decode``); or PIL images, for a model whose processor only it can run. A JPEG that
neither the GPU nor Pillow can decode leaves the batch as a bad row.

Texts arrive tokenized; ``ProductTexts`` runs them through the model, or through an int8 copy of
its text tower where that keeps fp32's vectors on this CPU (``search/text_int8.py``).

``queue_items`` queues a batch's work on the device and returns what waits for it, so the ingest
reads the next batch meanwhile; ``embed_items`` does both at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from shelfsight.ingest.catalog import RowError
from shelfsight.ingest.read_stage import ReadItem, pixel_block
from shelfsight.search.embedder import Embedder
from shelfsight.search.images import ImageError, ImagePolicy
from shelfsight.search.indexing import EmbeddedBatch, TextVectors, embed_points
from shelfsight.search.pixels import PixelSpec, prepare_pixels
from shelfsight.search.store.base import CollectionMeta, PointRecord
from shelfsight.search.text_int8 import Int8TextEncoder, product_text_encoder

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class EmbedResult:
    batch: EmbeddedBatch
    errors: list[RowError]


class PinnedBuffer:
    """One reusable page-locked host buffer for pixel batches bound for a GPU (copies from it run
    without blocking); on a CPU the batch is used where it lies, and a worker's whole block goes to
    the device as it is."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def stage(self, arrays: Sequence[np.ndarray], device: str) -> torch.Tensor:
        import torch

        shape = (len(arrays), *arrays[0].shape)
        block = pixel_block(arrays)
        if block is not None:  # a worker's block, whole and in order: one copy to the device
            return torch.from_numpy(block).to(device)
        if not device.startswith("cuda"):
            return torch.from_numpy(np.stack(arrays))
        if self._buffer is None or self._buffer.shape[1:] != shape[1:] or len(self._buffer) < shape[0]:
            self._buffer = torch.empty(shape, dtype=torch.uint8).pin_memory()
        view = self._buffer[: shape[0]]
        np.stack(arrays, out=view.numpy())
        return view.to(device, non_blocking=True)


class ProductTexts:
    """The text tower an ingest's product texts go through, settled on the first batch with texts:
    the int8 copy where ``product_text_encoder`` allows it (``auto`` precision on a CPU, a wide
    enough tower, and probes that include those first texts keep fp32's vectors), else the model
    in its own precision (always, with ``int8`` False). ``described`` says which, and why. Used
    from the ingest's loop alone (one thread)."""

    def __init__(self, embedder: Embedder, int8: bool = True):
        self.embedder, self.int8 = embedder, int8
        self.encoder: Embedder | Int8TextEncoder | None = None
        self.described = ""

    def queue(self, items: Sequence[ReadItem]) -> Callable[[], np.ndarray]:
        """The items' token ids queued on the tower (``Embedder.queue_token_ids``); the function
        returned gives their vectors."""
        if self.encoder is None:
            self.encoder, self.described = self._settle([i.row.product.text for i in items])
        ids: list[np.ndarray] = [item.text_ids for item in items]  # type: ignore[misc]
        if isinstance(self.encoder, Embedder):
            return self.encoder.queue_token_ids(ids)
        vectors = self.encoder.encode_token_ids(ids)
        return lambda: vectors

    @property
    def settled(self) -> Embedder | Int8TextEncoder:
        """The tower product texts went through (the model itself before any had)."""
        return self.encoder or self.embedder

    def _settle(self, samples: list[str]) -> tuple[Embedder | Int8TextEncoder, str]:
        if not self.int8:
            return self.embedder, self.embedder.precision
        fast, described = product_text_encoder(self.embedder, samples)
        return fast or self.embedder, described


@dataclass(frozen=True)
class EmbedState:
    """What an ingest's embed stage keeps from batch to batch: the text tower it settled on, the
    pinned buffer pixels cross to a GPU from, and the image limits (for a JPEG the GPU rejects and
    Pillow decodes here instead)."""

    texts: ProductTexts
    buffer: PinnedBuffer = field(default_factory=PinnedBuffer)
    policy: ImagePolicy = ImagePolicy()


def embed_items(
    items: Sequence[ReadItem], embedder: Embedder, meta: CollectionMeta, state: EmbedState | None = None
) -> EmbedResult:
    """Both towers over the batch; the early-fused vector when the collection has one. Without
    ``state``: the model in its own precision for texts, default image limits."""
    return queue_items(items, embedder, meta, state)()


def queue_items(
    items: Sequence[ReadItem], embedder: Embedder, meta: CollectionMeta, state: EmbedState | None = None
) -> Callable[[], EmbedResult]:
    """``embed_items`` in two steps: the images are decoded and both towers queued on the model's
    device now (texts tokenized by the read stage; others run as strings in the second step); the
    function returned waits for them and makes the points. On a GPU the caller reads and sorts the
    next batch meanwhile; on a CPU the towers run now. The second step uses nothing of the items'
    pixels or JPEG bytes, whose shared memory the read stage may hand to the next batch by then."""
    state = state or EmbedState(ProductTexts(embedder, int8=False))
    kept, images, errors = queue_images(items, embedder, state.buffer, state.policy)
    texts = queue_texts(kept, state.texts)
    products = [item.row.product for item in kept]
    payloads = [item.payload for item in kept]
    words = [item.words for item in kept]

    def finish() -> EmbedResult:
        batch = embed_points(products, images(), payloads, embedder, meta, texts() if texts else None)
        points = [PointRecord(p.id, p.vectors, p.payload, w) for p, w in zip(batch.points, words)]
        return EmbedResult(replace(batch, points=points), errors)

    return finish


def queue_texts(items: Sequence[ReadItem], texts: ProductTexts) -> Callable[[], TextVectors] | None:
    """The text tower queued for the items the read stage tokenized; None when it did not (the
    texts are then encoded from strings). The function returned gives the items' text vectors."""
    with_text = [k for k, item in enumerate(items) if item.row.product.text]
    if any(items[k].text_ids is None for k in with_text):
        return None
    pending = texts.queue([items[k] for k in with_text]) if with_text else None
    count, truncated = len(items), sum(items[k].text_truncated for k in with_text)

    def vectors() -> TextVectors:
        out: list[np.ndarray | None] = [None] * count
        for k, vector in zip(with_text, pending() if pending else []):
            out[k] = vector
        return TextVectors(out, truncated)

    return vectors


def queue_images(
    items: Sequence[ReadItem], embedder: Embedder, buffer: PinnedBuffer, policy: ImagePolicy = ImagePolicy()
) -> tuple[list[ReadItem], Callable[[], list[np.ndarray | None]], list[RowError]]:
    """The items whose images decoded (JPEGs on the GPU decode now), the vision tower queued for
    their pictures, and the errors of those dropped. The function returned gives each kept item's
    image vector (None without a picture)."""
    with_picture = [i for i, item in enumerate(items) if item.has_picture]
    pictures = [items[i] for i in with_picture]
    bad: set[int] = set()
    if not pictures:
        pending: Callable[[], np.ndarray] = lambda: np.zeros((0, 0), dtype=np.float32)  # noqa: E731
    elif all(p.image is not None for p in pictures):
        encoded = embedder.encode_images([p.image for p in pictures])  # type: ignore[misc]
        pending = lambda: encoded  # noqa: E731
    else:
        pending, bad = _queue_prepared(pictures, embedder, buffer, policy)
    dropped = {with_picture[j] for j in bad}
    good = [i for j, i in enumerate(with_picture) if j not in bad]
    count = len(items)

    def vectors() -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = [None] * count
        for position, vector in zip(good, pending()):
            out[position] = vector
        return [v for i, v in enumerate(out) if i not in dropped]

    kept = [item for i, item in enumerate(items) if i not in dropped]
    return kept, vectors, [_decode_error(items[i]) for i in sorted(dropped)]


def _queue_prepared(
    pictures: Sequence[ReadItem], embedder: Embedder, buffer: PinnedBuffer, policy: ImagePolicy
) -> tuple[Callable[[], np.ndarray], set[int]]:
    """Pixels and GPU-decoded JPEGs queued in one device batch, in order; the positions that failed."""
    import torch

    spec = embedder.pixel_spec
    assert spec is not None
    device = embedder.torch_device
    jpeg_at = [j for j, p in enumerate(pictures) if p.jpeg is not None]
    arrays = {j: p.pixels for j, p in enumerate(pictures) if p.pixels is not None}
    decoded, bad = _gpu_decode(pictures, jpeg_at, spec, device, arrays, policy)
    if len(bad) == len(pictures):
        return lambda: np.zeros((0, 0), dtype=np.float32), bad
    cpu_at = sorted(arrays)
    staged = buffer.stage([arrays[j] for j in cpu_at], device) if cpu_at else None  # type: ignore[misc]
    if not decoded:
        return embedder.queue_pixels(staged), bad  # every picture came from the CPU, in order
    parts = decoded | {j: staged[k] for k, j in enumerate(cpu_at)}  # type: ignore[index]
    return embedder.queue_pixels(torch.stack([parts[j] for j in sorted(parts)])), bad


def _gpu_decode(
    pictures: Sequence[ReadItem],
    jpeg_at: list[int],
    spec: PixelSpec,
    device: str,
    arrays: dict[int, np.ndarray],
    policy: ImagePolicy,
) -> tuple[dict[int, torch.Tensor], set[int]]:
    """JPEGs decoded on the GPU; those it rejects are decoded by Pillow into ``arrays``, and those
    Pillow rejects too are returned as bad."""
    if not jpeg_at:
        return {}, set()
    from shelfsight.ingest.gpu_decode import decode_jpegs

    batch, failed = decode_jpegs([pictures[j].jpeg for j in jpeg_at], spec, device)  # type: ignore[misc]
    ok = [j for k, j in enumerate(jpeg_at) if k not in set(failed)]
    decoded = {j: batch[k] for k, j in enumerate(ok)}
    bad: set[int] = set()
    for k in failed:
        j = jpeg_at[k]
        try:
            name = pictures[j].row.product.image or "image"
            arrays[j] = prepare_pixels(pictures[j].jpeg, spec, policy, name)  # type: ignore[arg-type]
        except ImageError:
            bad.add(j)
    return decoded, bad


def _decode_error(item: ReadItem) -> RowError:
    product = item.row.product
    return RowError(
        item.row.row,
        product.id,
        f"{product.image} is not a JPEG the GPU or Pillow can decode",
        "re-export or replace the image",
    )
