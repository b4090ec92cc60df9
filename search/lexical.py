"""The words side of search: BM25 sparse vectors, the catalog's vocabulary, typo correction.

CLIP's text tower knows colours and kinds but not a shop's brand names, product numbers or a
shopper's typos. Qdrant's own BM25 (``qdrant_edge.Bm25``, the same tokenizer and stemmer on both
backends) turns a product's words into a sparse vector at ingest and a query's words into one at
search time; the store weighs terms by IDF. The vocabulary (each word's product count) is taken
from the catalog at the end of an ingest, and query words outside it are corrected to the
closest word within the usual edit-distance allowance (rapidfuzz's optimal string alignment).

Example::

    vector = bm25_document(payload, meta)                  # at upsert
    corrected = correct_words("red mgu", meta.vocabulary)  # "red mug"
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from rapidfuzz import process
from rapidfuzz.distance import OSA
from shelfsight.search.store.base import BM25_SETTINGS, CollectionMeta, Sparse

BM25 = "bm25"
# Payload fields that are never product words.
_NOT_WORDS = ("image", "content_hash", "has_image")
_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)
# The vocabulary keeps this many of the most common words (typos are corrected towards them).
VOCABULARY_SIZE = 50_000


@lru_cache(maxsize=4)
def _model(settings: tuple[tuple[str, Any], ...]) -> Any:
    import qdrant_edge as qe

    return qe.Bm25(qe.Bm25Config(**dict(settings)))


def forget_bm25_models() -> None:
    """Drop the BM25 models made so far (a forked worker makes its own)."""
    _model.cache_clear()


def _bm25(settings: Mapping[str, Any] | None) -> Any:
    return _model(tuple(sorted((settings or BM25_SETTINGS).items())))


def document_text(payload: Mapping[str, Any], keyword_fields: Iterable[str]) -> str:
    """The words a product is found by: id, title, description and its keyword fields."""
    parts = [payload.get("product_id"), payload.get("title"), payload.get("description")]
    for name in keyword_fields:
        if name in _NOT_WORDS:
            continue
        value = payload.get(name)
        parts.extend(value if isinstance(value, list) else [value])
    return " ".join(str(p) for p in parts if isinstance(p, (str, int)) and not isinstance(p, bool) and str(p))


def product_words(payload: Mapping[str, Any], meta: CollectionMeta) -> str:
    """``document_text`` over the collection's keyword fields, leaving out derived ones (tags)."""
    return document_text(payload, word_fields(meta))


def word_fields(meta: CollectionMeta) -> list[str]:
    """The catalog's keyword fields (brand, colour, ...), not the derived ones (zero-shot tags)."""
    return [f for f, kind in meta.fields.items() if kind == "keyword" and f not in meta.derived]


def bm25_document(text: str, settings: Mapping[str, Any] | None = None) -> Sparse:
    vector = _bm25(settings).embed_document(text)
    return Sparse(tuple(vector.indices), tuple(float(v) for v in vector.values))


def bm25_query(text: str, settings: Mapping[str, Any] | None = None) -> Sparse:
    vector = _bm25(settings).embed_query(text)
    return Sparse(tuple(vector.indices), tuple(float(v) for v in vector.values))


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (hyphenated words and ids like ``p000-00012`` stay whole)."""
    return _WORD.findall(text.lower())


def vocabulary(texts: Iterable[str], size: int = VOCABULARY_SIZE) -> dict[str, int]:
    """Each word's number of texts holding it, the ``size`` most common kept. Words with digits
    (ids, sizes) are left out: typos are never corrected towards them, and one per product would
    crowd real words out of a large catalog's vocabulary."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update([w for w in set(words(text)) if not any(map(str.isdigit, w))])
    return dict(counts.most_common(size))


def named_values(text: str, field_values: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """The (field, value) pairs whose value's words appear, in order, among the words of ``text``."""
    padded = f" {' '.join(words(text))} "
    found = []
    for name, values in field_values.items():
        for value in values:
            key = " ".join(words(value))
            if key and f" {key} " in padded:
                found.append((name, value))
    return found


def allowance(word: str) -> int:
    """Edits (a swap of two neighbours counts as one) a word may be away from its correction: none
    for one or two letters, one for three to five, two for longer words (the usual "AUTO" rule)."""
    return 0 if len(word) <= 2 else 1 if len(word) <= 5 else 2


def correct_word(word: str, vocab: Mapping[str, int]) -> str | None:
    """The closest vocabulary word within the allowance (the most common on a tie), or None."""
    limit = allowance(word)
    if not limit or word in vocab or any(ch.isdigit() for ch in word):
        return None
    found = process.extract(word, vocab.keys(), scorer=OSA.distance, score_cutoff=limit, limit=None)
    if not found:
        return None
    best = min(found, key=lambda m: (m[1], -vocab[m[0]], m[0]))
    return str(best[0])


def correct_words(text: str, vocab: Mapping[str, int]) -> str | None:
    """``text`` with each out-of-vocabulary word replaced by its correction; None when nothing
    changed (or the collection has no vocabulary). Quoted phrases, paths, URLs and weights
    (anything with ``/ : . \\ @``) are left as written."""
    if not vocab:
        return None
    out: list[str] = []
    quoted = False
    for token in re.split(r"(\s+)", text):
        if token.strip() and not quoted and not any(c in token for c in '/:.\\@"'):
            token = _WORD.sub(lambda m: correct_word(m.group(0).lower(), vocab) or m.group(0), token)
        quoted ^= token.count('"') % 2 == 1
        out.append(token)
    corrected = "".join(out)
    return corrected if corrected != text else None
