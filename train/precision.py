"""Mixed precision: whether a run uses bf16 autocast, and the autocast context for a step.

Example::

    with autocast(device, use_bf16(device, "auto")):
        image_embeds = model.get_image_features(pixel_values=pixels)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def use_bf16(device: str, precision: str) -> bool:
    """bf16 autocast when asked, or on 'auto' where the hardware runs it natively (CPU AMX/AVX512-BF16, CUDA)."""
    import torch

    if precision in ("bf16", "fp32"):
        return precision == "bf16"
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: str, bf16: bool) -> torch.autocast:
    """bf16 autocast on ``device`` ("cuda:0" autocasts as "cuda"); a no-op context when ``bf16`` is False."""
    import torch

    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
