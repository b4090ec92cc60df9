"""Run a query set through the search engine in every retrieval mode and score the rankings.

Modes: ``text-vector``, ``image-vector`` and ``bm25`` (the product's words) search one product
vector; ``rrf``, ``dbsf`` and ``weighted`` fuse the two CLIP vectors late, and their ``+bm25``
forms fuse the words too (the engine's default); ``early`` searches the early-fused vector (when
the collection has one). Every mode searches as a shopper does: typos corrected, an exact product
id first, "no close matches" under the collection's relevance floor. A query with text and an image is also run as its text part alone and its image part alone,
so a table shows whether combining them helps.

Example::

    with SearchEngine.open("db") as engine:
        report = evaluate(engine, read_queries("queries.jsonl"))
    print(format_table(report))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from shelfsight.evaluation.metrics import METRIC_NAMES, mean_metrics, query_metrics
from shelfsight.evaluation.queries import EvalQuery
from shelfsight.search.engine import SearchEngine, SearchRequest
from shelfsight.search.errors import BadInputError

# mode -> (fusion method, product vectors searched)
MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "text-vector": ("rrf", ("text",)),
    "image-vector": ("rrf", ("image",)),
    "bm25": ("rrf", ("bm25",)),
    "rrf": ("rrf", ("image", "text")),
    "dbsf": ("dbsf", ("image", "text")),
    "weighted": ("weighted", ("image", "text")),
    "rrf+bm25": ("rrf", ("image", "text", "bm25")),
    "dbsf+bm25": ("dbsf", ("image", "text", "bm25")),
    "weighted+bm25": ("weighted", ("image", "text", "bm25")),
    "early": ("early", ("fused",)),
}
DEPTH = 100  # results read per query: recall and nDCG look at the top 10, MRR at all of them


@dataclass(frozen=True)
class ResultRow:
    suite: str
    parts: str  # which query parts were searched: "text", "image", "text+image"
    mode: str
    queries: int
    metrics: dict[str, float]


@dataclass
class EvalReport:
    collection: str
    model: str
    products: int
    rows: list[ResultRow] = field(default_factory=list)
    tagging: dict | None = None
    seconds: float = 0.0

    def row(self, suite: str, parts: str, mode: str) -> ResultRow:
        for r in self.rows:
            if (r.suite, r.parts, r.mode) == (suite, parts, mode):
                return r
        raise KeyError((suite, parts, mode))

    def to_dict(self) -> dict:
        return asdict(self)


def available_modes(engine: SearchEngine, modes: Sequence[str] | None = None) -> list[str]:
    """The asked modes (default all) that this collection can run; unknown names are an error."""
    asked = list(modes) if modes else list(MODES)
    unknown = [m for m in asked if m not in MODES]
    if unknown:
        raise BadInputError(f"unknown eval mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    explicit = modes is not None
    out = []
    for m in asked:
        if "fused" in MODES[m][1] and "fused" not in engine.meta.vectors:
            if explicit:
                raise BadInputError("mode 'early' needs a collection ingested with --fused-weight A")
            continue
        if "bm25" in MODES[m][1] and "bm25" not in engine.meta.sparse_vectors:
            if explicit:
                raise BadInputError(f"mode {m!r} needs a collection with product words; re-ingest with --reindex")
            continue
        out.append(m)
    return out


def evaluate(engine: SearchEngine, queries: Sequence[EvalQuery], modes: Sequence[str] | None = None) -> EvalReport:
    """Score every query in every mode; text+image queries also as each part alone."""
    started = time.monotonic()
    report = EvalReport(collection=engine.collection, model=engine.meta.model, products=engine.count())
    scores: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for mode in available_modes(engine, modes):
        method, vectors = MODES[mode]
        for q in queries:
            for parts, text, image in _variants(q):
                if vectors == ("bm25",) and not text:
                    continue  # words only: nothing to search for an image
                request = SearchRequest(fusion=method, vectors=None if method == "early" else vectors, limit=DEPTH)
                hits = engine.run(text, image, request, parse=False)
                ranked = [h.id for h in hits]
                scores.setdefault((q.suite, parts, mode), []).append(query_metrics(ranked, q.relevant))
    for (suite, parts, mode), per_query in scores.items():
        report.rows.append(ResultRow(suite, parts, mode, len(per_query), mean_metrics(per_query)))
    report.rows.sort(key=lambda r: (r.suite, -len(r.parts), r.parts, list(MODES).index(r.mode)))
    report.seconds = round(time.monotonic() - started, 2)
    return report


def _variants(q: EvalQuery) -> list[tuple[str, str | None, str | None]]:
    if q.text and q.image:
        return [("text+image", q.text, q.image), ("text", q.text, None), ("image", None, q.image)]
    return [(q.parts, q.text, q.image)]


def format_table(report: EvalReport) -> str:
    """A plain-text table: one line per suite, query parts and mode."""
    head = ["suite", "parts", "mode", "n", *METRIC_NAMES]
    lines = [
        [r.suite, r.parts, r.mode, str(r.queries), *(f"{r.metrics[m]:.3f}" for m in METRIC_NAMES)] for r in report.rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [
        f"collection {report.collection} ({report.products} products), model {report.model}",
        fmt.format(*head),
        fmt.format(*("-" * w for w in widths)),
    ]
    out += [fmt.format(*line) for line in lines]
    if report.tagging:
        t = report.tagging
        out.append("")
        out.append(f"zero-shot tagging of {t['field']!r} over {t['products']} products ({len(t['labels'])} labels):")
        names = {"prompt ensemble": t["ensemble"], **{repr(k): v for k, v in t["templates"].items()}}
        width = max(len(n) for n in names)
        out += [f"  {name:<{width}}  accuracy {acc:.3f}" for name, acc in names.items()]
    return "\n".join(out)
