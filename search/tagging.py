"""Zero-shot tags: each product labelled by CLIP against prompt ensembles of the given labels.

Each label's vector is the renormalized mean of its prompts ("a photo of a {}", ...); a product's
probabilities are the softmax of its cosines times the model's logit scale; below ``threshold``
the tag is ``unknown``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from shelfsight.search.embedder import Embedder, normalize_rows
from shelfsight.search.errors import BadInputError
from shelfsight.search.store.base import StoredPoint, VectorStore

TEMPLATES = (
    "a photo of a {}",
    "a product photo of a {}",
    "a picture of a {}",
    "a {} on a plain background",
    "a close-up photo of a {}",
)
UNKNOWN = "unknown"


def label_vectors(embedder: Embedder, labels: Sequence[str], templates: Sequence[str] = TEMPLATES) -> np.ndarray:
    """(labels, d): per label the renormalized mean of its prompt embeddings."""
    if not labels:
        raise BadInputError("no labels given; pass --labels like 'shoe,bag,hat'")
    if len(set(labels)) != len(labels):
        raise BadInputError("labels must be distinct")
    prompts = [t.format(label) for label in labels for t in templates]
    vectors = embedder.encode_texts(prompts).reshape(len(labels), len(templates), -1)
    return normalize_rows(vectors.mean(axis=1))


def classify(vectors: np.ndarray, labels_matrix: np.ndarray, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of the best label and its softmax probability for each row of ``vectors``."""
    logits = logit_scale * (np.asarray(vectors) @ labels_matrix.T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    return best, probs[np.arange(len(best)), best]


def tag_collection(
    store: VectorStore,
    embedder: Embedder,
    collection: str,
    labels: Sequence[str],
    field: str = "tag",
    threshold: float = 0.3,
    templates: Sequence[str] = TEMPLATES,
    batch_size: int = 512,
) -> dict[str, int]:
    """Write ``field`` (label or ``unknown``) and ``<field>_score`` on every product; returns counts."""
    if not 0.0 <= threshold <= 1.0:
        raise BadInputError(f"threshold is a probability in [0, 1], got {threshold}")
    meta = store.get_meta(collection)
    if meta.fields.get(field, "keyword") != "keyword":
        raise BadInputError(f"field {field!r} holds numbers in this collection; pick another --field")
    matrix = label_vectors(embedder, labels, templates)
    scale = embedder.logit_scale()
    counts: Counter[str] = Counter()
    batch: list[StoredPoint] = []

    def flush() -> None:
        # Products are tagged by their image; text-only products by their text.
        vecs = np.stack([p.vectors["image"] if "image" in p.vectors else p.vectors["text"] for p in batch])
        best, prob = classify(vecs, matrix, scale)
        updates = {}
        for p, b, pr in zip(batch, best, prob):
            tag = labels[b] if pr >= threshold else UNKNOWN
            counts[tag] += 1
            updates[p.id] = {field: tag, f"{field}_score": round(float(pr), 4)}
        store.set_payload(collection, updates)
        batch.clear()

    for point in store.scroll(collection, with_vectors=True, batch_size=batch_size):
        batch.append(point)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    derived = tuple(dict.fromkeys((*meta.derived, field, f"{field}_score")))
    fields = {**meta.fields, field: "keyword", f"{field}_score": "float"}
    if fields != meta.fields or derived != meta.derived:
        store.set_meta(collection, replace(meta, fields=fields, derived=derived))
    return dict(counts)
