"""The towers' matrix products on a CPU through oneDNN: weights packed once, bias and activation
fused into each product.

torch's own CPU ``linear`` leaves speed behind in both of the precisions a CPU runs:

- in fp32 it calls MKL, which on the AMD EPYC development machines runs its AVX2 code although
  the CPU has AVX-512 (holding MKL to AVX2 changed nothing there);
- in bf16 it calls oneDNN but reorders the weight on every call and copies the bias into the
  output first;
- and either way CLIP's quick-GELU runs after the MLP's first product as three more passes over
  its widest activations (a sixth of the bf16 vision tower's time).

``pack_towers`` gives each transformer layer of both towers ``PackedLinear`` products instead:
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
a CPU and keeps them only if they give the unpacked towers' vectors on probe inputs.

Example::

    towers, kernels = packed_if_faithful(model, ClipTowers.of(model), "bf16")
    # kernels: "oneDNN, packed (probe cosine to torch's 0.99996)", or "torch (why not)"
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from shelfsight.search.precision import MIN_COSINE, inference, torch_dtype
from shelfsight.search.towers import ClipTowers
from torch import nn
from torch.nn import functional

log = logging.getLogger(__name__)

# quick-GELU(y) = y * sigmoid(QUICK_GELU * y) = swish(QUICK_GELU * y) / QUICK_GELU
QUICK_GELU = 1.702
# Rows a product is packed for: 16 images of 50 tokens, the CPU ingest's batches of the ViT-B/32
# shape. Any row count runs; this only guides oneDNN's choice of blocking.
ROWS_HINT = 800


class PackedLinear(nn.Module):
    """``activation(x @ weight.T + bias)`` through oneDNN, the weight packed once in ``dtype``.
    ``activation``: 'none', 'swish', or 'gelu' with ``algorithm`` 'none' (erf) or 'tanh'."""

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
    name = type(act).__name__
    if name == "QuickGELUActivation":
        return "swish", "", QUICK_GELU
    if name == "GELUActivation" and getattr(act, "act", None) is functional.gelu:
        return "gelu", "none", 1.0
    if name in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh"):
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
    if fused is None:  # the activation stays a pass of its own
        layer.fc1 = PackedLinear(layer.fc1.weight, layer.fc1.bias, dtype)
        layer.fc2 = PackedLinear(layer.fc2.weight, layer.fc2.bias, dtype)
        return
    activation, algorithm, scale = fused
    fc1, fc2 = layer.fc1, layer.fc2
    layer.fc1 = PackedLinear(fc1.weight.float() * scale, fc1.bias.float() * scale, dtype, activation, algorithm)
    layer.fc2 = PackedLinear(fc2.weight.float() / scale, fc2.bias, dtype)
    layer.act = nn.Identity()


def unavailable() -> str | None:
    """Why oneDNN's packed products cannot run here, or None when they can."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return "this torch has no oneDNN"
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this torch's oneDNN has no fused linear"
    return None


def pack_towers(towers: ClipTowers, dtype: torch.dtype) -> None:
    """Every transformer layer of both towers on ``PackedLinear`` products in ``dtype``, in place."""
    for tower in (towers.vision, towers.text):
        for layer in tower.layers:
            _pack_layer(layer, dtype)


def packed_if_faithful(model: Any, towers: ClipTowers, precision: str) -> tuple[ClipTowers, str]:
    """The towers of ``model`` (a sentence-transformers CLIP model on the CPU, in ``precision``
    'fp32' or 'bf16') packed, if they give ``towers``' vectors on probe inputs to the cosine a
    precision must keep (``precision.MIN_COSINE``: a broken product misses it by far; bf16 packed
    and plain differ by rounding alone, 0.9994 for the ViT-B/32 shape); else ``towers``
    themselves. Also what the towers run on, and why."""
    why = unavailable() or (None if precision in ("fp32", "bf16") else f"not for {precision}")
    if why is not None:
        return towers, f"torch ({why})"
    try:
        packed = ClipTowers.of(model)
        assert packed is not None
        pack_towers(packed, torch_dtype(precision))
        cosine = _least_cosine(_probe(towers, precision), _probe(packed, precision))
    except Exception as exc:  # packing is only a speed-up: towers it cannot pack run as they are
        log.warning("oneDNN packing failed, the towers run as torch's: %r", exc)
        return towers, f"torch (packing failed: {exc!r})"
    if cosine < MIN_COSINE:
        log.warning("oneDNN-packed towers matched the plain ones only to cosine %.5f; not used", cosine)
        return towers, f"torch (packed towers kept only cosine {cosine:.5f})"
    return packed, f"oneDNN, packed (probe cosine to torch's {cosine:.5f})"


def _probe(towers: ClipTowers, precision: str) -> list[torch.Tensor]:
    """Unit vectors of two random images and two random texts through ``towers``."""
    generator = torch.Generator().manual_seed(0)
    vision, text = towers.vision, towers.text
    size = int(vision.embeddings.config.image_size)
    pixels = torch.randn(2, 3, size, size, generator=generator)
    vocabulary = text.tokens.num_embeddings
    ids = torch.randint(0, vocabulary, (2, 12), generator=generator)
    ids[ids == text.eos_token_id] = (text.eos_token_id + 1) % vocabulary
    ids[:, -1] = text.eos_token_id
    with inference(precision, "cpu"):
        return [functional.normalize(t(x).float(), dim=-1) for t, x in ((vision, pixels), (text, ids))]


def _least_cosine(reference: list[torch.Tensor], packed: list[torch.Tensor]) -> float:
    return min(float((a * b).sum(dim=-1).min()) for a, b in zip(reference, packed, strict=True))
