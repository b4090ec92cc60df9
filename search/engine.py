"""SearchEngine: queries in, explained hits out.

A query has text parts, image parts or both. Each part becomes one vector; each (part, product
vector) pair is one ranked list; late fusion merges the lists (RRF and DBSF with the store's own
formulas, a weighted sum of exact cosines), early fusion searches the ``fused`` vector instead.

Example::

    from shelfsight.search import SearchEngine
    engine = SearchEngine.open("db")
    for hit in engine.search("red bag -striped", filters=["price<=50"], limit=5):
        print(hit.score, hit.title)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from shelfsight.search import fusion
from shelfsight.search.boosts import label, parse_boosts, signal
from shelfsight.search.embedder import Embedder
from shelfsight.search.errors import BadInputError, IncompatibleCollectionError, ProductNotFoundError
from shelfsight.search.exact import exact_product, satisfies
from shelfsight.search.images import ImagePolicy, decode_image, is_url, load_image, to_rgb
from shelfsight.search.lexical import BM25, bm25_query, correct_words, named_values
from shelfsight.search.query import Filters, ParsedQuery, parse_filters, parse_query
from shelfsight.search.records import Answer, Hit, Product, VectorScore, point_id
from shelfsight.search.settings import Settings
from shelfsight.search.store import open_store
from shelfsight.search.store.base import (
    Boost,
    CollectionMeta,
    Diversity,
    Filter,
    HasId,
    Match,
    NearestQuery,
    Phrase,
    Sparse,
    StoredPoint,
    VectorStore,
)
from shelfsight.search.vector_cache import VectorCache, image_key

FUSION_METHODS = ("rrf", "dbsf", "weighted", "early")
ImageInput = Image.Image | bytes | str | Path
# Each ranked list fetches at least this many candidates so fusion sees beyond the page.
MIN_CANDIDATES = 100
# Query texts and images whose vectors are kept (a vector is a few KB).
QUERY_CACHE_SIZE = 512
# How often an engine over a store other processes may rebuild (a Qdrant server) reads the
# collection's metadata again: vocabulary, relevance floor, and the model, which must still match.
META_REFRESH_S = 30.0
# Largest page and deepest offset a request may ask for: each ranked list fetches 2 * (offset +
# limit) candidates with their vectors, so these bound one query's store work and memory.
MAX_LIMIT = 1000
MAX_OFFSET = 10_000
# Field values a query may name that get a ranked list each ("Kestrel red mug": brand, colour).
MAX_NAMED_VALUES = 4


@dataclass(frozen=True)
class SearchRequest:
    """A search's options beyond the query itself; ``None`` means the engine's settings decide.

    ``vectors`` picks the product vectors searched (default ``image``, ``text`` and ``bm25``);
    ``min_score`` is a cosine floor on each ranked list and replaces the collection's relevance
    floor; ``correct=False`` searches misspelled words as typed; ``diversity`` (0-1) spreads a
    page over unlike products (maximal marginal relevance); ``boosts`` are shop signals such as
    ``"stock=in:0.5"`` (``shelfsight.search.boosts``).

    Example::

        engine.run("red bag", None, SearchRequest(filters=("price<=50",), fusion="rrf", limit=5))
    """

    filters: Filters = None
    fusion: str | None = None
    vectors: tuple[str, ...] | None = None
    text_weight: float | None = None
    image_weight: float | None = None
    vector_weights: Mapping[str, float] | None = None
    min_score: float | None = None
    limit: int | None = None
    offset: int = 0
    correct: bool = True
    diversity: float | None = None
    boosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class _List:
    label: str  # "<query part>-><product vector>", e.g. "text->image", "text->bm25"
    vector: np.ndarray | Sparse
    using: str
    weight: float
    filter: Filter = ()  # a list of the products with a field value the query names

    @property
    def dense(self) -> bool:
        return not isinstance(self.vector, Sparse)


@dataclass(frozen=True)
class _Words:
    """The query's words: its positive text, and that text as a BM25 query."""

    text: str
    vector: Sparse


@dataclass(frozen=True)
class _Evidence:
    """How well the best candidates matched, for the relevance floor: the best cosine of a text
    part against a product vector, whether the query's words were searched (unfiltered), and
    whether any product shares a word with the query."""

    best_text_cosine: float | None
    words_searched: bool
    words_matched: bool


@dataclass(frozen=True)
class _Plan:
    """A validated request: the ranked lists to run and how deep, the filter, the page."""

    method: str
    lists: tuple[_List, ...]
    condition: Filter
    want: int  # fused results needed to cut the page (offset + limit, +1 for an excluded product)
    depth: int  # candidates per ranked list
    limit: int
    offset: int
    boosts: tuple[Boost, ...] = ()
    diversity: Diversity | None = None

    @property
    def reranked(self) -> bool:
        """Whether the store's last stage (boosts or diversity) orders the page."""
        return bool(self.boosts) or self.diversity is not None

    def evidence(self, results: list[list[StoredPoint]]) -> _Evidence:
        text_lists = [r for lst, r in zip(self.lists, results) if lst.dense and lst.label.startswith("text->")]
        best = max((r[0].score for r in text_lists if r), default=None)
        word_lists = [r for lst, r in zip(self.lists, results) if not lst.dense]
        # Under filters a shopper chose, an empty words list says more about the filters than the
        # query, so the floor judges unfiltered searches only.
        return _Evidence(best, bool(word_lists) and not self.condition, any(word_lists))

    @property
    def engine_fusion(self) -> tuple[str, list[float]] | None:
        """RRF, and DBSF with equal weights, which the store can fuse ahead of its last stage
        (boosts, diversity); weighted fusion and single lists cannot."""
        weights = [lst.weight for lst in self.lists]
        if len(self.lists) > 1 and (self.method == "rrf" or (self.method == "dbsf" and len(set(weights)) == 1)):
            return self.method, weights
        return None


class SearchEngine:
    """Search one collection with the model that built it."""

    def __init__(self, store: VectorStore, embedder: Embedder, collection: str, settings: Settings | None = None):
        self.store = store
        self.embedder = embedder
        self.collection = collection
        self.settings = settings or Settings(collection=collection)
        self._meta = self._checked(store.get_meta(collection))
        self._meta_read = time.monotonic()
        self.image_policy = ImagePolicy()
        # Query parts that name local files are read only when this is True (the HTTP API sets it False).
        self.allow_local_paths = True
        self.query_vectors = VectorCache(QUERY_CACHE_SIZE)
        # What embeds query texts: the embedder here; serve gives it shared passes of an int8
        # text tower (batching.py). Product texts are always the embedder's.
        self.encode_query_texts: Callable[[list[str]], np.ndarray] = embedder.encode_texts
        self._closers: list[Callable[[], None]] = []  # what close() also stops (serve's text process)

    @property
    def meta(self) -> CollectionMeta:
        """The collection's metadata. On a Qdrant server other processes can rebuild the collection
        (``ingest --reindex`` moves its alias), so it is read again every ``META_REFRESH_S``."""
        if self.store.shared_meta and time.monotonic() - self._meta_read > META_REFRESH_S:
            self._meta_read = time.monotonic()
            self._meta = self._checked(self.store.reread_meta(self.collection))
        return self._meta

    @meta.setter
    def meta(self, meta: CollectionMeta) -> None:
        self._meta = self._checked(meta)
        self._meta_read = time.monotonic()

    def _checked(self, meta: CollectionMeta) -> CollectionMeta:
        if meta.model != self.embedder.model_id:
            raise IncompatibleCollectionError(
                f"collection {self.collection!r} was built with model {meta.model!r} but the engine "
                f"got {self.embedder.model_id!r}; search with the collection's model (omit --model; "
                "restart `shelfsight serve` after a rebuild with another model), or rebuild the "
                "collection with `shelfsight ingest CATALOG --reindex --model NEW`"
            )
        return meta

    @classmethod
    def open(cls, db_or_settings: str | Path | Settings, model: str | None = None) -> SearchEngine:
        """Open a store directory (or Settings) with the collection's own model unless ``model``."""
        settings = db_or_settings if isinstance(db_or_settings, Settings) else Settings.from_env(db=str(db_or_settings))
        store = open_store(settings)
        try:
            meta = store.get_meta(settings.collection)
            embedder = Embedder(model or settings.model or meta.model_source or meta.model, device=settings.device)
            return cls(store, embedder, settings.collection, settings)
        except Exception:
            store.close()
            raise

    def on_close(self, close: Callable[[], None]) -> None:
        """Run ``close`` when the engine closes (before its store)."""
        self._closers.append(close)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        try:
            for close in closers:
                close()
        finally:
            self.store.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------------
    @property
    def filterable_fields(self) -> dict[str, str]:
        return dict(self.meta.fields)

    def count(self, filters: Filters = None) -> int:
        return self.store.count(self.collection, parse_filters(filters, self.meta))

    def get(self, product_id: str) -> Product:
        """The stored product, or ProductNotFoundError."""
        return _to_product(self._stored(product_id, with_vectors=False))

    def search(
        self,
        text: str | None = None,
        image: ImageInput | None = None,
        *,
        filters: Filters = None,
        fusion_method: str | None = None,
        vectors: Sequence[str] | None = None,
        text_weight: float | None = None,
        image_weight: float | None = None,
        vector_weights: dict[str, float] | None = None,
        min_score: float | None = None,
        limit: int | None = None,
        offset: int = 0,
        parse: bool = True,
    ) -> list[Hit]:
        """Products for a text and/or image query, best first, each with its explanation.

        ``text`` uses the query syntax of ``shelfsight.search.query`` unless ``parse=False``.
        ``vectors`` picks the product vectors searched (default ``image`` and ``text``);
        ``min_score`` is a cosine floor on each ranked list.
        """
        request = SearchRequest(
            filters, fusion_method, _names(vectors), text_weight, image_weight, vector_weights, min_score, limit, offset
        )
        return self.run(text, image, request, parse=parse)

    def run(
        self, text: str | None, image: ImageInput | None, request: SearchRequest, *, parse: bool = True
    ) -> list[Hit]:
        """``search`` with its options in one ``SearchRequest`` (what the CLI and HTTP API build)."""
        return self.answer(text, image, request, parse=parse).hits

    def answer(
        self, text: str | None, image: ImageInput | None, request: SearchRequest, *, parse: bool = True
    ) -> Answer:
        """``run``, with what a shop shows beside the hits: the corrected query, "no close matches",
        whether the query named a product exactly. Words outside the catalog's vocabulary are
        corrected unless ``request.correct`` is False."""
        corrected = correct_words(text, self.meta.vocabulary) if text and request.correct else None
        text = corrected or text
        parsed = (
            parse_query(text, allow_paths=self.allow_local_paths)
            if parse and text
            else ParsedQuery(((text, 1.0),) if text else ())
        )
        images: list[tuple[Image.Image, float]] = [(self._image(ref), w) for ref, w in parsed.images]
        if image is not None:
            images.append((self._image(image), 1.0))
        if parsed.empty and not images:
            raise BadInputError("empty query: give some text, an image, or both")
        weights = {
            "text": self._default(request.text_weight, "text_weight"),
            "image": self._default(request.image_weight, "image_weight"),
        }
        words = self._words(parsed)
        phrases = self._phrases(parsed)
        hits, evidence = self._execute(self._part_vectors(parsed, images), weights, request, words, phrases)
        exact = self._exact_match(text, request) if text and not images and request.offset == 0 else None
        if exact is not None:  # first by rule, scored level with the best so scores still fall
            limit = self.settings.limit if request.limit is None else int(request.limit)
            top = max((h.score for h in hits), default=1.0)
            label = next(iter(exact.vector_scores))
            exact = replace(exact, score=top, contributions={label: top})
            hits = [exact, *(h for h in hits if h.id != exact.id)][:limit]
        elif not images and self._below_floor(evidence, request):
            return Answer([], corrected, no_close_matches=True)
        return Answer(hits, corrected, exact_match=exact is not None)

    def similar(
        self,
        product_id: str,
        *,
        filters: Filters = None,
        fusion_method: str | None = None,
        vectors: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Hit]:
        """Products like a stored one, from its own vectors (it is left out of the results)."""
        stored = self._stored(product_id, with_vectors=True)
        parts = {k: v for k, v in stored.vectors.items() if k in ("image", "text")}
        request = SearchRequest(
            filters=filters, fusion=fusion_method, vectors=_names(vectors), limit=limit, offset=offset
        )
        return self._execute(parts, {"text": 1.0, "image": 1.0}, request, exclude=stored.id)[0]

    def facets(
        self,
        fields: Sequence[str] | None = None,
        text: str | None = None,
        image: ImageInput | None = None,
        *,
        filters: Filters = None,
        depth: int = 200,
        limit: int = 50,
        **search_options: Any,
    ) -> dict[str, list[tuple[Any, int]]]:
        """Value counts of keyword fields: over the filtered collection, or, for a query, over its
        top ``depth`` results (what a shopper sees when paging through them)."""
        keyword = [f for f, kind in self.meta.fields.items() if kind == "keyword"]
        fields = list(fields) if fields is not None else keyword
        for f in fields:
            if f not in keyword:
                raise BadInputError(f"cannot count values of {f!r}; keyword fields: {', '.join(keyword) or 'none'}")
        if text is None and image is None:
            condition = parse_filters(filters, self.meta)
            return {f: self.store.facet(self.collection, f, condition, limit) for f in fields}
        hits = self.search(text, image, filters=filters, limit=depth, **search_options)
        out = {}
        for f in fields:
            counts = Counter(str(h.payload[f]) for h in hits if h.payload.get(f) is not None)
            out[f] = counts.most_common(limit)
        return out

    # -- internals -----------------------------------------------------------------------------
    def _default(self, value: float | None, name: str) -> float:
        value = getattr(self.settings, name) if value is None else value
        if not np.isfinite(value) or value < 0:
            raise BadInputError(f"{name} must be a finite number >= 0, got {value}")
        return float(value)

    def _image(self, ref: ImageInput) -> Image.Image:
        if isinstance(ref, Image.Image):
            return to_rgb(ref)
        if isinstance(ref, bytes):
            return decode_image(ref, self.image_policy, name="uploaded image")
        ref = str(ref)
        if is_url(ref):
            return load_image(ref, Path("."), self.image_policy)
        if not self.allow_local_paths:
            raise BadInputError(
                f"query image {ref!r} is a local path, and local paths are off here; "
                "upload the image or give a public http(s) URL"
            )
        path = Path(ref).expanduser()
        if not path.is_file():
            raise BadInputError(f"query image not found: {ref}")
        if path.stat().st_size > self.image_policy.max_bytes:
            raise BadInputError(f"query image {ref} is over the {self.image_policy.max_bytes}-byte cap")
        return decode_image(path.read_bytes(), self.image_policy, name=ref)

    def _part_vectors(self, parsed: ParsedQuery, images: list[tuple[Image.Image, float]]) -> dict[str, np.ndarray]:
        """One vector per query part; negative terms are subtracted from every part."""
        all_texts = [t for t, _ in parsed.texts] + [t for t, _ in parsed.negatives]
        text_vecs = (
            self.query_vectors.get_many([("text", t) for t in all_texts], self.encode_query_texts, all_texts)
            if all_texts
            else np.zeros((0, self.meta.dimension))
        )
        pos_text = list(text_vecs[: len(parsed.texts)])
        neg = list(text_vecs[len(parsed.texts) :])
        neg_w = [-w for _, w in parsed.negatives]
        parts: dict[str, np.ndarray] = {}
        if pos_text:
            parts["text"] = fusion.combine(pos_text + neg, [w for _, w in parsed.texts] + neg_w)
        if images:
            pictures = [im for im, _ in images]
            keys = [("image", image_key(im)) for im in pictures]
            image_vecs = list(self.query_vectors.get_many(keys, self.embedder.encode_images, pictures))
            parts["image"] = fusion.combine(image_vecs + neg, [w for _, w in images] + neg_w)
        return parts

    def _words(self, parsed: ParsedQuery) -> _Words | None:
        """The BM25 query of the positive text parts, when the collection keeps product words."""
        if BM25 not in self.meta.sparse_vectors or not parsed.texts:
            return None
        text = " ".join(t for t, _ in parsed.texts)
        query = bm25_query(text, self.meta.bm25)
        return _Words(text, query) if query.indices else None

    def _phrases(self, parsed: ParsedQuery) -> Filter:
        if parsed.phrases and not self.meta.text_fields:
            raise BadInputError(
                f"collection {self.collection!r} was built before quoted phrases were indexed; rebuild it "
                "with `shelfsight ingest CATALOG --reindex`, or search without the quotes"
            )
        return tuple(Phrase(p, self.meta.text_fields) for p in parsed.phrases)

    def _exact_match(self, text: str, request: SearchRequest) -> Hit | None:
        """The product whose id (or SKU-like field) is the whole query, if it passes the filters."""
        found = exact_product(self.store, self.collection, self.meta, text)
        if found is None or not satisfies(found[0].payload, parse_filters(request.filters, self.meta)):
            return None
        point, field = found
        label = f"exact:{field}"
        return Hit(
            id=str(point.payload.get("product_id", point.id)),
            score=1.0,
            payload=_public_payload(point.payload),
            vector_scores={label: VectorScore(1.0, 1)},
            contributions={label: 1.0},
        )

    def _below_floor(self, evidence: _Evidence, request: SearchRequest) -> bool:
        """No close match: the query's words were searched and no product shares one, and the best
        text cosine is under the collection's floor (``min_score`` replaces the floor when given)."""
        floor = request.min_score if request.min_score is not None else self.meta.relevance_floor
        if floor is None or not evidence.words_searched or evidence.words_matched:
            return False
        if evidence.best_text_cosine is None:
            return True
        return evidence.best_text_cosine < floor

    def _stored(self, product_id: str, with_vectors: bool) -> StoredPoint:
        found = self.store.retrieve(self.collection, [point_id(product_id)], with_vectors=with_vectors)
        if not found:
            raise ProductNotFoundError(f"no product with id {product_id!r} in collection {self.collection!r}")
        return found[0]

    def _execute(
        self,
        parts: dict[str, np.ndarray],
        part_weights: dict[str, float],
        request: SearchRequest,
        words: _Words | None = None,
        phrases: Filter = (),
        exclude: str | None = None,
    ) -> tuple[list[Hit], _Evidence]:
        """Plan the ranked lists, run them in one store round trip, fuse, explain one page.

        The lists come back as ids and scores only. They are needed anyway for the explanations
        (each list's rank), so Python fuses them with the store's own formulas rather than have
        the store search them a second time; the store fuses only when its last stage (boosts,
        diversity) orders the page. Payloads, and vectors for the cosines some list missed, are
        then read for the page alone."""
        plan = self._plan(parts, part_weights, request, words, phrases, exclude)
        queries = [
            NearestQuery(lst.vector, lst.using, plan.depth, request.min_score if lst.dense else None, lst.filter)
            for lst in plan.lists
        ]
        results, fused = self.store.query(
            self.collection,
            queries,
            plan.condition,
            fusion=plan.engine_fusion if plan.reranked else None,
            limit=plan.want,
            boosts=plan.boosts,
            diversity=plan.diversity,
            with_payload=False,
        )
        reads = _Reads(self._page_points, partial(self._missing_scores, plan))
        hits = _explained_hits(plan, results, fused, exclude, reads)
        return hits, plan.evidence(results)

    def _page_points(self, ids: list[str]) -> dict[str, StoredPoint]:
        """The page's points with payloads, in one retrieve."""
        if not ids:
            return {}
        return {p.id: p for p in self.store.retrieve(self.collection, ids)}

    def _missing_scores(self, plan: _Plan, wanted: Mapping[int, Sequence[str]]) -> dict[tuple[int, str], float]:
        """The exact cosines, keyed (list index, id), of products in dense lists that did not reach
        them: one exact store query per list over just those ids, all in one round trip, so no
        vectors travel. A product outside a list's own filter, or without that vector, is absent
        (it scores 0 there)."""
        asks = [(i, tuple(ids)) for i, ids in wanted.items() if ids and plan.lists[i].dense]
        if not asks:
            return {}
        queries = [
            NearestQuery(
                plan.lists[i].vector, plan.lists[i].using, len(ids), None, plan.lists[i].filter + (HasId(ids),)
            )
            for i, ids in asks
        ]
        results, _ = self.store.query(self.collection, queries, exact=True, with_payload=False)
        return {(i, p.id): p.score for (i, _), found in zip(asks, results) for p in found}

    def _plan(
        self,
        parts: dict[str, np.ndarray],
        part_weights: dict[str, float],
        request: SearchRequest,
        words: _Words | None,
        phrases: Filter,
        exclude: str | None,
    ) -> _Plan:
        method = (request.fusion or self.settings.fusion).lower()
        if method not in FUSION_METHODS:
            raise BadInputError(f"unknown fusion method {method!r}; choose one of {', '.join(FUSION_METHODS)}")
        limit = self.settings.limit if request.limit is None else int(request.limit)
        if not (1 <= limit <= MAX_LIMIT and 0 <= request.offset <= MAX_OFFSET):
            raise BadInputError(
                f"limit must be 1 to {MAX_LIMIT} and offset 0 to {MAX_OFFSET}, got limit {limit} and "
                f"offset {request.offset}; page through fewer results"
            )
        if request.min_score is not None and not -1.0 <= request.min_score <= 1.0:
            raise BadInputError(f"min_score is a cosine similarity in [-1, 1], got {request.min_score}")
        condition = parse_filters(request.filters, self.meta) + phrases
        if method == "early":
            lists = [self._early_list(parts, part_weights)]
        else:
            lists = self._lists(parts, part_weights, words, request.vectors, request.vector_weights)
        if not lists:
            raise BadInputError("nothing to search: bm25 matches words, and this query has none; add text")
        lists = [lst for lst in lists if lst.weight > 0]
        if not lists:
            raise BadInputError("every ranked list has weight 0; raise a weight above 0")
        # Ask for one more when a product must be left out of its own "similar" list.
        want = limit + request.offset + (1 if exclude else 0)
        plan = _Plan(method, tuple(lists), condition, want, candidate_depth(want), limit, request.offset)
        return self._last_stage(plan, parts, request)

    def _last_stage(self, plan: _Plan, parts: dict[str, np.ndarray], request: SearchRequest) -> _Plan:
        """The plan with its boosts or diversity, which the store applies after fusing."""
        boosts = parse_boosts(request.boosts, self.meta)
        if not boosts and request.diversity is None:
            return plan
        if len(plan.lists) > 1 and plan.engine_fusion is None:
            raise BadInputError("boosts and diversity work with rrf, dbsf (equal weights) or early fusion")
        diversity = None
        if request.diversity is not None:
            if not 0.0 <= request.diversity <= 1.0:
                raise BadInputError(f"diversity is from 0 (relevance only) to 1, got {request.diversity}")
            using = "image" if "image" in self.meta.vectors else "text"
            vector = parts["text"] if "text" in parts else parts["image"]
            diversity = Diversity(vector, using, request.diversity, plan.depth)
        return replace(plan, boosts=boosts, diversity=diversity)

    def _early_list(self, parts: dict[str, np.ndarray], part_weights: dict[str, float]) -> _List:
        if "fused" not in self.meta.vectors:
            raise BadInputError(
                f"collection {self.collection!r} has no early-fused vector; ingest with --fused-weight A"
            )
        names = list(parts)
        vector = fusion.combine([parts[n] for n in names], [part_weights[n] for n in names])
        return _List("query->fused", vector, "fused", 1.0)

    def _lists(
        self,
        parts: dict[str, np.ndarray],
        part_weights: dict[str, float],
        words: _Words | None,
        vectors: Sequence[str] | None,
        vector_weights: Mapping[str, float] | None,
    ) -> list[_List]:
        """One ranked list per (query part, product vector); BM25 words come from the text parts."""
        vectors = list(vectors) if vectors else ["image", "text", *self.meta.sparse_vectors]
        for v in vectors:
            self._check_vector_name(v)
        vw = {**dict.fromkeys(vectors, 1.0), **(vector_weights or {})}
        lists = [
            _List(f"{part}->{v}", vec, v, part_weights[part] * vw[v])
            for part, vec in parts.items()
            for v in vectors
            if v in self.meta.vectors
        ]
        if words is not None and BM25 in vectors:
            weight = part_weights["text"] * vw[BM25]
            lists.append(_List(f"text->{BM25}", words.vector, BM25, weight))
            lists += [replace(lst, weight=weight) for lst in self._named_lists(parts, words)]
        return lists

    def _named_lists(self, parts: dict[str, np.ndarray], words: _Words) -> list[_List]:
        """For each field value the query names ("Kestrel mug" names brand Kestrel), the products
        that have it, ranked by the text part: a brand or colour is then honoured as such,
        while the CLIP lists keep their say over the kind."""
        named = named_values(words.text, self.meta.field_values)[:MAX_NAMED_VALUES]
        return [_List(f"text->text[{f}={v}]", parts["text"], "text", 1.0, (Match(f, (v,)),)) for f, v in named]

    def _check_vector_name(self, name: str) -> None:
        if name == BM25 and BM25 not in self.meta.sparse_vectors:
            raise BadInputError(
                f"collection {self.collection!r} was built before keyword search (bm25) existed; rebuild it "
                "with `shelfsight ingest CATALOG --reindex` to search product words"
            )
        if name not in (*self.meta.vectors, *self.meta.sparse_vectors) or name == "fused":
            raise BadInputError(f"unknown product vector {name!r}; choose from image, text, bm25 (or fusion 'early')")


def candidate_depth(want: int) -> int:
    """How deep each ranked list is read for a page of ``want`` products: twice the page, and at
    least ``MIN_CANDIDATES``, so fusion sees products that rank low in one list and high in another."""
    return max(MIN_CANDIDATES, 2 * want)


def _names(vectors: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(vectors) if vectors else None


def _fused_order(
    plan: _Plan,
    ranked: list[list[tuple[str, float]]],
    fused: list[StoredPoint] | None,
    missing: Callable[[Mapping[int, Sequence[str]]], dict[tuple[int, str], float]],
) -> tuple[list[tuple[str, float]], dict[str, list[float]], dict[tuple[int, str], float]]:
    """The fused ranking, each id's per-list contributions, and the exact scores read for
    candidates some dense list missed (weighted fusion needs every candidate's)."""
    if plan.method != "weighted" or len(plan.lists) == 1:
        contributions = _list_contributions(plan, ranked)
        if plan.reranked:  # the store's last stage ordered the page; the lists explain each hit
            return [(p.id, sum(contributions.get(p.id, [0.0]))) for p in fused or []], contributions, {}
        if len(plan.lists) == 1:
            return list(ranked[0]), contributions, {}
        return fusion.rank_fused(contributions), contributions, {}
    # weighted: the cosine of every candidate in every dense list; BM25 scores over the list's best
    top = [max((score for _, score in r), default=0.0) or 1.0 for r in ranked]
    found = [dict(r) for r in ranked]
    candidates = list(dict.fromkeys(pid for r in ranked for pid, _ in r))
    extra = missing({i: [pid for pid in candidates if pid not in found[i]] for i in range(len(ranked))})
    exact = {
        pid: [
            found[i].get(pid, extra.get((i, pid), 0.0)) if lst.dense else found[i].get(pid, 0.0) / top[i]
            for i, lst in enumerate(plan.lists)
        ]
        for pid in candidates
    }
    contributions = fusion.fuse_weighted(exact, [lst.weight for lst in plan.lists])
    return fusion.rank_fused(contributions), contributions, extra


def _list_contributions(plan: _Plan, ranked: list[list[tuple[str, float]]]) -> dict[str, list[float]]:
    weights = [lst.weight for lst in plan.lists]
    if len(plan.lists) == 1:
        return {pid: [score] for pid, score in ranked[0]}
    if plan.method == "rrf":
        return fusion.fuse_rrf(ranked, weights)
    return fusion.fuse_dbsf(ranked, weights)


def _boosted(hit: Hit, plan: _Plan) -> Hit:
    """The hit with each boost's signal and share: relevance * weight * signal, so the shares sum
    to the store's formula score."""
    base = sum(hit.contributions.values())
    signals = {label(b): signal(b, hit.payload) for b in plan.boosts}
    shares = {label(b): base * b.weight * signals[label(b)] for b in plan.boosts}
    scores = {name: VectorScore(value, None) for name, value in signals.items()}
    total = base + sum(shares.values())
    return replace(
        hit, score=total, vector_scores={**hit.vector_scores, **scores}, contributions={**hit.contributions, **shares}
    )


@dataclass(frozen=True)
class _Reads:
    """What explaining a page reads from the store: payloads, and missed lists' exact scores."""

    page_points: Callable[[list[str]], dict[str, StoredPoint]]
    missing_scores: Callable[[Mapping[int, Sequence[str]]], dict[tuple[int, str], float]]


def _explained_hits(
    plan: _Plan, results: list[list[StoredPoint]], fused: list[StoredPoint] | None, exclude: str | None, reads: _Reads
) -> list[Hit]:
    """The page's hits in fused order, each with every list's score and rank and its share of the
    score. Payloads are read for the page only, and so are the cosines of lists a hit missed."""
    ranked = [[(p.id, p.score) for p in result] for result in results]
    order, contributions, extra = _fused_order(plan, ranked, fused, reads.missing_scores)
    page = [(pid, score) for pid, score in order if pid != exclude][plan.offset : plan.offset + plan.limit]
    ranks = [{pid: rank for rank, (pid, _) in enumerate(lst, start=1)} for lst in ranked]
    scores = [dict(lst) for lst in ranked]
    missed = {i: [pid for pid, _ in page if pid not in scores[i] and (i, pid) not in extra] for i in range(len(ranked))}
    extra.update(reads.missing_scores(missed))
    points = {p.id: p for p in fused or [] if p.payload}
    points.update(reads.page_points([pid for pid, _ in page if pid not in points]))
    hits = []
    for pid, score in page:
        point = points.get(pid)
        if point is None:  # deleted since the lists were read
            continue
        explanation = {
            lst.label: VectorScore(float(scores[i].get(pid, extra.get((i, pid), 0.0))), ranks[i].get(pid))
            for i, lst in enumerate(plan.lists)
        }
        shares = contributions.get(pid, [0.0] * len(plan.lists))
        hit = Hit(
            id=str(point.payload.get("product_id", pid)),
            score=float(score),
            payload=_public_payload(point.payload),
            vector_scores=explanation,
            contributions={lst.label: float(s) for lst, s in zip(plan.lists, shares)},
        )
        hits.append(_boosted(hit, plan) if plan.boosts else hit)
    return hits


def _public_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != "content_hash"}


def _to_product(point: StoredPoint) -> Product:
    p = dict(point.payload)
    own = {"product_id", "title", "description", "image", "has_image", "content_hash"}
    return Product(
        id=str(p.get("product_id")),
        title=str(p.get("title") or ""),
        description=str(p.get("description") or ""),
        image=p.get("image"),
        fields={k: v for k, v in p.items() if k not in own},
    )
