"""Caption text for contrastive training: what a product's captions say and pin, and how they are varied.

A caption pins the visible fields it names ("red" pins only colour); any image that agrees on
them is a positive for it (see ``shelfsight.train.loss.positive_mask``).

Example::

    captions_for("Oakline red tote", "A tote.", {"category": "bag", "color": "red"})
    # [Caption("Oakline red tote", ("category", "color")), ..., Caption("a red bag", ("category", "color")), ...]
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The product fields a picture shows; a caption pins down some of them ("red" pins only colour).
VISIBLE_FIELDS = ("category", "color", "pattern")


@dataclass(frozen=True)
class Caption:
    text: str
    pins: tuple[str, ...]  # the visible fields this text names; any image agreeing on them matches it


def captions_for(title: str, description: str, fields: Mapping) -> list[Caption]:
    """Caption templates: the catalog text plus short phrasings from its structured fields.

    A ``type`` field (the shop's word for the kind: "handbag" for a bag) is phrased like the
    category, so the text tower learns both words for the same picture.
    """
    every = tuple(f for f in VISIBLE_FIELDS if fields.get(f))
    caps = [Caption(title, every), Caption(f"{title}. {description}".strip(". "), every)]
    color, kind, pattern = fields.get("color"), fields.get("category"), fields.get("pattern")
    nouns = [str(n) for n in dict.fromkeys((kind, fields.get("type"))) if n] if kind else []
    if color and kind:
        pair = ("category", "color")
        for noun in nouns:
            caps += [
                Caption(t, pair) for t in (f"a {color} {noun}", f"a photo of a {color} {noun}", f"{noun} in {color}")
            ]
        caps.append(Caption(str(color), ("color",)))
        if pattern:  # "plain" too: it is a value shoppers and templates use ("a plain bag")
            caps.append(Caption(f"a {color} {pattern} {kind}", every))
            caps.append(Caption(f"a {pattern} {kind}", ("category", "pattern")))
    for noun in nouns:
        caps += [Caption(f"a photo of a {noun}", ("category",)), Caption(noun, ("category",))]
    return [c for c in caps if c.text]


# Ways to say "a photo of"; second-stage captions draw one at random, so the kind word carries
# the match and no single phrasing is special to the model.
PHOTO_PHRASES = ("a photo of a", "a picture of a", "an image of a", "a shot of a", "a snapshot of a")


def rephrase(text: str, rng: random.Random) -> str:
    """Swap a leading "a photo of a" for a random phrasing of the same."""
    head = PHOTO_PHRASES[0] + " "
    return f"{rng.choice(PHOTO_PHRASES)} {text[len(head) :]}" if text.startswith(head) else text


def filler_words(vocabulary: Iterable[str], informative: set[str]) -> list[str]:
    """Whole words the tokenizer knows that say nothing about a product in this catalog."""
    words = {t[: -len("</w>")] for t in vocabulary if t.endswith("</w>")}
    return sorted(w for w in words if w.isascii() and w.isalpha() and w.lower() not in informative)


def add_filler(text: str, fillers: Sequence[str], rng: random.Random) -> str:
    """Insert one or two filler words at random places (random insertion, as in EDA text augmentation).

    Shoppers type words a catalog never uses ("any", "looking for"); the text tower learns that
    such words do not change what a caption asks for.
    """
    words = text.split()
    for _ in range(rng.choice((1, 2))):
        words.insert(rng.randint(0, len(words)), rng.choice(fillers))
    return " ".join(words)
