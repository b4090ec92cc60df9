"""Model inputs for training: image batches (crop, flip, brightness, grayscale) and caption embeddings.

Example::

    view = ImageView.for_model(model, processor, "cpu")
    pixels = image_batch(batch, view, rng=rng, gray=[False] * len(batch))  # augmented
    texts = text_embeddings(["a red bag", "Oakline red leather tote. A roomy tote."], model, processor.tokenizer, "cpu")
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shelfsight.train.examples import Example

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel, CLIPProcessor, PreTrainedTokenizerBase

SHORT_CAPTION = 16  # tokens; captions up to this long are embedded in one padded batch, longer ones in another
MAX_TOKENS = 77  # CLIP's text context
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights: grayscale as the eye sees brightness


@dataclass(frozen=True)
class ImageView:
    """What the vision tower takes: square crops of ``size``, normalized by its processor's mean and std."""

    size: int
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor  # (1, 3, 1, 1)
    luma: torch.Tensor  # (3, 1, 1)
    device: str

    @classmethod
    def for_model(cls, model: CLIPModel, processor: CLIPProcessor, device: str) -> ImageView:
        import torch

        return cls(
            size=model.config.vision_config.image_size,
            mean=torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1),
            std=torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1),
            luma=torch.tensor(LUMA).view(3, 1, 1),
            device=device,
        )


def image_batch(
    batch: Sequence[Example], view: ImageView, rng: random.Random | None = None, gray: Sequence[bool] | None = None
) -> torch.Tensor:
    """(n, 3, size, size) normalized pixels on the view's device.

    With ``rng``: a random crop, a coin-flip mirror and a brightness change per image, drawn in
    that order; without it (validation): the centre crop. ``gray[n]`` shows image n in grayscale.
    """
    import torch

    pad, size = batch[0].pixels.shape[0], view.size
    crops = []
    for n, e in enumerate(batch):
        x = torch.from_numpy(e.pixels).permute(2, 0, 1).float() / 255.0
        if gray and gray[n]:
            x = (x * view.luma).sum(0, keepdim=True).expand(3, -1, -1)
        if rng is not None:
            i, j = rng.randint(0, pad - size), rng.randint(0, pad - size)
            x = x[:, i : i + size, j : j + size]
            if rng.random() < 0.5:
                x = x.flip(2)
            x = (x * rng.uniform(0.85, 1.15)).clamp(0, 1)  # brightness only: colour is a label
        else:
            o = (pad - size) // 2
            x = x[:, o : o + size, o : o + size]
        crops.append(x)
    return ((torch.stack(crops) - view.mean) / view.std).to(view.device)


def tokenize(captions: list[str], tokenizer: PreTrainedTokenizerBase, device: str) -> dict[str, torch.Tensor]:
    """Token ids and attention mask, padded to the longest caption."""
    tok = tokenizer(captions, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return {k: v.to(device) for k, v in tok.items()}


def text_embeddings(
    captions: list[str], model: CLIPModel, tokenizer: PreTrainedTokenizerBase, device: str
) -> torch.Tensor:
    """Unit text embeddings, short and long captions run apart: padding every caption to the
    longest (title + description, ~50 tokens) made a step 1.45x slower (measured at batch 64)."""
    import torch

    encoded = tokenizer(captions, truncation=True, max_length=MAX_TOKENS)  # tokenized once, padded per bucket
    lengths = [len(ids) for ids in encoded["input_ids"]]
    out = None
    for bucket in (
        [i for i, n in enumerate(lengths) if n <= SHORT_CAPTION],
        [i for i, n in enumerate(lengths) if n > SHORT_CAPTION],
    ):
        if not bucket:
            continue
        padded = tokenizer.pad({k: [v[i] for i in bucket] for k, v in encoded.items()}, return_tensors="pt")
        feats = features(model.get_text_features(**{k: v.to(device) for k, v in padded.items()})).float()
        if out is None:
            out = feats.new_zeros(len(captions), feats.shape[1])
        out = out.index_copy(0, torch.tensor(bucket, device=feats.device), feats)
    assert out is not None, "no captions to embed"
    return torch.nn.functional.normalize(out, dim=-1)


def features(x: Any) -> torch.Tensor:
    """Projected embeddings (transformers 5 wraps them in an output object)."""
    return x.pooler_output if hasattr(x, "pooler_output") else x
