"""The contrastive loss: symmetric InfoNCE where a caption may match several images in the batch.

Example::

    mask = torch.from_numpy(positive_mask(captions, [e.attributes for e in batch]))
    loss = multi_positive_loss(logit_scale.exp() * text_embeds @ image_embeds.T, mask)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from shelfsight.train.captions import Caption


def positive_mask(captions: Sequence[Caption], attributes: Sequence[Mapping[str, str]]) -> np.ndarray:
    """(texts, images) bool: caption i matches image j when j agrees on every field i names.

    The diagonal is always positive; a caption that names no visible field matches only its own
    image. Multi-positive targets keep "red" from pushing away every other red product in a batch.
    """
    n = len(captions)
    mask = np.eye(n, dtype=bool)
    for i, cap in enumerate(captions):
        if cap.pins:
            want = attributes[i]
            mask[i] = [all(a.get(f) == want.get(f) for f in cap.pins) for a in attributes]
            mask[i, i] = True
    return mask


def multi_positive_loss(logits_per_text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where each row (and column) may have several positives.

    For text i: log-sum-exp over all images minus log-sum-exp over its positive images; the same
    for each image over texts; the mean of both directions. With an identity mask this is CLIP's loss.
    """
    import torch

    neg_inf = torch.finfo(logits_per_text.dtype).min
    t2i = torch.logsumexp(logits_per_text, 1) - torch.logsumexp(logits_per_text.masked_fill(~mask, neg_inf), 1)
    per_image, mask_t = logits_per_text.T, mask.T
    i2t = torch.logsumexp(per_image, 1) - torch.logsumexp(per_image.masked_fill(~mask_t, neg_inf), 1)
    return (t2i.mean() + i2t.mean()) / 2
