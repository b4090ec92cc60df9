"""The towers' matrix products on a CPU through oneDNN: weights packed once, bias and activation
fused into each product.

torch's own CPU ``linear`` leaves speed behind in both of the precisions a CPU runs:

- in fp32 it calls MKL, which on the AMD EPYC development machines runs its AVX2 code although
  the CPU has AVX-512 (holding MKL to AVX2 changed nothing there);
- in bf16 it calls oneDNN but reorders the weight on every call and copies the bias into the
  output first;
- and either way CLIP's quick-GELU runs after the MLP's first product as three more passes over
  its widest activations (a sixth of the bf16 vision tower's time).

``pack_tower`` gives each transformer layer of a tower ``PackedLinear`` products instead:
the query, key and value projections as one product, and the MLP's activation computed as the
first product's output is written. Quick-GELU, ``y * sigmoid(1.702 y)``, is oneDNN's swish of
``1.702 y`` divided by 1.702, so the first product's weights and bias are scaled by 1.702 and the
second's weights by 1 / 1.702 (in fp32, before rounding to the model's precision).

Measured on 2 AVX-512 BF16 cores (ViT-B/32 shape, batches of 16, alternating rounds of one
script): the vision tower ran 22-23 images/s in fp32 before and 48-50 packed, 57-66 in bf16
before and 88-94 packed; the text tower 56 texts/s in fp32 before and 123 packed, 185-193 in bf16
before and 211-215 packed. With oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, as on a CPU
without AVX-512) the fp32 vision tower went from 21.6-22.8 to 25.4-26.1 images/s.

The packed weights are copies (the model's own stay, for its other paths), so a packed ViT-B/32
shape holds about 250 MB more in bf16 and 500 MB more in fp32. ``Embedder`` packs its towers on
a CPU, each on its first use (a served query's text never packs the vision tower), and keeps
it only if it gives the unpacked tower's vectors on probe inputs.

Example::

    vision, kernels = packed_if_faithful(model, "vision", ClipTowers.of(model).vision, "bf16")
    # kernels: "oneDNN, packed (probe cosine to torch's 0.99943)", or "torch (why not)"
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from shelfsight.search.precision import MIN_COSINE, inference, torch_dtype
from shelfsight.search.towers import QUICK_GELU, ClipTowers, is_quick_gelu
from torch import nn
from torch.nn import functional

log = logging.getLogger(__name__)

# Rows a product is packed for: 16 images of 50 tokens, the CPU ingest's batches of the ViT-B/32
# shape. Any row count runs; this only guides oneDNN's choice of blocking.
ROWS_HINT = 800


class PackedLinear(nn.Module):
    """``activation(x @ weight.T + bias)`` through oneDNN, the weight packed once in ``dtype``.
    ``activation``: 'none', 'swish', or 'gelu' with ``algorithm`` 'none' (erf) or 'tanh'. For
    inference on a CPU only: the packed weight and the bias are plain attributes, which ``.to()``
    and ``state_dict`` leave out."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        activation: str = "none",
        algorithm: str = "",
    ):
        super().__init__()
        self.dtype, self.activation, self.algorithm = dtype, activation, algorithm
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), ROWS_HINT)
        self.bias = None if bias is None else bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x.to(self.dtype), self.weight, self.bias, self.activation, [], self.algorithm
        )
        return out


def fused_activation(act: nn.Module) -> tuple[str, str, float] | None:
    """How oneDNN computes ``act`` inside a product: (activation, algorithm, the scale folded into
    the product before it), or None for an activation it does not have."""
    if is_quick_gelu(act):
        return "swish", "", QUICK_GELU
    name = type(act).__name__
    if name == "GELUActivation" and getattr(act, "act", None) is functional.gelu:
        return "gelu", "none", 1.0
    if name in ("NewGELUActivation", "FastGELUActivation", "GELUTanh", "PytorchGELUTanh"):
        return "gelu", "tanh", 1.0
    if isinstance(act, nn.GELU):
        return "gelu", "tanh" if act.approximate == "tanh" else "none", 1.0
    return None


def _pack_layer(layer: Any, dtype: torch.dtype) -> None:
    """One ``towers._Layer``'s products as ``PackedLinear`` (q, k and v fused into one)."""
    if layer.qkv is None:
        layer.fuse_qkv()
    layer.qkv = PackedLinear(layer.qkv.weight, layer.qkv.bias, dtype)
    layer.out = PackedLinear(layer.out.weight, layer.out.bias, dtype)
    fused = fused_activation(layer.act)
    activation, algorithm, scale = fused or ("none", "", 1.0)  # unfused: the activation stays a pass of its own
    fc1, fc2 = layer.fc1, layer.fc2
    layer.fc1 = PackedLinear(fc1.weight.float() * scale, fc1.bias.float() * scale, dtype, activation, algorithm)
    layer.fc2 = PackedLinear(fc2.weight.float() / scale, fc2.bias, dtype)
    if fused is not None:
        layer.act = nn.Identity()


def unavailable() -> str | None:
    """Why oneDNN's packed products cannot run here, or None when they can."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return "this torch has no oneDNN"
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this torch's oneDNN has no fused linear"
    return None


def pack_tower(tower: nn.Module, dtype: torch.dtype) -> None:
    """Every transformer layer of a tower (``towers.VisionTower`` or ``TextTower``) on
    ``PackedLinear`` products in ``dtype``, in place."""
    for layer in tower.layers:  # type: ignore[union-attr]
        _pack_layer(layer, dtype)


def packed_if_faithful(model: Any, kind: str, plain: Any, precision: str) -> tuple[Any, str]:
    """A fresh ``kind`` tower ('vision' or 'text') of ``model`` (a sentence-transformers CLIP
    model on the CPU, in ``precision`` 'fp32' or 'bf16'), packed, if it gives the ``plain`` tower's
    vectors on probe inputs to the cosine a precision must keep (``precision.MIN_COSINE``: a
    broken product misses it by far; bf16 packed and plain differ by rounding alone, 0.9994 for
    the ViT-B/32 shape's images); else ``plain`` itself. Also what the tower runs on, and why."""
    why = unavailable() or (None if precision in ("fp32", "bf16") else f"not for {precision}")
    if why is not None:
        return plain, f"torch ({why})"
    try:
        towers = ClipTowers.of(model)
        assert towers is not None
        packed = getattr(towers, kind)
        pack_tower(packed, torch_dtype(precision))
        probe = _probe_input(kind, plain)
        with inference(precision, "cpu"):
            cosine = float(functional.cosine_similarity(plain(probe).float(), packed(probe).float()).min())
    except Exception as exc:  # packing is only a speed-up: a tower it cannot pack runs as it is
        log.warning("oneDNN packing failed, the %s tower runs as torch's: %r", kind, exc)
        return plain, f"torch (packing failed: {exc!r})"
    if cosine < MIN_COSINE:
        log.warning("oneDNN-packed %s tower matched the plain one only to cosine %.5f; not used", kind, cosine)
        return plain, f"torch (packed tower kept only cosine {cosine:.5f})"
    return packed, f"oneDNN, packed (probe cosine to torch's {cosine:.5f})"


def _probe_input(kind: str, tower: Any) -> Any:
    """Two random images, or two random texts of 12 and 7 tokens ending in the end-of-text token,
    for ``tower``."""
    generator = torch.Generator().manual_seed(0)
    if kind == "vision":
        size = int(tower.embeddings.config.image_size)
        return torch.randn(2, 3, size, size, generator=generator)
    vocabulary = tower.tokens.num_embeddings
    ids = torch.randint(0, vocabulary, (2, 12), generator=generator)
    ids[ids == tower.eos_token_id] = (tower.eos_token_id + 1) % vocabulary
    ids[:, -1] = tower.eos_token_id
    return tower.rows([ids[0].numpy(), np.append(ids[1, :6].numpy(), tower.eos_token_id)])
