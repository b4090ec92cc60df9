"""The query-vector LRU: batches only what it lacks, keeps the most recent, forgets the oldest."""

import numpy as np
from PIL import Image
from shelfsight.search.vector_cache import VectorCache, image_key


def _fake_encoder(calls):
    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    return encode


def test_computes_only_missing_keys_in_one_batch():
    calls = []
    cache = VectorCache(4)
    first = cache.get_many(["a", "bb"], _fake_encoder(calls))
    both = cache.get_many(["bb", "ccc", "a"], _fake_encoder(calls))
    assert calls == [["a", "bb"], ["ccc"]]
    assert both.tolist() == [[2, 1], [3, 1], [1, 1]] and first.tolist() == [[1, 1], [2, 1]]
    assert (cache.hits, cache.misses) == (2, 3)


def test_least_recently_used_is_evicted():
    calls = []
    cache = VectorCache(2)
    cache.get_many(["a", "b"], _fake_encoder(calls))
    cache.get_many(["a"], _fake_encoder(calls))  # "b" is now the oldest
    cache.get_many(["c"], _fake_encoder(calls))
    cache.get_many(["a", "b"], _fake_encoder(calls))
    assert calls[-1] == ["b"]


def test_image_key_follows_pixels_not_the_object():
    red = Image.new("RGB", (4, 4), "red")
    assert image_key(red) == image_key(red.copy())
    assert image_key(red) != image_key(Image.new("RGB", (4, 4), "blue"))
    assert image_key(red) != image_key(Image.new("RGB", (4, 2), "red"))
