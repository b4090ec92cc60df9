"""The number format the model runs in, chosen per machine at run time.

``auto`` is fp16 on a CUDA GPU, bf16 on a CPU that computes bf16 natively (AVX-512 BF16 or AMX,
read from the CPU at run time, never assumed), else fp32. On a CPU without native bf16 the
conversion costs more than it saves, so fp32 stays. Whatever ``auto`` picks is kept only if it
matches fp32 to cosine >= ``MIN_COSINE`` on probe inputs (``Embedder`` checks at load time).

Example::

    precision = resolve_precision("auto", "cpu")      # "bf16" or "fp32", by this machine's CPU
    with inference(precision, "cpu"):
        features = model.get_image_features(pixel_values=x)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from shelfsight.search.errors import BadInputError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# What a lower precision must keep against fp32, per vector, to be chosen by ``auto``.
MIN_COSINE = 0.995


@lru_cache(maxsize=1)
def cpu_runs_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX tiles), asked of torch and, failing
    that, read from /proc/cpuinfo."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    found = [getattr(torch.cpu, name, None) for name in probes]
    if any(f is not None for f in found):
        return any(bool(f()) for f in found if f is not None)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, device: str) -> str:
    """``requested`` ('auto', 'fp32', 'fp16', 'bf16') made concrete for ``device`` ('cpu', 'cuda', 'cuda:1', ...)."""
    if requested not in PRECISIONS:
        raise BadInputError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    on_gpu = device.startswith("cuda")
    if requested == "auto":
        if on_gpu:
            return "fp16"
        return "bf16" if cpu_runs_bf16() else "fp32"
    if requested == "fp16" and not on_gpu:
        raise BadInputError("--precision fp16 runs only on a CUDA GPU; on a CPU use bf16 or fp32 (or auto)")
    return requested


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@contextlib.contextmanager
def inference(precision: str, device: str) -> Iterator[None]:
    """How the towers run: no autograd, ``autocast(precision)``, and on CUDA without cuDNN's
    attention kernel. cuDNN builds an execution plan for each new input shape, about 17 ms of the
    calling thread; a batch of texts comes in a new shape nearly every time, so the text tower
    ran at 1,200-1,800 texts/s in fp16 on an H200, against 15,000-19,000 without cuDNN (token ids
    in, vectors back on the host) and 31,000 with every plan already made (measured 2026-11-27,
    ViT-B/32 shape, batches of 256)."""
    import torch

    off = _CUDNN_ATTENTION_OFF if device.startswith("cuda") else contextlib.nullcontext()
    with torch.inference_mode(), autocast(precision, device), off:
        yield


class _CudnnAttentionOff:
    """cuDNN's attention kernel off while any thread is inside, as it was once none is. The switch
    is process-wide in torch (``sdpa_kernel`` too), so concurrent towers (a server's requests)
    count themselves in and out rather than each restoring what it saw on entry. The last one out
    restores what the first one in found: a change to the switch made meanwhile is undone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._was = True

    def __enter__(self) -> None:
        import torch

        with self._lock:
            if self._inside == 0:
                self._was = bool(torch.backends.cuda.cudnn_sdp_enabled())  # type: ignore[no-untyped-call]
                torch.backends.cuda.enable_cudnn_sdp(False)
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        import torch

        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                torch.backends.cuda.enable_cudnn_sdp(self._was)


_CUDNN_ATTENTION_OFF = _CudnnAttentionOff()


@contextlib.contextmanager
def autocast(precision: str, device: str) -> Iterator[None]:
    """Mixed precision for the block (matrix products in ``precision``, norms and softmax in fp32);
    nothing for fp32."""
    if precision == "fp32":
        yield
        return
    import torch

    with torch.autocast(device_type=device.split(":")[0], dtype=torch_dtype(precision)):
        yield
