"""Synthetic product catalogs drawn with Pillow: kinds x colours x patterns x backgrounds x poses.

Deterministic for a seed. The demo catalog, the demo model's training data, and test fixtures.

Example::

    write_catalog("data/sample", n=400, seed=0)   # data/sample/catalog.csv + images/ + queries.jsonl
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 35),
    "orange": (240, 130, 20),
    "yellow": (240, 210, 40),
    "green": (40, 150, 60),
    "blue": (35, 75, 200),
    "purple": (125, 50, 160),
    "pink": (240, 120, 170),
    "brown": (120, 75, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 240),
    "gray": (135, 135, 135),
}
PATTERNS = ("plain", "striped", "dotted", "checked")
PATTERN_WORDS = {"plain": "", "striped": "striped", "dotted": "polka dot", "checked": "checked"}
BRANDS = ("Northwind", "Lumen", "Kestrel", "Fable & Co", "Oakline", "Verra", "Pebble", "Atlas")
# kind -> (display nouns, price range, materials)
KINDS: dict[str, tuple[tuple[str, ...], tuple[float, float], tuple[str, ...]]] = {
    "shoe": (("shoe", "sneaker"), (25, 140), ("leather", "canvas", "suede")),
    "bag": (("bag", "handbag", "tote"), (20, 220), ("leather", "canvas", "nylon")),
    "hat": (("hat", "cap"), (10, 60), ("wool", "cotton", "straw")),
    "mug": (("mug", "cup"), (6, 30), ("ceramic", "enamel", "stoneware")),
    "lamp": (("lamp", "desk lamp"), (30, 180), ("metal", "glass", "brass")),
    "shirt": (("shirt", "t-shirt", "tee"), (12, 80), ("cotton", "linen", "jersey")),
    "bottle": (("bottle", "water bottle"), (8, 45), ("steel", "glass", "plastic")),
    "umbrella": (("umbrella",), (12, 70), ("nylon", "polyester", "canvas")),
}
BACKGROUNDS = {
    "white": ((250, 250, 250), (250, 250, 250)),
    "light gray": ((225, 225, 228), (205, 205, 210)),
    "beige": ((238, 228, 205), (225, 212, 185)),
    "pale blue": ((220, 232, 245), (200, 215, 235)),
    "wood": ((200, 160, 115), (170, 125, 85)),
}
USES = {
    "shoe": "for everyday walks",
    "bag": "to carry your things",
    "hat": "to keep the sun off",
    "mug": "for morning coffee",
    "lamp": "to light up a desk",
    "shirt": "for casual days",
    "bottle": "to stay hydrated",
    "umbrella": "for rainy days",
}
SIZE = 224


@dataclass(frozen=True)
class Spec:
    """Everything that decides one product's picture and text."""

    id: str
    kind: str
    color: str
    pattern: str
    background: str
    brand: str
    material: str
    noun: str
    price: float
    scale: float
    dx: float
    dy: float
    angle: float
    flip: bool
    group: str  # products differing only in pose/brand/price share a group (for leak-free splits)


def draw_shape(kind: str, draw: ImageDraw.ImageDraw, s: int) -> None:
    """Draw the silhouette of ``kind`` in white on an s x s mask."""
    f = s / 100.0

    def box(x0, y0, x1, y1):
        return [x0 * f, y0 * f, x1 * f, y1 * f]

    def poly(points):
        return [(x * f, y * f) for x, y in points]

    if kind == "shoe":
        draw.polygon(poly([(10, 62), (14, 40), (34, 36), (50, 50), (84, 56), (92, 66), (90, 74), (10, 74)]), fill=255)
    elif kind == "bag":
        draw.rounded_rectangle(box(18, 38, 82, 86), radius=6 * f, fill=255)
        draw.arc(box(32, 14, 68, 56), 180, 360, fill=255, width=int(6 * f))
    elif kind == "hat":
        draw.ellipse(box(8, 58, 92, 76), fill=255)
        draw.chord(box(26, 24, 74, 84), 180, 360, fill=255)
    elif kind == "mug":
        draw.rectangle(box(22, 28, 66, 82), fill=255)
        draw.ellipse(box(56, 38, 84, 68), outline=255, width=int(7 * f))
    elif kind == "lamp":
        draw.polygon(poly([(30, 14), (70, 14), (82, 42), (18, 42)]), fill=255)
        draw.rectangle(box(47, 42, 53, 80), fill=255)
        draw.ellipse(box(30, 78, 70, 90), fill=255)
    elif kind == "shirt":
        draw.polygon(
            poly(
                [
                    (30, 16),
                    (42, 16),
                    (50, 24),
                    (58, 16),
                    (70, 16),
                    (92, 36),
                    (80, 48),
                    (72, 40),
                    (72, 88),
                    (28, 88),
                    (28, 40),
                    (20, 48),
                    (8, 36),
                ]
            ),
            fill=255,
        )
    elif kind == "bottle":
        draw.rectangle(box(43, 8, 57, 20), fill=255)
        draw.polygon(poly([(43, 20), (57, 20), (66, 34), (34, 34)]), fill=255)
        draw.rounded_rectangle(box(34, 32, 66, 92), radius=5 * f, fill=255)
    elif kind == "umbrella":
        draw.pieslice(box(8, 14, 92, 86), 180, 360, fill=255)
        draw.rectangle(box(48, 48, 52, 86), fill=255)
        draw.arc(box(38, 78, 52, 92), 0, 180, fill=255, width=int(4 * f))
    else:
        raise ValueError(f"unknown kind {kind!r}")


def _texture(color: tuple[int, int, int], pattern: str, rng: random.Random) -> Image.Image:
    base = tuple(max(0, min(255, c + rng.randint(-18, 18))) for c in color)
    tex = Image.new("RGB", (SIZE, SIZE), base)
    d = ImageDraw.Draw(tex)
    accent = (250, 250, 250) if sum(base) < 450 else (40, 40, 40)
    step = rng.randint(14, 22)
    if pattern == "striped":
        for x in range(-SIZE, SIZE * 2, step):
            d.line([(x, 0), (x + SIZE // 2, SIZE)], fill=accent, width=step // 3)
    elif pattern == "dotted":
        for y in range(step // 2, SIZE, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, SIZE, step):
                r = step // 5
                d.ellipse([x - r, y - r, x + r, y + r], fill=accent)
    elif pattern == "checked":
        for y in range(0, SIZE, step):
            for x in range(0, SIZE, step):
                if (x // step + y // step) % 2:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=accent)
    return tex


def render(spec: Spec, rng: random.Random) -> Image.Image:
    top, bottom = BACKGROUNDS[spec.background]
    canvas = Image.new("RGB", (SIZE, SIZE))
    grad = ImageDraw.Draw(canvas)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        grad.line([(0, y), (SIZE, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=False)))
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw_shape(spec.kind, ImageDraw.Draw(mask), SIZE)
    if spec.flip:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    size = int(SIZE * spec.scale)
    mask = mask.resize((size, size)).rotate(spec.angle, expand=False)
    placed = Image.new("L", (SIZE, SIZE), 0)
    ox = int((SIZE - size) / 2 + spec.dx * SIZE)
    oy = int((SIZE - size) / 2 + spec.dy * SIZE)
    placed.paste(mask, (ox, oy))
    shadow = placed.filter(ImageFilter.GaussianBlur(6)).point(lambda v: v // 3)
    canvas.paste((60, 60, 60), (4, 6), shadow)
    tex = _texture(COLORS[spec.color], spec.pattern, rng)
    canvas.paste(tex, (0, 0), placed)
    outline = placed.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 60 else 0)
    canvas.paste((30, 30, 30), (0, 0), outline)
    return canvas


def title_of(spec: Spec) -> str:
    words = [spec.brand, spec.color, PATTERN_WORDS[spec.pattern], spec.material, spec.noun]
    return " ".join(w for w in words if w).replace("  ", " ")


def description_of(spec: Spec, rng: random.Random) -> str:
    pattern = {
        "plain": "a clean, solid finish",
        "striped": "bold stripes",
        "dotted": "playful dots",
        "checked": "a checked pattern",
    }[spec.pattern]
    first = rng.choice(["A", "This", "Our"])
    return (
        f"{first} {spec.material} {spec.noun} in {spec.color} with {pattern}, {USES[spec.kind]}. Made by {spec.brand}."
    )


def draw_specs(n: int, seed: int) -> list[Spec]:
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        kind = rng.choice(sorted(KINDS))
        nouns, (low, high), materials = KINDS[kind]
        color = rng.choice(sorted(COLORS))
        pattern = rng.choices(PATTERNS, weights=(4, 2, 2, 2))[0]
        background = rng.choice(sorted(BACKGROUNDS))
        price = round(rng.uniform(low, high)) - 0.01
        specs.append(
            Spec(
                id=f"P{seed:03d}-{i:05d}",
                kind=kind,
                color=color,
                pattern=pattern,
                background=background,
                brand=rng.choice(BRANDS),
                material=rng.choice(materials),
                noun=rng.choice(nouns),
                price=max(price, 0.99),
                scale=rng.uniform(0.6, 0.95),
                dx=rng.uniform(-0.08, 0.08),
                dy=rng.uniform(-0.08, 0.08),
                angle=rng.uniform(-15, 15),
                flip=rng.random() < 0.5,
                group=f"{kind}/{color}/{pattern}",
            )
        )
    return specs


# Query phrasings differ from the catalog's titles and the training captions on purpose.
_QUERY_TEMPLATES = ("{color} {noun}", "looking for a {color} {noun}", "{noun}, {color}", "any {color} {noun}")
_COMPOSED_TEMPLATES = ("{color}", "in {color}", "the same in {color}")


def queries_for(specs: list[Spec], seed: int) -> list[dict]:
    """Evaluation queries; relevant = every product of the named kind and colour.

    Suite ``kind+colour``: text naming both. Suite ``composed``: text naming only the colour plus
    the image of a product of the wanted kind in another colour ("like this, but red").
    """
    rng = random.Random(seed + 1)
    groups: dict[tuple[str, str], list[Spec]] = {}
    for s in specs:
        groups.setdefault((s.kind, s.color), []).append(s)
    out = []
    for (kind, color), members in sorted(groups.items()):
        noun = rng.choice(KINDS[kind][0])
        text = rng.choice(_QUERY_TEMPLATES).format(color=color, noun=noun)
        relevant = sorted(s.id for s in members)
        out.append({"query": text, "relevant": relevant, "suite": "kind+colour", "kind": kind, "color": color})
    for (kind, color), members in sorted(groups.items()):
        others = [s for s in specs if s.kind == kind and s.color != color]
        if not others:
            continue
        reference = rng.choice(others)
        out.append(
            {
                "query": rng.choice(_COMPOSED_TEMPLATES).format(color=color),
                "image": f"images/{reference.id}.jpg",
                "relevant": sorted(s.id for s in members),
                "suite": "composed",
                "kind": kind,
                "color": color,
            }
        )
    return out


_WORD_SUITE_SIZE = 30  # queries drawn for each of the word suites below


def word_queries(specs: list[Spec], seed: int) -> list[dict]:
    """Suites for what a CLIP text tower is weak at: brand + kind, material + kind, an exact
    product id, a misspelled kind + colour, and made-up words that should find nothing."""
    rng = random.Random(seed + 2)
    out: list[dict] = []
    for suite, key in (("brand+kind", "brand"), ("material+kind", "material")):
        groups: dict[tuple[str, str], list[Spec]] = {}
        for s in specs:
            groups.setdefault((getattr(s, key), s.kind), []).append(s)
        for (value, kind), members in rng.sample(sorted(groups.items()), min(_WORD_SUITE_SIZE, len(groups))):
            text = f"{value} {rng.choice(KINDS[kind][0])}"
            out.append({"query": text, "relevant": sorted(m.id for m in members), "suite": suite, "kind": kind})
    for spec in rng.sample(specs, min(_WORD_SUITE_SIZE, len(specs))):
        out.append({"query": spec.id, "relevant": [spec.id], "suite": "exact id"})
    out += _misspelled_queries(specs, rng)
    out += [{"query": _made_up(rng), "relevant": [], "suite": "nonsense"} for _ in range(_WORD_SUITE_SIZE)]
    return out


def _misspelled_queries(specs: list[Spec], rng: random.Random) -> list[dict]:
    groups: dict[tuple[str, str], list[Spec]] = {}
    for s in specs:
        groups.setdefault((s.kind, s.color), []).append(s)
    known = _catalog_words()
    out = []
    for (kind, color), members in rng.sample(sorted(groups.items()), min(_WORD_SUITE_SIZE, len(groups))):
        noun = rng.choice([n for n in KINDS[kind][0] if " " not in n and "-" not in n])
        typo = _misspell(noun, rng, known)
        out.append(
            {"query": f"{color} {typo}", "relevant": sorted(m.id for m in members), "suite": "misspelled", "kind": kind}
        )
    return out


def _catalog_words() -> set[str]:
    words = {w for nouns, _, materials in KINDS.values() for w in (*nouns, *materials)}
    return words | set(COLORS) | {b.lower() for b in BRANDS}


def _misspell(word: str, rng: random.Random, known: set[str]) -> str:
    """One slip of the fingers: two neighbouring letters swapped, one dropped, or one doubled."""
    while True:
        i = rng.randrange(len(word) - 1)
        slip = rng.choice(("swap", "drop", "double") if len(word) > 3 else ("swap", "double"))
        if slip == "swap":
            typo = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif slip == "drop":
            typo = word[:i] + word[i + 1 :]
        else:
            typo = word[: i + 1] + word[i] + word[i + 1 :]
        if typo != word and typo not in known:
            return typo


def _made_up(rng: random.Random) -> str:
    consonants = "bcdfghjklmnpqrstvwxz"
    return " ".join(
        "".join(rng.choice(consonants if j % 2 == 0 else "aeiouy" + consonants) for j in range(rng.randint(4, 7)))
        for _ in range(2)
    )


def as_photo(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """The image at ``size`` px a side with sensor-like grain, so its JPEG costs what a shop's photo
    costs to decode (a flat upscale would compress to almost nothing)."""
    import numpy as np

    big = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = np.random.default_rng(rng.getrandbits(32)).integers(-12, 13, size=big.shape, dtype=np.int16)
    return Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8))


def write_catalog(out: str | Path, n: int = 400, seed: int = 0, image_size: int = SIZE) -> Path:
    """Write ``catalog.csv``, ``images/`` and ``queries.jsonl`` under ``out``; returns the CSV path.
    ``image_size`` other than the default writes photo-like JPEGs of that size (``as_photo``)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    specs = draw_specs(n, seed)
    rng = random.Random(seed)
    rows = []
    for spec in specs:
        image_path = Path("images") / f"{spec.id}.jpg"
        rng_image = random.Random(f"{seed}-{spec.id}")
        image = render(spec, rng_image)
        if image_size != SIZE:
            image = as_photo(image, image_size, rng_image)
        image.save(out / image_path, quality=88)
        rows.append(
            {
                "id": spec.id,
                "title": title_of(spec),
                "description": description_of(spec, rng),
                "category": spec.kind,
                "type": spec.noun,  # the shop's own word for the kind: "handbag", "tee"
                "color": spec.color,
                "pattern": spec.pattern,
                "price": f"{spec.price:.2f}",
                "brand": spec.brand,
                "image": image_path.as_posix(),
            }
        )
    csv_path = out / "catalog.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)
    with (out / "queries.jsonl").open("w") as fh:
        for q in queries_for(specs, seed) + word_queries(specs, seed):
            fh.write(json.dumps(q) + "\n")
    return csv_path


def spec_count_summary(n: int) -> str:
    combos = len(KINDS) * len(COLORS) * len(PATTERNS)
    return f"{n} products over {combos} kind/colour/pattern combinations (~{math.ceil(n / combos)} each)"
