"""Zero-shot tagging accuracy: label each product image with its field's values, compare to the truth.

The labels are the field's distinct values in the collection (e.g. ``category``); each product's
stored image vector is classified against the prompt ensemble and against each single template,
which shows whether the ensemble earns its place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from shelfsight.search.embedder import Embedder
from shelfsight.search.errors import BadInputError
from shelfsight.search.store.base import VectorStore
from shelfsight.search.tagging import TEMPLATES, classify, label_vectors


def tagging_accuracy(
    store: VectorStore,
    embedder: Embedder,
    collection: str,
    field: str,
    templates: Sequence[str] = TEMPLATES,
) -> dict:
    """Accuracy of the ensemble and of each template over products with an image and a ``field`` value."""
    vectors, truth = [], []
    for point in store.scroll(collection, with_vectors=True):
        value = point.payload.get(field)
        if value not in (None, "") and "image" in point.vectors:
            vectors.append(point.vectors["image"])
            truth.append(str(value))
    labels = sorted(set(truth))
    if len(labels) < 2:
        raise BadInputError(
            f"field {field!r} has {len(labels)} distinct value(s) on products with images in {collection!r}; "
            "tagging accuracy needs a keyword field with at least two values, like --tags category"
        )
    matrix = np.stack(vectors)
    expected = np.array([labels.index(t) for t in truth])
    scale = embedder.logit_scale()

    def accuracy(prompts: Sequence[str]) -> float:
        best, _ = classify(matrix, label_vectors(embedder, labels, prompts), scale)
        return float(np.mean(best == expected))

    per_template = {t: accuracy([t]) for t in templates}
    return {
        "field": field,
        "products": len(truth),
        "labels": labels,
        "ensemble": accuracy(templates),
        "templates": per_template,
        "best_template": max(per_template, key=per_template.get),
    }
