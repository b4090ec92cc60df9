"""CLIP's two towers as a few plain torch operations over the loaded model's own weights.

The Hugging Face ``CLIPModel`` runs every layer of each tower over every token, although the
vector it returns is read from one token a text or image: the end-of-text token of a text, the
class token of an image. These towers run the last layer for that token alone (its query and its
MLP; keys and values still come from every token), which is about a twelfth of each tower's work:
the ViT-B/32-shape vision tower ran at 87-91 images/s in bf16 against 80-82 for
``get_image_features`` (2 AVX-512 BF16 cores, batches of 16, same run). They also skip the Python
around each layer (attention dispatch, a causal mask built per call, output records) and, for a
text, the padding mask: text attention is causal, so a text's end token never sees the pads after
it. No weight is copied; the modules are the model's own (on a CPU, ``packed_towers`` then
swaps each layer's products for ones on packed copies of the weights).

``Embedder`` runs pixels, token ids and texts through these towers whenever the model is a
CLIPModel, on every device; on a CPU their layers' products are then swapped for oneDNN's packed
ones (``packed_towers``, copies of the weights). ``text_int8`` quantizes a copy of the text tower.

Example::

    towers = ClipTowers.of(sentence_transformer)    # None for a model that is not CLIP
    image_vectors = towers.vision(pixel_values)     # (n, projection_dim), not normalized
    text_vectors = towers.text(input_ids)           # padded with the end-of-text token
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import nn
from torch.nn import functional

# quick-GELU(y) = y * sigmoid(QUICK_GELU * y) = silu(QUICK_GELU * y) / QUICK_GELU
QUICK_GELU = 1.702


def is_quick_gelu(act: nn.Module) -> bool:
    """Whether ``act`` is transformers' quick-GELU, CLIP's MLP activation."""
    return type(act).__name__ == "QuickGELUActivation"


class _Layer(nn.Module):
    """One pre-norm transformer block, run over every token or (``pooled``) for one token a row."""

    def __init__(self, layer: Any, causal: bool):
        super().__init__()
        attn = layer.self_attn
        self.heads, self.causal = int(attn.num_heads), causal
        self.norm1, self.norm2 = layer.layer_norm1, layer.layer_norm2
        self.q, self.k, self.v, self.out = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
        self.qkv: nn.Linear | None = None
        self.fc1, self.fc2, self.act = layer.mlp.fc1, layer.mlp.fc2, layer.mlp.activation_fn

    def fuse_qkv(self) -> None:
        """The query, key and value projections as one Linear, a copy of their weights."""
        projections = (self.q, self.k, self.v)
        fused = copied_linear(torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections]))
        self.qkv, self.q, self.k, self.v = fused, None, None, None

    def quick_gelu_as_silu(self) -> None:
        """CLIP's quick-GELU as SiLU, one pass over the MLP's widest activations instead of three
        (scale, sigmoid, product): fc1 becomes a copy scaled by ``QUICK_GELU``, fc2 a copy whose
        weight is divided by it. Any other activation stays as it is."""
        if not is_quick_gelu(self.act):
            return
        fc1, fc2 = self.fc1, self.fc2
        self.fc1 = copied_linear(fc1.weight * QUICK_GELU, None if fc1.bias is None else fc1.bias * QUICK_GELU)
        self.fc2 = copied_linear(fc2.weight / QUICK_GELU, fc2.bias)
        self.act = nn.SiLU()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.heads, -1).transpose(1, 2)

    def _projections(self, h: torch.Tensor, pooled: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Queries (of the ``pooled`` rows alone, when given), and keys and values of every token."""
        if self.qkv is not None:
            q, k, v = self.qkv(h).chunk(3, dim=-1)
            return (q if pooled is None else _rows(q, pooled)), k, v
        return self.q(h if pooled is None else _rows(h, pooled)), self.k(h), self.v(h)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (n, t, width) on; with ``pooled`` (n,) positions, the rows at those positions
        alone, (n, 1, width), each attending to every token (a causal one: to those up to it)."""
        n, t, width = x.shape
        q, k, v = (self._heads(p) for p in self._projections(self.norm1(x), pooled))
        if pooled is None:
            attended = functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            x = _rows(x, pooled)
            seen = (torch.arange(t, device=x.device) <= pooled.unsqueeze(1)).view(n, 1, 1, t) if self.causal else None
            attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=seen)
        x = x + self.out(attended.transpose(1, 2).reshape(n, -1, width))
        out: torch.Tensor = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return out


def copied_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear holding copies of ``weight`` and ``bias``, made without a random initialisation."""
    out_features, in_features = weight.shape
    kind = {"bias": bias is not None, "dtype": weight.dtype, "device": weight.device}
    out: nn.Linear = nn.utils.skip_init(nn.Linear, in_features, out_features, **kind)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def _rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One row of each of ``x``'s (n, t, width) sequences, at ``positions`` (n,): (n, 1, width)."""
    return x[torch.arange(len(x), device=x.device), positions].unsqueeze(1)


def _encoded(layers: nn.ModuleList, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Every layer over ``x``, the last for the ``pooled`` positions alone: (n, width)."""
    for layer in layers[:-1]:
        x = layer(x)
    out: torch.Tensor = layers[-1](x, pooled)[:, 0]
    return out


class VisionTower(nn.Module):
    """Pixel values (n, 3, h, w), normalized, to unnormalized image embeddings (n, projection_dim),
    as ``CLIPModel.get_image_features`` computes them."""

    def __init__(self, clip: Any):
        super().__init__()
        vision = clip.vision_model
        self.embeddings, self.pre_norm = vision.embeddings, vision.pre_layrnorm
        self.layers = nn.ModuleList(_Layer(layer, causal=False) for layer in vision.encoder.layers)
        self.post_norm, self.projection = vision.post_layernorm, clip.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(self.embeddings(pixel_values))
        class_token = torch.zeros(len(x), dtype=torch.long, device=x.device)
        vectors: torch.Tensor = self.projection(self.post_norm(_encoded(self.layers, x, class_token)))
        return vectors


class TextTower(nn.Module):
    """Token ids (n, t) to unnormalized text embeddings (n, projection_dim), as
    ``CLIPModel.get_text_features`` computes them. Pad with the end-of-text token: an older
    config's tower (end-of-text id 2) reads each text at its highest id, which a pad of another id
    could outrank."""

    def __init__(self, text_model: Any, projection: nn.Module):
        super().__init__()
        embeddings = text_model.embeddings
        self.tokens, self.positions = embeddings.token_embedding, embeddings.position_embedding
        self.layers = nn.ModuleList(_Layer(layer, causal=True) for layer in text_model.encoder.layers)
        self.final_norm, self.projection = text_model.final_layer_norm, projection
        self.eos_token_id = int(text_model.eos_token_id)

    @classmethod
    def from_clip(cls, clip: Any) -> TextTower:
        """The text tower of a ``CLIPModel`` (see ``supported``)."""
        return cls(clip.text_model, clip.text_projection)

    def fuse_qkv(self) -> None:
        """Each layer's query, key and value projections as one Linear (a copy of their weights):
        one matrix product instead of three, which an int8 copy gains most from (one activation
        scale and one int8 call). One four-word query, ViT-B/32 shape, int8, one thread: 3.4 ms
        fused against 3.8 ms unfused (median of 6 alternating rounds of 40)."""
        for layer in self.layers:
            layer.fuse_qkv()  # type: ignore[operator]

    def quick_gelu_as_silu(self) -> None:
        """Each layer's quick-GELU as SiLU (``_Layer.quick_gelu_as_silu``; copies of fc1 and fc2),
        as the int8 copy runs it (search/text_int8.py)."""
        for layer in self.layers:
            layer.quick_gelu_as_silu()  # type: ignore[operator]

    def end_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Where each text's end-of-text token is, as Hugging Face's CLIP finds it."""
        if self.eos_token_id == 2:  # configs older than transformers PR 24773: the highest id
            return ids.to(torch.int).argmax(dim=-1)
        return (ids == self.eos_token_id).to(torch.int).argmax(dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions.weight[: ids.shape[1]]
        ends = _encoded(self.layers, x, self.end_positions(ids))
        vectors: torch.Tensor = self.projection(self.final_norm(ends))
        return vectors


def clip_model(model: Any) -> Any | None:
    """The ``CLIPModel`` inside a sentence-transformers model, or None."""
    from transformers import CLIPModel

    return next((m for m in model.modules() if isinstance(m, CLIPModel)), None)


def supported(clip: Any | None) -> TypeGuard[Any]:
    """Whether these towers can run ``clip`` (a ``CLIPModel``, or None): its text tower must name
    one end-of-text id, where a text's vector is read (a config may give None or a list)."""
    return clip is not None and isinstance(getattr(clip.text_model, "eos_token_id", None), int)


def pad_id(tokenizer: Any) -> int:
    """The id to pad a batch of texts for ``TextTower`` with: the end-of-text token (see there),
    the tokenizer's pad id only for a tokenizer that names no end-of-text token."""
    eos = tokenizer.eos_token_id
    return int(eos) if eos is not None else int(tokenizer.pad_token_id or 0)


@dataclass(frozen=True)
class ClipTowers:
    """A CLIP model's two towers as this module runs them, sharing the model's weights."""

    vision: VisionTower
    text: TextTower

    @classmethod
    def of(cls, model: Any) -> ClipTowers | None:
        """Both towers of a sentence-transformers model, or None when it holds no CLIPModel these
        towers support (the model then runs as transformers does)."""
        clip = clip_model(model)
        if not supported(clip):
            return None
        return cls(VisionTower(clip).eval(), TextTower.from_clip(clip).eval())
