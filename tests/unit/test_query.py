"""Query syntax and filter expressions, parsed into typed parts: cases worked by hand."""

import pytest
from PIL import Image
from shelfsight.search.errors import BadInputError
from shelfsight.search.query import NEGATIVE_WEIGHT, ParsedQuery, parse_filters, parse_query
from shelfsight.search.store.base import CollectionMeta, Match, Range

NEG = NEGATIVE_WEIGHT


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8), "red").save(path)
    return str(path)


@pytest.mark.parametrize(
    "text, texts, negatives",
    [
        ("red bag", [("red bag", 1.0)], []),
        ("  red   bag  ", [("red bag", 1.0)], []),
        ("2:red bag -striped", [("red bag", 2.0)], [("striped", NEG)]),
        ("0.5:leather", [("leather", 0.5)], []),
        (" 10 : bag", [("bag", 10.0)], []),
        ("2:bag -red", [("bag", 2.0)], [("red", NEG)]),  # a part's weight never scales its negatives
        ("bag -red -striped", [("bag", 1.0)], [("red", NEG), ("striped", NEG)]),
        ("-striped bag", [("bag", 1.0)], [("striped", NEG)]),
        ("red dress + blue shoe", [("red dress", 1.0), ("blue shoe", 1.0)], []),
        ("3:red dress + blue shoe -floral", [("red dress", 3.0), ("blue shoe", 1.0)], [("floral", NEG)]),
        ("+ red", [("red", 1.0)], []),
        ("red +", [("red", 1.0)], []),
        ("red +  + blue", [("red", 1.0), ("blue", 1.0)], []),  # an empty part between separators
        ("c++ shoes", [("c++ shoes", 1.0)], []),  # "+" is a separator only with a space each side
        ("red+blue", [("red+blue", 1.0)], []),
        ("a-line dress", [("a-line dress", 1.0)], []),  # a hyphen inside a word is not a negative
        ("red - blue", [("red - blue", 1.0)], []),  # nor is a lone "-"
        ("red:bag", [("red:bag", 1.0)], []),  # a weight is a number
        ("black/white mug", [("black/white mug", 1.0)], []),  # a slash inside words is no path
        ("black/white", [("black/white", 1.0)], []),
    ],
)
def test_text_parts_weights_and_negatives(text, texts, negatives):
    parsed = parse_query(text)
    assert parsed == ParsedQuery(tuple(texts), (), tuple(negatives))
    assert not parsed.empty


@pytest.mark.parametrize("text", ["", "   ", " + ", " +  + ", None])
def test_empty_queries_have_no_parts(text):
    parsed = parse_query(text)
    assert parsed == ParsedQuery() and parsed.empty


def test_only_negative_terms_is_empty():
    parsed = parse_query("-striped -red")
    assert parsed == ParsedQuery((), (), (("striped", NEG), ("red", NEG)))
    assert parsed.empty  # nothing to search towards


def test_existing_image_file_is_an_image_part(photo, tmp_path):
    assert parse_query(photo) == ParsedQuery((), ((photo, 1.0),))
    assert parse_query(f"red dress + {photo}") == ParsedQuery((("red dress", 1.0),), ((photo, 1.0),))
    assert parse_query(f"3:{photo} + 2:red -striped") == ParsedQuery(
        (("red", 2.0),), ((photo, 3.0),), (("striped", NEG),)
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    assert parse_query("notes.txt") == ParsedQuery((("notes.txt", 1.0),))  # no image name, no path: text


@pytest.mark.parametrize("part", ["missing.jpg", "./photos/missing.png", "~/nope/red-bag", "/srv/shop/p1.webp"])
def test_a_mistyped_image_path_is_an_image_part_not_silently_text(part):
    # Written like a path or an image file: the engine then names it when it does not exist.
    assert parse_query(f"red + {part}") == ParsedQuery((("red", 1.0),), ((part, 1.0),))


def test_the_engine_names_a_missing_query_image(engine):
    with pytest.raises(BadInputError, match="query image not found: ./nope.jpg"):
        engine.search("red + ./nope.jpg")


@pytest.mark.parametrize(
    "url", ["https://shop.example/p/1.jpg", "http://shop.example/image?id=3", "HTTPS://SHOP.EXAMPLE/A.PNG"]
)
def test_http_urls_are_image_parts(url):
    # Parsing never fetches: a URL is an image reference whatever its suffix.
    assert parse_query(url) == ParsedQuery((), ((url, 1.0),))
    assert parse_query(f"red + 2:{url}") == ParsedQuery((("red", 1.0),), ((url, 2.0),))


META = CollectionMeta(model="m@1", dimension=8, fields={"category": "keyword", "color": "keyword", "price": "float"})


@pytest.mark.parametrize("filters", [None, "", [], (), {}])
def test_no_filters(filters):
    assert parse_filters(filters, META) == ()


@pytest.mark.parametrize(
    "filters, expected",
    [
        ("category=shoe", (Match("category", ("shoe",)),)),
        (["category=shoe,bag"], (Match("category", ("shoe", "bag")),)),
        (["category = shoe , bag ,"], (Match("category", ("shoe", "bag")),)),
        (["color!=red"], (Match("color", ("red",), exclude=True),)),
        (["price<=40"], (Range("price", lte=40.0),)),
        (["price<40"], (Range("price", lt=40.0),)),
        ([" price >= 5 "], (Range("price", gte=5.0),)),
        (["price>10.5"], (Range("price", gt=10.5),)),
        (["price=12"], (Range("price", gte=12.0, lte=12.0),)),  # numeric equality is a closed range
        (
            ["category=shoe", "color!=red,blue", "price>10", "price<=40"],
            (
                Match("category", ("shoe",)),
                Match("color", ("red", "blue"), exclude=True),
                Range("price", gt=10.0),
                Range("price", lte=40.0),
            ),
        ),
        (
            {"category": "shoe", "color": ["red", "blue"], "price": {"gte": 20, "lt": 60}},
            (Match("category", ("shoe",)), Match("color", ("red", "blue")), Range("price", gte=20.0, lt=60.0)),
        ),
        ({"category": 3}, (Match("category", ("3",)),)),  # keyword values compare as text
        ({"price": 7}, (Range("price", gte=7.0, lte=7.0),)),
        ([{"price": {"lte": "40"}}, "category=hat"], (Range("price", lte=40.0), Match("category", ("hat",)))),
        ([Range("price", lt=3.0), Match("color", ("red",))], (Range("price", lt=3.0), Match("color", ("red",)))),
    ],
)
def test_filters_parse_to_typed_conditions(filters, expected):
    assert parse_filters(filters, META) == expected


@pytest.mark.parametrize(
    "filters, message",
    [
        (["colour=red"], r"unknown filter field 'colour'; filterable fields: category, color, price"),
        (["category<3"], "holds text"),
        (["price<=ten"], "needs a number"),
        (["price=1,2"], "numeric"),
        (["price!=3"], "numeric"),
        (["category="], "cannot read filter"),
        (["category"], "cannot read filter"),
        (["=shoe"], "cannot read filter"),
        (["category=,"], "has no value"),
        ([42], "cannot read filter"),
        ({"price": {"max": 3}}, "unknown bounds"),
        ({"price": {"lte": "cheap"}}, "needs a number"),
        ({"size": "9"}, "unknown filter field 'size'"),
    ],
)
def test_bad_filters_say_what_is_wrong(filters, message):
    with pytest.raises(BadInputError, match=message):
        parse_filters(filters, META)
