"""Collection options for a cluster, one place: from flags and environment, into each backend.

``CollectionOptions`` (in ``base``) is recorded in the collection's metadata. Here it is read
from ``--shards``/``SHELFSIGHT_SHARDS`` and friends, checked, and spelled in each client's types:
the server takes all of it; the embedded store takes on-disk storage and quantization, and
``edge_applicable`` drops the cluster-only options it cannot apply (the CLI says which).

Example::

    options = options_from_args(args)            # flags over SHELFSIGHT_* over the defaults
    store.default_options = options               # used when the store creates a collection
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shelfsight.search.errors import BadInputError
from shelfsight.search.store.base import CLUSTER_ONLY_OPTIONS, CollectionMeta, CollectionOptions

QUANTIZATIONS = ("int8",)
# The quantile int8 bounds are taken at: clips the rarest outliers so the other values keep resolution.
_INT8_QUANTILE = 0.99

_ENVIRONMENT = {
    "shards": "SHELFSIGHT_SHARDS",
    "replication_factor": "SHELFSIGHT_REPLICATION_FACTOR",
    "write_consistency": "SHELFSIGHT_WRITE_CONSISTENCY",
    "on_disk_vectors": "SHELFSIGHT_ON_DISK_VECTORS",
    "on_disk_payload": "SHELFSIGHT_ON_DISK_PAYLOAD",
    "quantization": "SHELFSIGHT_QUANTIZATION",
    "rescore": "SHELFSIGHT_RESCORE",
    "hnsw_m": "SHELFSIGHT_HNSW_M",
    "hnsw_ef_construct": "SHELFSIGHT_HNSW_EF_CONSTRUCT",
    "hnsw_payload_m": "SHELFSIGHT_HNSW_PAYLOAD_M",
    "hnsw_ef": "SHELFSIGHT_HNSW_EF",
    "oversampling": "SHELFSIGHT_OVERSAMPLING",
}
# The engine's own HNSW defaults, spelled out where one of the pair is given without the other.
DEFAULT_HNSW_M, DEFAULT_EF_CONSTRUCT, FULL_SCAN_THRESHOLD_KB = 16, 100, 10_000
_POSITIVE = ("hnsw_m", "hnsw_ef_construct", "hnsw_ef")
# Below this share of points passing a filter, searches use ACORN: HNSW alone misses matches there.
ACORN_MAX_SELECTIVITY = 0.4
# A filtered list over at most this many points, or this share of the collection, scans them
# exactly instead. 100k products x 512-d, 2 cores: a 5% filter (5,000 points) took 3.2 ms exact
# against 17.4 ms through HNSW with ACORN. 1M products (int8, originals on disk, search ef 1,664):
# the default query under a 5% filter (50,000 points) took 86 ms exact (warm page cache) against
# 537-591 ms with ACORN, whose cost grows with the wider search a larger collection gets.
EXACT_FILTER_MAX_POINTS = 20_000
EXACT_FILTER_MAX_SHARE = 0.1
# Candidates each HNSW search weighs when the collection sets no hnsw_ef, up to EF_BASE_POINTS
# products. 100k clustered products (bench/query_latency.py), recall@10 against exact search: ef
# 128 gave text 0.970, DBSF 0.923, RRF 0.852; ef 256 0.990, 0.965, 0.938; ef 512 1.000, 0.995,
# 0.980, at about twice ef 128's time.
DEFAULT_HNSW_EF = 512
# Beyond that the default grows with the count to the power 0.6 (``default_hnsw_ef``). 1M
# clustered products, int8 with oversampling 2, m 16, 50 query texts: recall@10 of the default
# fused query (DBSF) 0.908 at ef 512, 0.960 at 1,024, 0.980 at 1,536, 0.982 at 2,048 (RRF 0.850 at
# 512, 0.984 at 1,536); the text vector alone 0.966, 0.994 and 1.000 at 512, 1,024 and 2,048. On
# 50 other query texts DBSF got 0.968 at 1,664, so 1M gets 2,048.
EF_BASE_POINTS = 100_000
MAX_DEFAULT_HNSW_EF = 4096
# With int8 quantization, candidates rescored with the originals per hit wanted when the collection
# sets none. 100k clustered products, ef 512: recall@10 of the default fused query 0.957 with 1,
# 0.988 with 2 and with 4 (RRF 0.942, 0.982, 0.982).
DEFAULT_OVERSAMPLING = 2.0
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def add_option_args(parser: argparse.ArgumentParser) -> None:
    """The collection-option flags; each also reads its SHELFSIGHT_* environment variable."""
    group = parser.add_argument_group("collection options (used when the collection is created)")
    group.add_argument("--shards", type=int, default=None, help="shard number on a cluster (SHELFSIGHT_SHARDS)")
    group.add_argument("--replication-factor", type=int, default=None, help="copies of each shard on a cluster")
    group.add_argument("--write-consistency", type=int, default=None, help="replicas that confirm a write")
    group.add_argument("--on-disk-vectors", action="store_true", default=None, help="keep original vectors on disk")
    group.add_argument("--on-disk-payload", action="store_true", default=None, help="keep payloads on disk")
    group.add_argument("--quantization", choices=QUANTIZATIONS, default=None, help="scalar int8 copies of the vectors")
    group.add_argument(
        "--no-rescore", dest="rescore", action="store_false", default=None, help="with quantization: skip rescoring"
    )
    group.add_argument(
        "--oversampling", type=float, default=None, help="with quantization: candidates rescored per hit"
    )
    group.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per product (default 16)")
    group.add_argument("--hnsw-ef-construct", type=int, default=None, help="HNSW build beam (default 100)")
    group.add_argument("--hnsw-ef", type=int, default=None, help="HNSW search beam (default: the engine's)")
    group.add_argument(
        "--hnsw-payload-m",
        type=int,
        default=None,
        help="HNSW links per product among those sharing an indexed field value (default: m; 0 builds faster)",
    )


def _from_env(field: str, value: str) -> Any:
    name = _ENVIRONMENT[field]
    if field in ("on_disk_vectors", "on_disk_payload", "rescore"):
        if value.strip().lower() not in _TRUE + _FALSE:
            raise BadInputError(f"{name}={value!r}: use true or false")
        return value.strip().lower() in _TRUE
    if field == "quantization":
        return value.strip().lower() or None
    if field == "oversampling":
        try:
            return float(value)
        except ValueError as exc:
            raise BadInputError(f"{name}={value!r}: use a number such as 2.0") from exc
    try:
        return int(value)
    except ValueError as exc:
        raise BadInputError(f"{name}={value!r}: use a whole number") from exc


def options_from_args(args: argparse.Namespace) -> CollectionOptions:
    """Flags over the SHELFSIGHT_* environment over the defaults, checked."""
    values: dict[str, Any] = {f: _from_env(f, os.environ[n]) for f, n in _ENVIRONMENT.items() if os.environ.get(n)}
    values.update({f: getattr(args, f) for f in _ENVIRONMENT if getattr(args, f, None) is not None})
    options = CollectionOptions(**values)
    check_options(options)
    return options


def check_options(options: CollectionOptions) -> None:
    for name in CLUSTER_ONLY_OPTIONS:
        value = getattr(options, name)
        if value is not None and value < 1:
            raise BadInputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in _POSITIVE:
        value = getattr(options, name)
        if value is not None and not 1 <= value <= 100_000:
            raise BadInputError(f"--{name.replace('_', '-')} must be a whole number from 1 to 100000, got {value}")
    if options.hnsw_payload_m is not None and not 0 <= options.hnsw_payload_m <= 100_000:
        raise BadInputError(f"--hnsw-payload-m must be a whole number from 0 to 100000, got {options.hnsw_payload_m}")
    if options.oversampling is not None and not 1.0 <= options.oversampling <= 100.0:
        raise BadInputError(f"--oversampling must be from 1 to 100, got {options.oversampling}")
    if options.quantization not in (None, *QUANTIZATIONS):
        raise BadInputError(f"quantization {options.quantization!r} is not supported: use {', '.join(QUANTIZATIONS)}")


def edge_applicable(options: CollectionOptions) -> CollectionOptions:
    """The options the embedded store applies: the cluster-only ones dropped."""
    return replace(options, shards=None, replication_factor=None, write_consistency=None)


def edge_config(meta: CollectionMeta) -> Any:
    """qdrant-edge's shard config for ``meta``: cosine vectors, BM25 words weighted by IDF, on-disk
    storage, int8 quantization."""
    import qdrant_edge as qe

    o = meta.options
    quantization = (
        qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=_INT8_QUANTILE, always_ram=True)
        if o.quantization == "int8"
        else None
    )
    vectors = {
        v: qe.EdgeVectorParams(
            size=meta.dimension,
            distance=qe.Distance.Cosine,
            on_disk=o.on_disk_vectors or None,
            quantization_config=quantization,
        )
        for v in meta.vectors
    }
    sparse = {v: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf) for v in meta.sparse_vectors}
    hnsw = (
        qe.HnswIndexConfig(
            o.hnsw_m or DEFAULT_HNSW_M,
            o.hnsw_ef_construct or DEFAULT_EF_CONSTRUCT,
            FULL_SCAN_THRESHOLD_KB,
            payload_m=o.hnsw_payload_m,
        )
        if o.hnsw_m or o.hnsw_ef_construct or o.hnsw_payload_m is not None
        else None
    )
    return qe.EdgeConfig(
        vectors=vectors, sparse_vectors=sparse or None, on_disk_payload=o.on_disk_payload or None, hnsw_config=hnsw
    )


def server_collection_kwargs(meta: CollectionMeta) -> dict[str, Any]:
    """qdrant-client's ``create_collection`` keywords for ``meta`` (vectors, layout, quantization)."""
    from qdrant_client import models as qm

    o = meta.options
    vectors = {
        v: qm.VectorParams(size=meta.dimension, distance=qm.Distance.COSINE, on_disk=o.on_disk_vectors or None)
        for v in meta.vectors
    }
    quantization = (
        qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=_INT8_QUANTILE, always_ram=True)
        )
        if o.quantization == "int8"
        else None
    )
    sparse = {v: qm.SparseVectorParams(modifier=qm.Modifier.IDF) for v in meta.sparse_vectors}
    return {
        "vectors_config": vectors,
        "sparse_vectors_config": sparse or None,
        "shard_number": o.shards,
        "replication_factor": o.replication_factor,
        "write_consistency_factor": o.write_consistency,
        "on_disk_payload": o.on_disk_payload or None,
        "quantization_config": quantization,
        "hnsw_config": qm.HnswConfigDiff(m=o.hnsw_m, ef_construct=o.hnsw_ef_construct, payload_m=o.hnsw_payload_m)
        if o.hnsw_m or o.hnsw_ef_construct or o.hnsw_payload_m is not None
        else None,
    }


def default_hnsw_ef(points: int) -> int:
    """The search width for a collection of about ``points`` products that sets none: 512 up to
    100k, then 512 * (points / 100k) ** 0.6 in steps of 64 (2,048 at 1M), at most 4,096."""
    scale = float(max(points, EF_BASE_POINTS) / EF_BASE_POINTS) ** 0.6
    return min(MAX_DEFAULT_HNSW_EF, int(math.ceil(DEFAULT_HNSW_EF * scale / 64)) * 64)


def search_params(types: Any, filtered: bool, options: CollectionOptions, points: Callable[[], int]) -> Any:
    """A search's parameters in a client's types (``qdrant_edge`` or ``qdrant_client.models``,
    which spell them alike): the search width (the collection's, else by its size, ``points()``,
    asked only then), ACORN under a filter, rescoring with quantization."""
    quantization = (
        types.QuantizationSearchParams(
            rescore=options.rescore, oversampling=options.oversampling or DEFAULT_OVERSAMPLING
        )
        if options.quantization
        else None
    )
    acorn = types.AcornSearchParams(enable=True, max_selectivity=ACORN_MAX_SELECTIVITY) if filtered else None
    ef = options.hnsw_ef or default_hnsw_ef(points())
    return types.SearchParams(hnsw_ef=ef, acorn=acorn, quantization=quantization)


def exact_params(types: Any) -> Any:
    """An exact (brute-force) search over the original vectors, in a client's types."""
    return types.SearchParams(exact=True, quantization=types.QuantizationSearchParams(ignore=True))
