"""The storefront's words for what a shopper searched: the result count ("12 results for “red bag”
· filtered to shoes, up to $50"), the empty state ("No close matches for …") and the price range
picked on the slider. Plain strings: the page shows them with ``st.text``, never as Markdown.

Example::

    Asked("red bag", narrowed="filtered to shoes, up to $50").found(12)
    # '12 results for “red bag” · filtered to shoes, up to $50'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """The price slider: the catalog's own range and the part of it the shopper picked."""

    low: int
    high: int
    picked: tuple[int, int]

    @property
    def filters(self) -> list[str]:
        out = [f"price>={self.picked[0]}"] if self.picked[0] > self.low else []
        return out + ([f"price<={self.picked[1]}"] if self.picked[1] < self.high else [])

    def describe(self) -> str:
        lower, upper = self.picked[0] > self.low, self.picked[1] < self.high
        if lower and upper:
            return f"${self.picked[0]}–${self.picked[1]}"
        return f"from ${self.picked[0]}" if lower else f"up to ${self.picked[1]}" if upper else ""


@dataclass(frozen=True)
class Asked:
    """What the shopper searched, in words for the result count and the empty state."""

    text: str = ""
    photo: str = ""  # "your photo", "this product's photo" or ""
    similar_title: str | None = None
    narrowed: str = ""  # the filters, e.g. "filtered to hat or mug, up to $50" (see ``narrowing``)
    corrected_from: str = ""  # what the shopper typed, when the engine corrected it to ``text``

    def subject(self) -> str:
        if self.text and self.photo:
            return f"“{self.text}” with {self.photo}"
        return f"“{self.text}”" if self.text else self.photo

    def found(self, n: int) -> str:
        if self.similar_title is not None:
            head = f"{n} product{'s' * (n != 1)} like “{self.similar_title}”"
        else:
            head = f"{n} result{'s' * (n != 1)} for {self.subject()}"
        head += f" (you typed “{self.corrected_from}”)" if self.corrected_from else ""
        return head + (f" · {self.narrowed}" if self.narrowed else "")

    def nothing(self) -> str:
        what = f"products like “{self.similar_title}”" if self.similar_title is not None else self.subject()
        return f"No close matches for {what}" + (f" · {self.narrowed}" if self.narrowed else "")


def narrowing(chosen: dict[str, list[str]], price: Price | None) -> str:
    """The filters in words: "filtered to" each field's picked values (joined by "or"), then the
    price range ("filtered to hat or mug, up to $50"; a price alone: "up to $50")."""
    values = ", ".join(" or ".join(picked) for picked in chosen.values() if picked)
    prices = price.describe() if price else ""
    return ", ".join(part for part in (f"filtered to {values}" if values else "", prices) if part)
