"""The Shelfsight storefront: a Streamlit page over the Python search API, or over the HTTP API of
the ``shelfsight serve`` that owns the store (``shop.py`` decides on every run).

State lives in the URL (``?q=red+bag&fusion=rrf&tw=0.5&category=bag&pmin=10&pmax=40``) so a search
can be shared and reloaded. Catalog text and URL parameters are shown as plain text, never rendered
as HTML or Markdown: ``st.text`` for anything that holds them (an error box carries a fixed title,
its detail follows as ``st.text``: Streamlit's Markdown turns a bare URL into a link even when
escaped), and ``plain()`` escapes every Markdown character where a label must be Markdown.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import streamlit as st
from shelfsight.search import Hit, SearchRequest, Settings, ShelfsightError
from shelfsight.search.catalog_summary import CatalogSummary
from shelfsight.search.engine import FUSION_METHODS
from shelfsight.search.settings import MAX_UPLOAD_BYTES
from shelfsight.ui.describe import Asked, Price, narrowing
from shelfsight.ui.shop import Shop, ShopHolder

PAGE = 12
SUGGESTIONS = ("red bag", "blue shoe", "striped shirt", "yellow umbrella")
# Sidebar filters, in this order, where the collection has them as keyword fields.
FACET_FIELDS = ("category", "type", "brand", "color", "tag")
# What each ranked list compares, in a shopper's words ("Why this result").
LIST_NAMES = {
    "text->image": "your words vs. the product photo",
    "text->text": "your words vs. the product text",
    "image->image": "your photo vs. the product photo",
    "image->text": "your photo vs. the product text",
    "query->fused": "your query vs. photo and text together",
    "text->bm25": "words it shares with your query (BM25 score)",
}
# The "Sort" choices: (boost specs, diversity). Boosts lift results in proportion to how well they
# already match, so "lower prices first" never puts an unrelated cheap product on top.
SORTS = ("Best match", "Best match, lower prices first", "Best match, more variety")


def list_name(label: str) -> str:
    """A shopper's words for one line of a hit's explanation."""
    if label.startswith("boost:"):
        return f"shop preference on {label.removeprefix('boost:')}"
    if label.startswith("exact:"):
        return "you typed its product number"
    named = re.fullmatch(r"text->text\[(.+?)=(.+)\]", label)
    if named:
        return f"your words among products with {named.group(1)} {named.group(2)}"
    return LIST_NAMES.get(label, label)


@st.cache_resource(show_spinner=False)
def shop_holder(db: str | None, collection: str) -> ShopHolder:
    return ShopHolder(Settings.from_env(db=db, collection=collection))


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


def main() -> None:
    st.set_page_config(page_title="Shelfsight", page_icon="🛍️", layout="wide")
    st.title("Shelfsight")
    shop, summary = _shop_or_stop()
    if shop.served_by is not None:
        st.caption(f"Answering through the Shelfsight server (pid {shop.served_by.pid}) that owns this store.")
    q, upload, tw, fusion = _search_controls(summary)
    chosen, price = _sidebar_filters(shop, summary, q)
    sort = _sort_control(price)
    filters = [f"{field}={','.join(values)}" for field, values in chosen.items() if values]
    filters += price.filters if price else []
    page = int(_number_param("page", 1, 1, 50))
    _set_params(
        q=q,
        tw=tw,
        fusion=fusion if fusion != summary.fusion else None,
        sort=sort if sort != SORTS[0] else None,
        pmin=str(price.picked[0]) if price and price.picked[0] > price.low else None,
        pmax=str(price.picked[1]) if price and price.picked[1] < price.high else None,
        **{field: values for field, values in chosen.items()},
    )
    image, photo = _query_image(shop, upload)
    similar_id = _param("similar")
    if not (q.strip() or image or similar_id):
        st.info("Try: " + " · ".join(SUGGESTIONS) + " — or upload a photo.")
        return
    asked = Asked(q.strip(), photo, None, narrowing(chosen, price))
    try:
        if similar_id:
            asked = Asked(similar_title=shop.product(similar_id).title, narrowed=asked.narrowed)
            hits = shop.similar(similar_id, filters, PAGE * page)
        else:
            boosts, diversity = _sort_options(sort, price)
            if (boosts or diversity is not None) and image is not None and fusion == "dbsf" and tw != 0.5:
                fusion = "rrf"  # the store fuses unequal weights by rank, then applies the sort
            request = SearchRequest(
                filters=filters,
                fusion=fusion,
                vectors=summary.search_vectors or None,  # named, so the store and the server answer alike
                text_weight=tw,
                image_weight=1.0 - tw,
                limit=PAGE * page,
                boosts=boosts,
                diversity=diversity,
            )
            answer = shop.answer(q.strip() or None, image, request)
            hits = answer.hits
            if answer.showing_results_for:  # words outside the catalog's vocabulary were corrected
                asked = replace(asked, text=answer.showing_results_for, corrected_from=q.strip())
    except ShelfsightError as exc:
        _problem("error", "This search could not run:", exc)
        return
    _show_results(shop, hits, asked, similar_id, page)


def _shop_or_stop() -> tuple[Shop, CatalogSummary]:
    settings = Settings.from_env()
    try:
        with st.spinner("Opening the shop…"):
            shop = shop_holder(settings.db, settings.collection).current()
            return shop, shop.summary()
    except ShelfsightError as exc:
        _problem("error", "The shop is not ready:", exc)
        st.stop()  # ends this script run
        raise  # not reached: st.stop() raises


def _search_controls(summary: CatalogSummary) -> tuple[str, Any, float, str]:
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
            "Words ↔ photo weight",
            0.0,
            1.0,
            _number_param("tw", 0.5, 0.0, 1.0),
            0.05,
            help="0: only the photo counts, 1: only the words",
        )
        methods = [m for m in FUSION_METHODS if m != "early" or "fused" in summary.vectors]
        asked_fusion = _param("fusion", summary.fusion)
        fusion = st.selectbox("Fusion", methods, index=methods.index(asked_fusion) if asked_fusion in methods else 0)
    return q, upload, tw, fusion


def _sidebar_filters(shop: Shop, summary: CatalogSummary, q: str) -> tuple[dict[str, list[str]], Price | None]:
    """Sidebar filters built from the collection's fields, with counts for the current query, and
    the price range over the catalog's own prices."""
    st.sidebar.header("Filters")
    facet_fields = [f for f in FACET_FIELDS if summary.fields.get(f) == "keyword"]
    try:
        counts = shop.facets(facet_fields, q or None)
    except ShelfsightError:
        counts = shop.facets(facet_fields, None)
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
            placeholder="Any",
            key=f"f-{field}",
        )
    return chosen, _price_slider(summary)


def _sort_control(price: Price | None) -> str:
    choices = [s for s in SORTS if price is not None or "prices" not in s]
    asked = _param("sort", SORTS[0])
    return st.sidebar.selectbox("Sort", choices, index=choices.index(asked) if asked in choices else 0, key="sort")


def _sort_options(sort: str, price: Price | None) -> tuple[tuple[str, ...], float | None]:
    """The boosts and diversity behind a sort choice."""
    if sort == "Best match, lower prices first" and price is not None:
        low, high = price.picked
        return (f"price~{low}/{max((high - low) / 2, 1)}:1",), None
    if sort == "Best match, more variety":
        return (), 0.6
    return (), None


def _price_slider(summary: CatalogSummary) -> Price | None:
    if summary.fields.get("price") != "float" or "price" not in summary.ranges:
        return None
    low, high = (int(math.floor(summary.ranges["price"][0])), int(math.ceil(summary.ranges["price"][1])))
    if high <= low:
        return None  # one price for everything: nothing to pick
    start = round(_number_param("pmin", low, low, high))
    end = round(_number_param("pmax", high, start, high))
    picked = st.sidebar.slider(
        "Price", low, high, (start, end), step=1, format="$%d", key="f-price", help="The whole range: any price"
    )
    return Price(low, high, (int(picked[0]), int(picked[1])))


def _query_image(shop: Shop, upload: Any) -> tuple[bytes | str | None, str]:
    """The uploaded photo, or the image of the product named by ``?img=`` (its "Search by photo"),
    and how to name it."""
    if upload is not None:
        image_bytes = upload.getvalue()
        if len(image_bytes) <= MAX_UPLOAD_BYTES:
            return image_bytes, "your photo"
        st.error(f"That photo is over {MAX_UPLOAD_BYTES // 2**20} MB; upload a smaller one.")
    image_id = _param("img")
    if not image_id:
        return None, ""
    try:
        image = shop.query_image(image_id)
    except (ShelfsightError, OSError) as exc:
        _problem("warning", "Cannot use that product's image:", exc)
        return None, ""
    return image, "this product's photo" if image else ""


def _clear_filters(fields: list[str]) -> None:
    """Runs before the next page run, when widget state may still change."""
    for field in fields:
        st.session_state.pop(f"f-{field}", None)  # the widgets start again from the URL, now without them
        st.query_params.pop(field, None)
    st.session_state.pop("f-price", None)
    for key in ("pmin", "pmax", "page"):
        st.query_params.pop(key, None)


def _show_results(shop: Shop, hits: list[Hit], asked: Asked, similar_id: str, page: int) -> None:
    if similar_id and st.button("Back to search"):
        _set_params(similar=None)
        st.rerun()
    if not hits:
        _no_matches(asked)
        return
    st.text(asked.found(len(hits)))
    columns = st.columns(4)
    for i, hit in enumerate(hits):
        with columns[i % 4]:
            _card(shop, hit, f"{i}")
    if len(hits) == PAGE * page and st.button("Load more"):
        _set_params(page=page + 1)
        st.rerun()


def _no_matches(asked: Asked) -> None:
    with st.container(border=True):
        st.text(asked.nothing())
        st.caption("Try other words, a photo, or fewer filters. Some searches that find things here:")
        st.text(" · ".join(SUGGESTIONS))
        if asked.narrowed:
            st.button(
                "Clear filters",
                key="clear-filters",
                on_click=_clear_filters,
                args=(list(FACET_FIELDS),),
                type="primary",
            )


def _card(shop: Shop, hit: Hit, key: str) -> None:
    with st.container(border=True):
        try:
            image = shop.card_image(hit)
        except ShelfsightError:
            image = None  # the card still shows without its picture
        if image is not None:
            st.image(image, width="stretch")
        st.text(hit.title)
        price = hit.payload.get("price")
        money = f"${price:.2f}" if isinstance(price, int | float) and not isinstance(price, bool) else None
        st.text(" · ".join(str(x) for x in (hit.payload.get("category"), money) if x))
        with st.expander("Why this result"):
            _explain(hit)
        if st.button("More like this", key=f"similar-{key}", width="stretch"):
            _set_params(similar=hit.id, q=None, img=None, page=None)
            st.rerun()
        if image is not None and st.button("Search by photo", key=f"img-{key}", width="stretch"):
            _set_params(img=hit.id, similar=None, page=None)
            st.rerun()


def _explain(hit: Hit) -> None:
    """The scores behind a card, for the curious: they mean little to most shoppers, so they live here."""
    st.text(f"Match score {hit.score:.4f}")
    if hit.payload.get("description"):
        st.text(hit.payload["description"])
    for label, vs in hit.vector_scores.items():
        rank = f"rank {vs.rank}" if vs.rank else "not in its top list"
        share = hit.contributions.get(label, 0.0)
        st.text(f"{list_name(label)}: {vs.score:.3f}, {rank}, adds {share:.4f}")


main()
