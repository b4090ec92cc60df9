"""CLIP's text tower as a few plain torch operations, for query texts on CPU.

The Hugging Face ``CLIPTextModel`` spends about a fifth of a short query's forward pass on
Python: per-layer attention dispatch, a causal mask built for every call, output records. This
module runs the same weights with none of that: query, key and value in one matrix product per
layer, PyTorch's causal scaled-dot-product attention, and the final norm and projection on the
end-of-text token alone. Padding needs no mask: attention is causal, so the end-of-text token of
a text never sees the pads that follow it.

It is built from a loaded ``CLIPModel`` by ``text_int8``, which makes its Linear layers int8 and
checks the result against the model itself and, where the model runs in half, an fp32 copy of
this tower.

Example::

    tower = LeanTextTower.from_clip(clip_model).eval()
    vectors = tower(input_ids)            # (n, projection_dim), not normalized
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional


class _Layer(nn.Module):
    """One pre-norm transformer block of the tower, its q/k/v projections joined."""

    def __init__(self, layer: Any):
        super().__init__()
        attn = layer.self_attn
        self.heads = int(attn.num_heads)
        self.norm1, self.norm2 = layer.layer_norm1, layer.layer_norm2
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        self.qkv = nn.Linear(attn.embed_dim, 3 * attn.embed_dim)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([p.weight for p in projections]))
            self.qkv.bias.copy_(torch.cat([p.bias for p in projections]))
        self.out = attn.out_proj
        self.fc1, self.fc2, self.act = layer.mlp.fc1, layer.mlp.fc2, layer.mlp.activation_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(n, t, width))
        out: torch.Tensor = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return out


class LeanTextTower(nn.Module):
    """Token ids (n, t) to unnormalized text embeddings (n, projection_dim), as ``CLIPModel``
    computes them (``get_text_features``)."""

    def __init__(self, text_model: Any, projection: nn.Module):
        super().__init__()
        embeddings = text_model.embeddings
        self.tokens = embeddings.token_embedding
        self.positions = embeddings.position_embedding
        self.layers = nn.ModuleList(_Layer(layer) for layer in text_model.encoder.layers)
        self.final_norm = text_model.final_layer_norm
        self.projection = projection
        self.eos_token_id = int(text_model.eos_token_id)

    @classmethod
    def from_clip(cls, clip: Any) -> LeanTextTower:
        return cls(clip.text_model, clip.text_projection)

    def end_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Where each text's end-of-text token is, as Hugging Face's CLIP finds it."""
        if self.eos_token_id == 2:  # configs older than transformers PR 24773: the highest id
            return ids.to(torch.int).argmax(dim=-1)
        return (ids == self.eos_token_id).to(torch.int).argmax(dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions.weight[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        ends = x[torch.arange(len(ids)), self.end_positions(ids)]
        vectors: torch.Tensor = self.projection(self.final_norm(ends))
        return vectors
