"""An int8 copy of the text tower for texts on CPU, used only where it keeps fp32's vectors.

A served query embeds one short text, and on a 2-core CPU the ViT-B/32-shape text tower takes
about 20 ms of it in fp32. Dynamic int8 quantization (torch's ``quantize_dynamic`` over the
tower's Linear layers; x86 int8 kernels, faster still where the CPU has VNNI) cuts that. Query
texts in ``serve`` take this path, and so do an ingest's product texts under ``auto`` precision
on a CPU (``product_text_encoder``); each only after probe texts
showed a cosine of at least ``MIN_COSINE`` to fp32 on this machine. Image vectors, and the
product texts of the HTTP write routes, keep the model's own precision.

The copy also computes CLIP's quick-GELU as SiLU (``TextTower.quick_gelu_as_silu``), one pass
over the MLP's widest activations instead of three (12% of the int8 tower's time in a profile of
480 product texts, ViT-B/32 shape, 2 cores held to AVX2).

Int8 activations are scaled per pass, so a text's vector moves slightly (cosine about 0.998)
with the texts it shares a pass with; fp32 is the reference every choice is checked against.

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
from shelfsight.search.embedder import Embedder, LengthBatches, least_cosine, normalize_rows
from shelfsight.search.towers import TextTower, clip_model, copied_linear, supported

log = logging.getLogger(__name__)

# The least cosine to fp32 a probe text may have for the int8 tower to be used.
MIN_COSINE = 0.995
# The narrowest text tower whose product texts ingest runs in int8. Narrower ones (the tests'
# tiny preset, the demo's small one) cost little per product next to decoding its photo, and keep
# the model's own vectors, the ones the write routes and queries make.
MIN_PRODUCT_WIDTH = 512
# Catalog texts added to the probes when an ingest checks the int8 tower.
PRODUCT_PROBES = 8
# Query texts per int8 pass: as many as ``serve`` batches into one (search/batching.py).
QUERY_BATCH = 32
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
    clip = clip_model(embedder.model)
    if clip is None:
        raise TypeError(f"{embedder.model_name} is not a CLIP model")
    return clip


def _quantized(module: Any) -> Any:
    """``module``'s Linear layers as dynamic int8 ones (weights int8, activations per batch), in place."""
    import torch

    quantize: Any = torch.ao.quantization.quantize_dynamic
    return quantize(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def _fp32_copies(clip: Any) -> tuple[Any, Any]:
    """fp32 copies of a half model's text tower and projection: the int8 tower's float parts, and the
    fp32 vectors it is checked against."""
    return copy.deepcopy(clip.text_model).float(), copy.deepcopy(clip.text_projection).float()


def _unshared_linears(tower: TextTower, clip: Any) -> None:
    """Copies of the Linears ``tower`` still shares with the model (``fuse_qkv`` and
    ``quick_gelu_as_silu`` copied the others), so that quantizing it in place, which marks each
    Linear it converts, leaves the model's own as they were."""
    from torch import nn

    shared = {id(m) for m in clip.modules()}
    for parent in (tower, *tower.layers):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and id(child) in shared:
                setattr(parent, name, copied_linear(child.weight, child.bias))


def _reference_vectors(tower: TextTower, precision: str, embedder: Embedder, probes: list[str]) -> np.ndarray:
    """``probes`` through an unquantized text tower, run in ``precision``: the model's own unpacked
    (so a process whose texts all run in int8 never packs it), or an fp32 copy."""
    from shelfsight.search.precision import inference

    runner = Int8TextEncoder(tower, embedder.model.tokenizer, embedder.max_tokens, len(probes))
    with inference(precision, "cpu"):
        vectors: np.ndarray = runner.encode_texts(probes)
    return vectors


def int8_supported() -> str | None:
    """Why int8 matrix kernels cannot run here, or None when they can."""
    import torch

    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "qnnpack")):
        return f"torch has no int8 engine here (supported: {', '.join(engines)})"
    return None


class Int8TextEncoder:
    """Texts through an int8 copy of the text tower; the model itself is left as it was."""

    def __init__(self, tower: Any, tokenizer: Any, max_tokens: int, batch_size: int = QUERY_BATCH):
        self.tower = tower
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    @classmethod
    def build(
        cls, embedder: Embedder, probes: Sequence[str] = PROBES, batch_size: int = QUERY_BATCH
    ) -> tuple[Int8TextEncoder | None, float]:
        """The int8 encoder and the least probe cosine to the model itself and to fp32 (the model,
        or an fp32 copy of the tower where the model runs in half); (None, cosine) when it falls
        short of ``MIN_COSINE``, (None, nan) when the model is not on the CPU, is not a CLIP model
        ``towers`` supports, or int8 cannot run.
        ``batch_size``: texts per pass (int8 scales activations per pass, so it is fixed here, not
        taken from the embedder, which an ingest may have set)."""
        clip = clip_model(embedder.model)
        if not supported(clip) or str(embedder.model.device) != "cpu" or int8_supported() is not None:
            return None, float("nan")
        in_fp32 = embedder.precision == "fp32"
        parts = (clip.text_model, clip.text_projection) if in_fp32 else _fp32_copies(clip)
        own = TextTower.from_clip(clip).eval()  # the model's own modules, in its precision
        folded = TextTower(*parts)  # layers of its own over those modules (fp32 copies for a half model)
        folded.fuse_qkv()
        folded.quick_gelu_as_silu()
        _unshared_linears(folded, clip)
        with warnings.catch_warnings():  # torch 2.13 marks its quantized tensor types as deprecated
            warnings.simplefilter("ignore", UserWarning)
            tower = _quantized(folded)
        tokenizer, max_tokens, probes = embedder.model.tokenizer, embedder.max_tokens, list(probes)
        encoder = cls(tower.eval(), tokenizer, max_tokens, batch_size)
        fast = encoder.encode_texts(probes)
        references = [(own, embedder.precision)] + ([] if in_fp32 else [(TextTower(*parts).eval(), "fp32")])
        cosine = least_cosine(
            [_reference_vectors(t, p, embedder, probes) for t, p in references], [fast] * len(references)
        )
        if cosine < MIN_COSINE:
            log.info("int8 text tower not used: probe cosine to fp32 %.4f < %.3f", cosine, MIN_COSINE)
            return None, cosine
        return encoder, cosine

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as ``Embedder.encode_texts`` does: (n, d) float32, unit rows."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        return self.encode_token_ids([np.asarray(t, dtype=np.int64) for t in tokens])

    def encode_token_ids(self, token_ids: Sequence[np.ndarray]) -> np.ndarray:
        """Embed texts tokenized elsewhere, as ``Embedder.encode_token_ids`` does."""
        import torch

        if not token_ids:
            return np.zeros((0, 0), dtype=np.float32)
        batches = LengthBatches(token_ids, self.batch_size)
        with torch.inference_mode():
            parts = [self.tower(self.tower.rows(texts)).float() for texts in batches.groups()]
        return normalize_rows(batches.in_given_order(torch.cat(parts).numpy()))


def product_text_encoder(embedder: Embedder, samples: Sequence[str]) -> tuple[Int8TextEncoder | None, str]:
    """The int8 encoder for an ingest's product texts, or None; and what the texts run in, and why.

    Int8 replaces the model's own text tower only under ``auto`` precision on a CPU (where the
    model runs fp32, or bf16 on a CPU that has it natively), for a tower of at least
    ``MIN_PRODUCT_WIDTH``, and only when the probes, with up to ``PRODUCT_PROBES`` of the
    catalog's own texts (``samples``), keep ``MIN_COSINE`` to fp32. Where bf16 is native, int8
    still runs faster than the packed bf16 tower (search/packed_towers.py), by less: ViT-B/32 shape,
    480 product texts of 49 tokens on average, 2 AVX-512 BF16 and VNNI cores, 241-261 texts/s
    against 200-205, while making and checking the int8 tower costs about 0.7 s; so the ingest asks
    for it only on catalogs of ``pipeline.INT8_MIN_ROWS`` rows or more."""
    own = embedder.precision
    if embedder.requested_precision != "auto" or embedder.torch_device != "cpu" or own not in ("fp32", "bf16"):
        return None, own
    try:
        width = int(_clip_model(embedder).text_model.config.hidden_size)
        if width < MIN_PRODUCT_WIDTH:
            return None, f"{own} (int8 only for text towers {MIN_PRODUCT_WIDTH} wide or more; this one is {width})"
        probes = [*PROBES, *samples[:PRODUCT_PROBES]]
        fast, cosine = Int8TextEncoder.build(embedder, probes, embedder.batch_size)
    except Exception as exc:  # int8 is only a speed-up: a model it cannot copy or quantize runs as it is
        log.warning("int8 text tower unavailable, product texts run in %s: %r", own, exc)
        return None, f"{own} (int8 unavailable: {exc!r})"
    if fast is None:
        why = "no int8 kernels here" if np.isnan(cosine) else f"int8 kept only cosine {cosine:.4f} to fp32"
        return None, f"{own} ({why})"
    return fast, f"int8 (least cosine to fp32 {cosine:.4f} over {len(probes)} probe texts)"
