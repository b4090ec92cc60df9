"""What each training step sees: its examples, which of them go grayscale, and one caption for each.

Every function here draws from the run's one ``random.Random``, in a fixed order per step
(batch order once an epoch; then per step: grayscale, captions, rephrasing, fillers; then the
image crops in ``shelfsight.train.encode.image_batch``). Keep that order: the same seed must
draw the same run.

Example::

    for batch in order_batches(train_set, 64, pack_kinds=False, rng=rng):
        gray = choose_gray(batch, 0.3, rng)
        captions = choose_captions(batch, gray, False, CaptionVariety(True, fillers, 0.3), rng)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from shelfsight.train.captions import Caption, add_filler, rephrase
from shelfsight.train.examples import Example


def batch_starts(n_examples: int, batch_size: int) -> range:
    """Where each batch of an epoch starts; a last batch of one example is dropped (a batch of one has no negatives)."""
    return range(0, n_examples - 1, batch_size)


def order_batches(
    examples: Sequence[Example], batch_size: int, pack_kinds: bool, rng: random.Random
) -> list[list[Example]]:
    """One epoch's batches, in a fresh random order.

    With ``pack_kinds``, each half-batch holds one kind (hard-negative packing).
    """
    items = list(examples)
    rng.shuffle(items)
    if pack_kinds:
        # Pack each half-batch with one kind: colour and pattern must tell them apart. Not in
        # the first stage: with two kinds a batch, kind never gets learned (measured: tagging
        # accuracy 0.18 with packing from the start, 0.85 without).
        by_kind: dict[str, list[Example]] = {}
        for e in items:
            by_kind.setdefault(e.kind, []).append(e)
        half = max(2, batch_size // 2)
        chunks = [group[i : i + half] for group in by_kind.values() for i in range(0, len(group), half)]
        rng.shuffle(chunks)
        items = [e for chunk in chunks for e in chunk]
    return [items[i : i + batch_size] for i in batch_starts(len(items), batch_size)]


def choose_gray(batch: Sequence[Example], gray_share: float, rng: random.Random) -> list[bool]:
    """Which images lose their colour (and their captions with it): shape must then carry the match.

    One draw per example, also for those with no colour-free caption (they stay in colour).
    """
    return [rng.random() < gray_share and bool(e.colourless) for e in batch]


@dataclass(frozen=True)
class CaptionVariety:
    """How chosen captions are varied: "a photo of a" rephrased, and filler words put in."""

    rephrase: bool
    fillers: Sequence[str]  # words that name nothing in the catalog; empty: no fillers
    filler_share: float  # share of captions that get one or two filler words


def choose_captions(
    batch: Sequence[Example], gray: Sequence[bool], first_stage: bool, variety: CaptionVariety, rng: random.Random
) -> list[Caption]:
    """One caption per example: colour-free for a grayscale image, one-attribute in the first stage.

    Curriculum: one-attribute captions ("red", "a photo of a shoe") first, so each word gets its
    own direction before full titles mix them.
    """
    chosen = [
        rng.choice(e.colourless if g else ((e.single if first_stage else e.captions) or e.captions))
        for e, g in zip(batch, gray)
    ]
    if variety.rephrase:
        chosen = [Caption(rephrase(c.text, rng), c.pins) for c in chosen]
    if variety.fillers and variety.filler_share > 0:
        chosen = [
            Caption(add_filler(c.text, variety.fillers, rng), c.pins) if rng.random() < variety.filler_share else c
            for c in chosen
        ]
    return chosen
