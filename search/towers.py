"""CLIP's two towers as a few plain torch operations over the loaded model's own weights.

The Hugging Face ``CLIPModel`` runs every layer of each tower over every token, although the
vector it returns is read from one token a text or image: the end-of-text token of a text, the
class token of an image. These towers run the last layer for that token alone (its query and its
MLP; keys and values still come from every token), which is about a twelfth of each tower's work:
the ViT-B/32-shape vision tower ran at 87-91 images/s in bf16 against 80-82 for
``get_image_features`` (2 AVX-512 BF16 cores, batches of 16, same run). They also skip the Python
around each layer (attention dispatch, a causal mask built per call, output records). Texts run
without padding (``TokenRows``): the products over every text's tokens laid end to end, attention
per text. Each text is cut after its end-of-text token: attention is causal, so what follows never
reaches its vector. No weight is copied; the modules are the model's own (on a CPU,
``packed_towers`` then swaps each layer's products for ones on packed copies of the weights).

``Embedder`` runs pixels, token ids and texts through these towers whenever the model is a
CLIPModel, on every device; on a CPU their layers' products are then swapped for oneDNN's packed
ones (``packed_towers``, copies of the weights). ``text_int8`` quantizes copies of the text
tower's products.

Example::

    towers = ClipTowers.of(sentence_transformer)    # None for a model that is not CLIP
    image_vectors = towers.vision(pixel_values)     # (n, projection_dim), not normalized
    text_vectors = towers.text(towers.text.rows(token_ids))  # token_ids: one array a text
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional

# quick-GELU(y) = y * sigmoid(QUICK_GELU * y) = silu(QUICK_GELU * y) / QUICK_GELU
QUICK_GELU = 1.702


def is_quick_gelu(act: nn.Module) -> bool:
    """Whether ``act`` is transformers' quick-GELU, CLIP's MLP activation."""
    return type(act).__name__ == "QuickGELUActivation"


@dataclass(frozen=True, eq=False)
class TokenRows:
    """A batch of texts for ``TextTower``: their token ids laid end to end, without padding.

    The tower's products (nearly all of its work) run over these rows alone; only attention runs
    per text, over a (texts, longest) grid the rows are copied into and back. Each text ends at
    its end-of-text token, where its vector is read (``TextTower.rows``): attention is causal, so
    nothing after that token changes the vector. Make one with ``TextTower.rows``."""

    ids: torch.Tensor  # (tokens,)
    positions: torch.Tensor  # (tokens,) each token's position in its text
    grid: torch.Tensor  # (tokens,) each token's row in the flattened (texts, longest) grid
    ends: torch.Tensor  # (texts,) each text's last row, its end-of-text token
    lengths: torch.Tensor  # (texts,)
    longest: int
    packed: torch.Tensor = field(repr=False)  # the five above in one tensor, which they view: one copy moves them

    @classmethod
    def of(cls, texts: Sequence[np.ndarray]) -> TokenRows:
        """``texts``: each text's token ids, cut after its end-of-text token."""
        lengths = np.array([len(t) for t in texts], dtype=np.int64)
        longest, ends = int(lengths.max()), np.cumsum(lengths) - 1
        positions = np.arange(int(lengths.sum())) - np.repeat(ends + 1 - lengths, lengths)
        grid = positions + np.repeat(np.arange(len(texts)) * longest, lengths)
        ids = np.concatenate([np.asarray(t, dtype=np.int64) for t in texts])
        return cls._unpacked(torch.from_numpy(np.concatenate([ids, positions, grid, ends, lengths])), len(ids), longest)

    @classmethod
    def _unpacked(cls, packed: torch.Tensor, tokens: int, longest: int) -> TokenRows:
        """The rows from one tensor holding ids, positions, grid rows, ends and lengths, in turn."""
        texts = (len(packed) - 3 * tokens) // 2
        ids, positions, grid, ends, lengths = torch.split(packed, [tokens, tokens, tokens, texts, texts])
        return cls(ids, positions, grid, ends, lengths, longest, packed)

    def to(self, device: str) -> TokenRows:
        """These rows on ``device``: to a GPU in one copy from pinned memory, without waiting for it."""
        if torch.device(device) == self.ids.device:
            return self
        on_gpu = str(device).startswith("cuda")
        packed = (self.packed.pin_memory() if on_gpu else self.packed).to(device, non_blocking=on_gpu)
        return self._unpacked(packed, len(self.ids), self.longest)

    @property
    def fills_grid(self) -> bool:
        """Whether the texts are all of one length (a query alone): then the rows are the grid."""
        return len(self.ids) == len(self.ends) * self.longest

    @property
    def seen(self) -> torch.Tensor:
        """(texts, 1, 1, longest): the grid positions each text's end-of-text row attends to."""
        seen = torch.arange(self.longest, device=self.lengths.device) < self.lengths.unsqueeze(1)
        return seen.view(len(self.lengths), 1, 1, self.longest)

    def in_grid(self, rows: torch.Tensor, heads: int) -> torch.Tensor:
        """``rows`` (tokens, width) as attention's (texts, heads, longest, width / heads), zeros after
        each text's end (a causal attention never reads them)."""
        texts, width = len(self.ends), rows.shape[-1]
        if self.fills_grid:
            return rows.reshape(texts, self.longest, heads, -1).transpose(1, 2)
        grid = rows.new_zeros(texts * self.longest, width).index_copy_(0, self.grid, rows)
        return grid.view(texts, self.longest, heads, -1).transpose(1, 2)

    def from_grid(self, attended: torch.Tensor) -> torch.Tensor:
        """Attention's (texts, heads, longest, head width) output back as (tokens, width) rows."""
        texts, _, longest, _ = attended.shape
        rows = attended.transpose(1, 2).reshape(texts * longest, -1)
        return rows if self.fills_grid else rows.index_select(0, self.grid)


Projections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class _Layer(nn.Module):
    """One pre-norm transformer block: ``forward`` an image's (every token attends to every token),
    ``forward_rows`` a text's (causal), each run over every token or for one token a row."""

    def __init__(self, layer: Any):
        super().__init__()
        attn = layer.self_attn
        self.heads = int(attn.num_heads)
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

    def _projections(self, h: torch.Tensor, select: Callable[[torch.Tensor], torch.Tensor] | None) -> Projections:
        """Queries (of the rows ``select`` picks, when given), and keys and values of every token."""
        if self.qkv is not None:
            q, k, v = self.qkv(h).chunk(3, dim=-1)
            return (q if select is None else select(q)), k, v
        return self.q(h if select is None else select(h)), self.k(h), self.v(h)

    def _out_and_mlp(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = x + self.out(attended)
        out: torch.Tensor = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return out

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (n, t, width) on, every token attending to every token; with ``pooled`` (n,)
        positions, the rows at those positions alone, (n, 1, width)."""
        n, _, width = x.shape
        select = None if pooled is None else (lambda rows: _rows(rows, pooled))
        q, k, v = (self._heads(p) for p in self._projections(self.norm1(x), select))
        x = x if pooled is None else _rows(x, pooled)
        attended = functional.scaled_dot_product_attention(q, k, v)
        return self._out_and_mlp(x, attended.transpose(1, 2).reshape(n, -1, width))

    def forward_rows(self, x: torch.Tensor, texts: TokenRows, last: bool = False) -> torch.Tensor:
        """``x`` (tokens, width), the rows of ``texts``, on: the products over those rows alone,
        causal attention per text over ``texts``' grid. With ``last``, each text's end-of-text row
        alone comes out, (texts, width), attending to its text."""
        q, k, v = self._projections(self.norm1(x), (lambda rows: rows[texts.ends]) if last else None)
        k, v = texts.in_grid(k, self.heads), texts.in_grid(v, self.heads)
        if last:
            x = x[texts.ends]
            q = q.view(len(x), 1, self.heads, -1).transpose(1, 2)
            attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=texts.seen)
            return self._out_and_mlp(x, attended.reshape(x.shape))
        attended = functional.scaled_dot_product_attention(texts.in_grid(q, self.heads), k, v, is_causal=True)
        return self._out_and_mlp(x, texts.from_grid(attended))


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
        self.layers = nn.ModuleList(_Layer(layer) for layer in vision.encoder.layers)
        self.post_norm, self.projection = vision.post_layernorm, clip.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(self.embeddings(pixel_values))
        class_token = torch.zeros(len(x), dtype=torch.long, device=x.device)
        vectors: torch.Tensor = self.projection(self.post_norm(_encoded(self.layers, x, class_token)))
        return vectors


class TextTower(nn.Module):
    """Texts (``TokenRows``, made by ``rows``) to unnormalized text embeddings (n, projection_dim),
    as ``CLIPModel.get_text_features`` computes them."""

    def __init__(self, text_model: Any, projection: nn.Module):
        super().__init__()
        embeddings = text_model.embeddings
        self.tokens, self.positions = embeddings.token_embedding, embeddings.position_embedding
        self.layers = nn.ModuleList(_Layer(layer) for layer in text_model.encoder.layers)
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

    def end_of(self, ids: np.ndarray) -> int:
        """Where a text's end-of-text token is, as Hugging Face's CLIP finds it: the first one (the
        first token where there is none), or in configs older than transformers PR 24773 (end-of-text
        id 2) the highest id."""
        if self.eos_token_id == 2:
            return int(np.argmax(ids))
        return int(np.argmax(ids == self.eos_token_id))

    def rows(self, texts: Sequence[np.ndarray]) -> TokenRows:
        """``texts`` (each a text's token ids) as this tower's input, each cut after its end-of-text token."""
        arrays = [np.asarray(t) for t in texts]
        if not arrays or not all(len(t) for t in arrays):
            raise ValueError("every text needs its tokens, start and end markers included (the tokenizer adds them)")
        return TokenRows.of([t[: self.end_of(t) + 1] for t in arrays])

    def forward(self, texts: TokenRows) -> torch.Tensor:
        x = self.tokens(texts.ids) + self.positions.weight[texts.positions]
        layers = cast(list[_Layer], list(self.layers))
        for layer in layers[:-1]:
            x = layer.forward_rows(x, texts)
        ends = layers[-1].forward_rows(x, texts, last=True)
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
