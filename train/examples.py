"""Training examples: each catalog product decoded once, with every caption that may describe it.

Example::

    examples = load_examples("data/train/catalog.csv", image_size=224)
    train_set, val_set = split_by_group(examples, val_share=0.1, rng=random.Random(0))
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from shelfsight.ingest.catalog import read_catalog
from shelfsight.search.images import decode_image, read_image_bytes
from shelfsight.train.captions import VISIBLE_FIELDS, Caption, captions_for

# Images are kept this much over the model's size, so random crops have room to move.
CROP_MARGIN = 1.15


@dataclass(frozen=True, slots=True)
class Example:
    """One product as training sees it."""

    pixels: np.ndarray  # (pad, pad, 3) uint8, a little over the model's size: crops come from it
    captions: tuple[Caption, ...]  # every template; captions[0] is the title
    colourless: tuple[Caption, ...]  # the ones that pin something but not colour: for grayscale views
    single: tuple[Caption, ...]  # one-attribute captions, for the first stage
    attributes: Mapping[str, str]  # the visible fields it has, as text
    group: str  # its visible fields joined ("bag/red/plain"); validation holds out whole groups
    kind: str  # its category; hard-negative packing fills half-batches with one kind


def _without_type(fields: Mapping) -> dict:
    return {k: v for k, v in fields.items() if k != "type"}


def _group_of(fields: Mapping, title: str) -> str:
    keys = [str(fields.get(k)) for k in VISIBLE_FIELDS if fields.get(k)]
    return "/".join(keys) or title.lower()


def _example(pixels: np.ndarray, title: str, description: str, fields: Mapping) -> Example:
    caps = captions_for(title, description, fields)
    return Example(
        pixels=pixels,
        captions=tuple(caps),
        colourless=tuple(c for c in caps if c.pins and "color" not in c.pins),
        # First-stage targets are the frozen random text tower's: one word per kind, so a
        # type ("tote") does not pull bag images towards a second, unrelated target.
        single=tuple(c for c in captions_for(title, description, _without_type(fields)) if len(c.pins) == 1),
        attributes={f: str(fields[f]) for f in VISIBLE_FIELDS if fields.get(f)},
        group=_group_of(fields, title),
        kind=str(fields.get("category", "")),
    )


def load_examples(catalog: str, image_size: int) -> list[Example]:
    """Decode every product once at a little over the model's size (crops come from it)."""
    from PIL import Image

    cat = read_catalog(catalog)
    seen: set[str] = set()
    examples = []
    pad = int(image_size * CROP_MARGIN)
    for row in cat.rows:
        p = row.product
        if not p.image:
            continue
        try:
            data = read_image_bytes(p.image, cat.base_dir)
            image = decode_image(data)
        except Exception:  # a broken image just drops out of training, as in ingest
            continue
        key = hashlib.sha256(data + p.text.encode()).hexdigest()
        if key in seen:  # exact duplicates would be their own false negatives
            continue
        seen.add(key)
        pixels = np.array(image.resize((pad, pad), Image.Resampling.BICUBIC), dtype=np.uint8)
        examples.append(_example(pixels, p.title, p.description, p.fields))
    return examples


def split_by_group(
    examples: list[Example], val_share: float, rng: random.Random
) -> tuple[list[Example], list[Example]]:
    """(train, validation): whole groups held out, so no validation product has a look-alike in training.

    Draws one shuffle from ``rng``.
    """
    groups = sorted({e.group for e in examples})
    rng.shuffle(groups)
    val_groups = set(groups[: max(1, int(len(groups) * val_share))])
    return [e for e in examples if e.group not in val_groups], [e for e in examples if e.group in val_groups]


def informative_words(examples: list[Example]) -> set[str]:
    """Lower-cased words that name something in this catalog: title words and field values."""
    words = {w.lower() for e in examples for w in e.captions[0].text.split()}
    return words | {v.lower() for e in examples for v in e.attributes.values()}
