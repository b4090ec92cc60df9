"""The Shelfsight storefront: a Streamlit page over the Python search API only.

State lives in the URL (``?q=red+bag&fusion=rrf&tw=0.5&category=bag&pmax=40``) so a search can be
shared and reloaded. Catalog text and URL parameters are shown as plain text, never rendered as
HTML or Markdown: ``st.text`` for anything that holds them (an error box carries a fixed title, its
detail follows as ``st.text``: Streamlit's Markdown turns a bare URL into a link even when escaped),
and ``plain()`` escapes every Markdown character where a label must be Markdown.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import streamlit as st
from shelfsight.search import Hit, SearchEngine, SearchRequest, Settings, ShelfsightError
from shelfsight.search.engine import FUSION_METHODS
from shelfsight.search.settings import MAX_UPLOAD_BYTES

PAGE = 12
SUGGESTIONS = ("red bag", "blue shoe", "striped shirt", "yellow umbrella")
# Sidebar filters, in this order, where the collection has them as keyword fields.
FACET_FIELDS = ("category", "type", "brand", "color", "tag")


@st.cache_resource(show_spinner="Loading the search engine…")
def load_engine(db: str | None, collection: str) -> SearchEngine:
    engine = SearchEngine.open(Settings.from_env(db=db, collection=collection))
    engine.count()  # opens the store now, so a locked or missing store is reported here
    return engine


# Every ASCII punctuation character Streamlit's Markdown may act on (CommonMark escapes any of them;
# ":" starts emoji and colour directives, "$" LaTeX).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&=\"'/])")


def plain(text: object) -> str:
    """``text`` escaped so Streamlit's Markdown shows it exactly as typed."""
    return _MARKDOWN.sub(r"\\\1", str(text)).replace("\n", "  \n")


def _problem(kind: str, title: str, detail: object) -> None:
    """A fixed ``title`` in an error or warning box, then ``detail`` (which may hold user or catalog
    text) as plain text."""
    getattr(st, kind)(title)
    st.text(str(detail))


def _param(name: str, default: str = "") -> str:
    return st.query_params.get(name, default)


def _number_param(name: str, default: float, low: float, high: float) -> float:
    """A number from the URL, clamped to [low, high]; a hand-edited bad value falls back."""
    try:
        value = float(_param(name, str(default)) or default)
    except ValueError:
        return default
    return min(max(value, low), high) if value == value else default


def _set_params(**values: object) -> None:
    for key, value in values.items():
        if value in (None, "", [], 0) and key != "tw":
            st.query_params.pop(key, None)
        else:
            st.query_params[key] = ",".join(value) if isinstance(value, list) else str(value)


def _card(hit: Hit, engine: SearchEngine, key: str) -> None:
    with st.container(border=True):
        image = hit.payload.get("image")
        if image and (image.startswith(("http://", "https://")) or Path(image).is_file()):
            st.image(image, width="stretch")
        st.text(hit.title)
        price = hit.payload.get("price")
        line = " · ".join(
            str(x) for x in (hit.payload.get("category"), f"${price:.2f}" if isinstance(price, float) else None) if x
        )
        st.text(f"{line}   score {hit.score:.4f}")
        with st.expander("Why this result"):
            if hit.payload.get("description"):
                st.text(hit.payload["description"])
            for label, vs in hit.vector_scores.items():
                rank = f"rank {vs.rank}" if vs.rank else "not in top list"
                st.text(f"{label}: cosine {vs.score:.3f}, {rank}, adds {hit.contributions.get(label, 0.0):.4f}")
        left, right = st.columns(2)
        if left.button("More like this", key=f"similar-{key}"):
            _set_params(similar=hit.id, q=None, img=None, page=None)
            st.rerun()
        if image and right.button("Search with image", key=f"img-{key}"):
            _set_params(img=hit.id, similar=None, page=None)
            st.rerun()


def main() -> None:
    st.set_page_config(page_title="Shelfsight", page_icon="🛍️", layout="wide")
    st.title("Shelfsight")
    engine = _engine_or_stop()
    q, upload, tw, fusion = _search_controls(engine)
    chosen, pmax = _sidebar_filters(engine, q)
    filters = [f"{field}={','.join(values)}" for field, values in chosen.items() if values]
    if pmax:
        filters.append(f"price<={pmax}")
    page = int(_number_param("page", 1, 1, 50))
    _set_params(
        q=q,
        tw=tw,
        fusion=fusion if fusion != engine.settings.fusion else None,
        pmax=pmax or None,
        **{field: values for field, values in chosen.items()},
    )
    image_bytes = _query_image(engine, upload)
    similar_id = _param("similar")
    if not (q.strip() or image_bytes or similar_id):
        st.info("Try: " + " · ".join(SUGGESTIONS) + " — or upload a photo.")
        return
    started = time.perf_counter()
    try:
        if similar_id:
            title = engine.get(similar_id).title
            st.caption("More like this product:")  # fixed text; the catalog's title follows as plain text
            st.text(title)
            hits = engine.similar(similar_id, filters=filters, limit=PAGE * page)
        else:
            request = SearchRequest(
                filters=filters, fusion=fusion, text_weight=tw, image_weight=1.0 - tw, limit=PAGE * page
            )
            hits = engine.run(q.strip() or None, image_bytes, request)
    except ShelfsightError as exc:
        _problem("error", "This search could not run:", exc)
        return
    _show_results(engine, hits, (time.perf_counter() - started) * 1000, similar_id, page)


def _engine_or_stop() -> SearchEngine:
    settings = Settings.from_env()
    try:
        return load_engine(settings.db, settings.collection)
    except ShelfsightError as exc:
        _problem("error", "The shop is not ready:", exc)
        st.stop()  # ends this script run


def _search_controls(engine: SearchEngine) -> tuple[str, Any, float, str]:
    """The query box, the photo upload and the advanced weight and fusion controls."""
    q = st.text_input(
        "Search products",
        value=_param("q"),
        placeholder="red bag, 2:leather, -striped",
        help='Combine words; "2:red" doubles a term, "-striped" pushes away from it.',
    )
    upload = st.file_uploader("…or search with a photo", type=["jpg", "jpeg", "png", "webp", "gif", "bmp"])
    with st.expander("Advanced"):
        tw = st.slider(
            "Text ↔ image weight",
            0.0,
            1.0,
            _number_param("tw", 0.5, 0.0, 1.0),
            0.05,
            help="0: only the photo counts, 1: only the words",
        )
        methods = [m for m in FUSION_METHODS if m != "early" or "fused" in engine.meta.vectors]
        asked_fusion = _param("fusion", engine.settings.fusion)
        fusion = st.selectbox("Fusion", methods, index=methods.index(asked_fusion) if asked_fusion in methods else 0)
    return q, upload, tw, fusion


def _sidebar_filters(engine: SearchEngine, q: str) -> tuple[dict[str, list[str]], float | None]:
    """Sidebar filters built from the collection's payload, with counts for the current query."""
    fields = engine.filterable_fields
    st.sidebar.header("Filters")
    facet_fields = [f for f in FACET_FIELDS if fields.get(f) == "keyword"]
    try:
        counts = engine.facets(facet_fields, q or None)
    except ShelfsightError:
        counts = engine.facets(facet_fields)
    chosen: dict[str, list[str]] = {}
    for field, pairs in counts.items():
        options = [str(v) for v, _ in pairs]
        picked = [v for v in _param(field).split(",") if v]
        options += [p for p in picked if p not in options]
        n = dict((str(v), c) for v, c in pairs)
        chosen[field] = st.sidebar.multiselect(
            plain(field.capitalize()),
            options,
            default=picked,
            format_func=lambda v, n=n: f"{v} ({n.get(v, 0)})",
            key=f"f-{field}",
        )
    pmax = None
    if fields.get("price") == "float":
        pmax = st.sidebar.number_input(
            "Max price", min_value=0.0, value=_number_param("pmax", 0.0, 0.0, 1e9), step=5.0, help="0: no limit"
        )
    return chosen, pmax


def _query_image(engine: SearchEngine, upload: Any) -> bytes | None:
    """The uploaded photo, or the image of the product named by ``?img=`` (its "Search with image")."""
    if upload is not None:
        image_bytes = upload.getvalue()
        if len(image_bytes) <= MAX_UPLOAD_BYTES:
            return image_bytes
        st.error(f"That photo is over {MAX_UPLOAD_BYTES // 2**20} MB; upload a smaller one.")
    image_id = _param("img")
    if not image_id:
        return None
    try:
        path = engine.get(image_id).image
        return Path(path).read_bytes() if path and Path(path).is_file() else None
    except (ShelfsightError, OSError) as exc:
        _problem("warning", "Cannot use that product's image:", exc)
        return None


def _show_results(engine: SearchEngine, hits: list[Hit], took_ms: float, similar_id: str, page: int) -> None:
    if similar_id and st.button("Back to search"):
        _set_params(similar=None)
        st.rerun()
    if not hits:
        st.warning("No products match. Loosen a filter or try: " + ", ".join(SUGGESTIONS))
        return
    st.caption(f"{len(hits)} results in {took_ms:.0f} ms")
    columns = st.columns(4)
    for i, hit in enumerate(hits):
        with columns[i % 4]:
            _card(hit, engine, f"{i}")
    if len(hits) == PAGE * page and st.button("Load more"):
        _set_params(page=page + 1)
        st.rerun()


main()
