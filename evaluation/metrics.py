"""Ranking metrics for one query (pure functions) and their means over a query set.

``ranked`` is the result list, best first; ``relevant`` the ids that count as right answers.
Recall@k is capped by k: the share of the top k slots that a perfect ranking would fill with
relevant products and this one did (a query with 30 relevant products scores 1.0 at k=10 when all
ten results are relevant; with 2 relevant products, when both are in the top 10). Recall@1 is
therefore "is the first result right". Hit@10 is looser: is any relevant product in the top 10.
Empty is the share of queries answered with "no close matches": wanted for made-up words, a
miss for everything else.

Example::

    recall_at_k(["b", "x", "a"], {"a", "b"}, 2)   # 0.5: one of two possible slots holds a right answer
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    if not relevant:
        raise ValueError("a query needs at least one relevant id")
    found = len(set(ranked[:k]) & set(relevant))
    return found / min(k, len(relevant))


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """1/rank of the first relevant result; 0 when none is in the list."""
    for rank, item in enumerate(ranked, start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Binary-gain nDCG: sum of 1/log2(rank+1) over relevant results in the top k, over its best value."""
    if not relevant:
        raise ValueError("a query needs at least one relevant id")
    dcg = sum(1.0 / math.log2(rank + 1) for rank, item in enumerate(ranked[:k], start=1) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal


METRIC_NAMES = ("recall@1", "recall@5", "recall@10", "hit@10", "mrr", "ndcg@10", "empty")


def query_metrics(ranked: Sequence[str], relevant: Collection[str]) -> dict[str, float]:
    """Every metric for one query. A query with no relevant product (made-up words) is scored
    only by ``empty``: whether the search said "no close matches"; its other metrics are NaN."""
    relevant = set(relevant)
    if not relevant:
        return {**dict.fromkeys(METRIC_NAMES, math.nan), "empty": float(not ranked)}
    return {
        "recall@1": recall_at_k(ranked, relevant, 1),
        "recall@5": recall_at_k(ranked, relevant, 5),
        "recall@10": recall_at_k(ranked, relevant, 10),
        "hit@10": float(bool(set(ranked[:10]) & relevant)),
        "mrr": reciprocal_rank(ranked, relevant),
        "ndcg@10": ndcg_at_k(ranked, relevant, 10),
        "empty": float(not ranked),
    }


def mean_metrics(per_query: Iterable[dict[str, float]]) -> dict[str, float]:
    rows = list(per_query)
    if not rows:
        return {name: float("nan") for name in METRIC_NAMES}
    means = {}
    for name in METRIC_NAMES:
        values = [r[name] for r in rows if not math.isnan(r[name])]
        means[name] = sum(values) / len(values) if values else math.nan
    return means
