"""An int8 copy of the text tower for query texts on CPU, used only where it keeps fp32's vectors.

A served query embeds one short text, and on a 2-core CPU the ViT-B/32-shape text tower takes
about 20 ms of it in fp32. Dynamic int8 quantization (torch's ``quantize_dynamic`` over the
tower's Linear layers; x86 int8 kernels, faster still where the CPU has VNNI) cuts that. Product
vectors, image queries and the write routes keep the fp32 model: only query texts take this path,
and only after probe texts showed a cosine of at least ``MIN_COSINE`` to fp32 on this machine.

Example::

    fast, cosine = Int8TextEncoder.build(embedder)   # None when the CPU or the check says no
    vectors = (fast or embedder).encode_texts(["red leather bag"])
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from shelfsight.search.embedder import Embedder, normalize_rows
from shelfsight.search.text_tower import LeanTextTower

log = logging.getLogger(__name__)

# The least cosine to fp32 a probe text may have for the int8 tower to be used.
MIN_COSINE = 0.995
# Texts like shoppers' queries: short, with colours, materials, kinds, a brand-like word, numbers.
PROBES = (
    "red leather bag",
    "blue canvas sneaker size 42",
    "black wool coat for winter",
    "white ceramic mug",
    "striped cotton t-shirt",
    "kestrel running shoe",
    "minimal steel watch with black strap",
    "pink checked umbrella",
    "vintage brown suede boots",
    "green glass bottle 750 ml",
    "oversized grey hoodie",
    "gift for a coffee lover",
    "waterproof travel backpack 30l",
    "linen table cloth beige",
    "kids yellow rain jacket",
    "handmade bamboo lamp",
)


def _clip_model(embedder: Embedder) -> Any:
    from transformers import CLIPModel

    return next(m for m in embedder.model.modules() if isinstance(m, CLIPModel))


def _quantized(module: Any) -> Any:
    """``module`` with its Linear layers as dynamic int8 ones (weights int8, activations per batch)."""
    import torch

    quantize: Any = torch.ao.quantization.quantize_dynamic
    return quantize(module, {torch.nn.Linear}, dtype=torch.qint8)


def int8_supported() -> str | None:
    """Why int8 matrix kernels cannot run here, or None when they can."""
    import torch

    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "qnnpack")):
        return f"torch has no int8 engine here (supported: {', '.join(engines)})"
    return None


class Int8TextEncoder:
    """Query texts through an int8 copy of the text tower; the fp32 model is left as it was."""

    def __init__(self, tower: Any, tokenizer: Any, max_tokens: int):
        self.tower = tower
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    @classmethod
    def build(cls, embedder: Embedder, probes: Sequence[str] = PROBES) -> tuple[Int8TextEncoder | None, float]:
        """The int8 encoder and the least probe cosine to fp32; (None, cosine) when it falls short
        of ``MIN_COSINE``, (None, nan) when the model is not on the CPU or int8 cannot run."""
        if str(embedder.model.device) != "cpu" or int8_supported() is not None:
            return None, float("nan")
        clip = _clip_model(embedder)
        with warnings.catch_warnings():  # torch 2.13 marks its quantized tensor types as deprecated
            warnings.simplefilter("ignore", UserWarning)
            tower = _quantized(
                LeanTextTower(copy.deepcopy(clip.text_model).float(), copy.deepcopy(clip.text_projection).float())
            )
        encoder = cls(tower.eval(), embedder.model.tokenizer, embedder.max_tokens)
        fast, exact = encoder.encode_texts(list(probes)), embedder.encode_texts(list(probes))
        cosine = float(np.min(np.sum(fast * exact, axis=1)))
        if cosine < MIN_COSINE:
            log.info("int8 text tower not used: probe cosine to fp32 %.4f < %.3f", cosine, MIN_COSINE)
            return None, cosine
        return encoder, cosine

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as ``Embedder.encode_texts`` does: (n, d) float32, unit rows."""
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        with torch.inference_mode():
            tokens = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            )
            vectors = self.tower(tokens["input_ids"]).float().numpy()
        return normalize_rows(vectors)
