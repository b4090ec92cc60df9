"""JPEGs decoded and resized on the GPU (nvJPEG through torchvision), for ``ingest --decode gpu``.

Optional: it needs torchvision built for the installed CUDA torch (the ``gpu`` extra). Never install
torchvision beside the CPU torch wheel; it fails to import there. Only plain JPEGs come here (see
``read_stage.gpu_decodable``); an image nvJPEG rejects is decoded by Pillow instead, and one Pillow
rejects too becomes a bad row as usual.

The resize is antialiased bicubic, the crop central, as the model's processor does; the output is
the same (n, h, w, 3) uint8 batch that ``Embedder.encode_pixels`` takes, already on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from shelfsight.search.errors import BadInputError
from shelfsight.search.pixels import PixelSpec

if TYPE_CHECKING:
    import torch


def gpu_decoding_available(device: str) -> bool:
    """Whether JPEGs can be decoded on ``device``: a CUDA device and an importable torchvision."""
    if not device.startswith("cuda"):
        return False
    try:
        import torchvision.io  # noqa: F401
    except Exception:  # ImportError, or torchvision built for another torch (RuntimeError)
        return False
    return True


def require_gpu_decoding(device: str) -> None:
    if not gpu_decoding_available(device):
        raise BadInputError(
            f"--decode gpu needs a CUDA GPU and torchvision built for this torch (model device: {device}); "
            "install the gpu extra on a CUDA machine (pip install 'shelfsight[gpu]'), or use --decode cpu"
        )


def decode_jpegs(jpegs: Sequence[bytes | memoryview], spec: PixelSpec, device: str) -> tuple[torch.Tensor, list[int]]:
    """Decode, resize and crop JPEGs on ``device``. Returns the (k, h, w, 3) uint8 batch of those that
    decoded and the positions (in ``jpegs``) of those that did not."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(_writable(j), dtype=torch.uint8) for j in jpegs]
    try:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        failed: list[int] = []
    except RuntimeError:  # one bad file fails the whole batch: decode one by one
        images, failed = [], []
        for i, d in enumerate(data):
            try:
                images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                failed.append(i)
    groups = _by_size(images)
    if len(groups) == 1:  # photos of one size (the usual catalog): no scatter, which would wait for the device
        return _resize_and_crop(groups[0][1], spec), failed
    out = torch.empty((len(images), spec.crop[0], spec.crop[1], 3), dtype=torch.uint8, device=device)
    for positions, batch in groups:
        out[positions] = _resize_and_crop(batch, spec)
    return out, failed


def _writable(jpeg: bytes | memoryview) -> bytes | bytearray | memoryview:
    """The JPEG as a buffer torch can wrap without a warning: a writable view as it is (the read
    stage's shared memory, no copy of the ~250 KB), anything read-only copied."""
    if isinstance(jpeg, memoryview) and not jpeg.readonly:
        return jpeg
    return bytearray(jpeg)


def _by_size(images: Sequence[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """Images grouped by size, each group stacked, so one resize call serves the group."""
    import torch

    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((image.shape[1], image.shape[2]), []).append(i)
    return [(idx, torch.stack([images[i] for i in idx])) for idx in groups.values()]


def _resize_and_crop(batch: torch.Tensor, spec: PixelSpec) -> torch.Tensor:
    """(n, 3, H, W) uint8 -> (n, h, w, 3) uint8: shortest side to the spec's size (antialiased
    bicubic, rounded to uint8 as Pillow does), then the centre crop."""
    import torch

    height, width = batch.shape[2], batch.shape[3]
    size = spec.resized(height, width)
    if size != (height, width):
        floats = torch.nn.functional.interpolate(
            batch.float(), size=size, mode="bicubic", antialias=True, align_corners=False
        )
        batch = floats.round_().clamp_(0, 255).to(torch.uint8)
    top, left = spec.crop_origin(*size)
    return batch[:, :, top : top + spec.crop[0], left : left + spec.crop[1]].permute(0, 2, 3, 1)
