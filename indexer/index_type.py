"""Choosing the Faiss index for a collection of N vectors of dimension D.

* ``flat``: exact inner product (``IDMap,Flat``) while N is small: exact, no training,
  a few milliseconds per query up to ~50k vectors, 4·D bytes of RAM per vector.
* ``ivfpq``: ``IVF<nlist>,PQ<m>x4fs`` past that. nlist follows the usual rule (the Faiss
  wiki's "Guidelines to choose an index", as autofaiss applies it): the power of two
  nearest 4·sqrt(N), with at least 39 training points per list. The code is 4-bit
  fast-scan PQ (SIMD lookup tables: fast queries), with ``m`` the largest divisor of D
  whose code plus the 8-byte id fits the RAM budget per vector. Results are re-ranked
  with exact cosine from the stored float16 vectors, which recovers what PQ loses
  (``RERANK_CANDIDATES``).
  OPQ is not used: its training costs minutes even on 20k vectors on two cores, and the
  re-ranking already restores the order.

A trained index is kept while the collection grows or shrinks within a factor of about
four (``keep_current``), so adding a few files never forces a retraining.
"""
from __future__ import annotations

from math import log2, sqrt

from dinoret.indexer.coarse import uses_two_levels

FLAT_MAX = 50_000  # above this many vectors the exact index becomes slow and large
RAM_BYTES_PER_VECTOR = 64  # budget for the in-memory index: PQ code + 8-byte id
# PQ candidates per query re-scored exactly (at least 4k). 4-bit PQ alone orders close
# neighbours poorly (recall@10 ~0.3 without re-ranking on the benchmark data); 100
# candidates recovered ~0.93 of the true top 10, 300 recovered all of them.
RERANK_CANDIDATES = 300
MIN_POINTS_PER_LIST = 39  # Faiss warns below this many training points per centroid
TRAIN_POINTS_PER_LIST = 40  # k-means cost grows with this; Faiss asks for >= 39
INDEX_TYPES = ("auto", "flat", "ivfpq")


def _pow2_at_most(x: float) -> int:
    return 1 << max(0, int(log2(max(1.0, x))))


def choose_nlist(n: int) -> int:
    ideal = 2 ** round(log2(max(1.0, 4 * sqrt(n))))
    return max(1, min(ideal, _pow2_at_most(n / MIN_POINTS_PER_LIST)))


def choose_m(dim: int, ram_bytes_per_vector: int = RAM_BYTES_PER_VECTOR) -> int:
    """Sub-quantizers: 4 bits each, at least 2 dimensions each, an even number (fast-scan packs pairs)."""
    code_bytes = max(1, ram_bytes_per_vector - 8)
    fits = [m for m in range(2, dim // 2 + 1, 2) if dim % m == 0 and m / 2 <= code_bytes]
    if not fits:
        raise ValueError(f"no PQ size fits dimension {dim} in {ram_bytes_per_vector} bytes per vector")
    return max(fits)


def choose_nprobe(nlist: int) -> int:
    """Lists probed per query. Up to 4,096 lists (1M vectors) the probed lists held the true
    top 10 already at sqrt(nlist)/1.4 on the benchmark data; twice sqrt(nlist) leaves margin.
    From the two-level sizes on, one list in 16: at 10M vectors (16,384 lists) 2·sqrt(nlist)
    = 256 probes found recall@10 0.90 only, 768 reached 0.95 and 1,024 0.96 at a p50 of
    6.4 ms (README benchmark table)."""
    if uses_two_levels(nlist):
        return max(1, nlist // 16)
    return max(1, min(nlist, 2 * round(sqrt(nlist))))


def search_spec(params: dict, index_type: str | None) -> dict:
    """The stored index ``params`` with this version's search settings. nprobe is not part
    of the trained index (any value searches the same lists), so an index built under an
    older rule is searched with the current one; the nested quantizer of before keeps its
    own pair of settings."""
    if index_type != "ivfpq" or "nlist" not in params or "quantizer_nprobe" in params:
        return params
    return dict(params, nprobe=choose_nprobe(int(params["nlist"])))


def flat_spec() -> dict:
    return {"type": "flat", "factory": "IDMap,Flat"}


def ivfpq_spec(n: int, dim: int, ram_bytes_per_vector: int = RAM_BYTES_PER_VECTOR) -> dict:
    nlist = choose_nlist(n)
    m = choose_m(dim, ram_bytes_per_vector)
    nprobe = choose_nprobe(nlist)
    spec = {
        "type": "ivfpq",
        "factory": f"IVF{nlist},PQ{m}x4fs",
        "nlist": nlist,
        "m": m,
        "nprobe": nprobe,
        "rerank_candidates": RERANK_CANDIDATES,
        "train_size": min(n, TRAIN_POINTS_PER_LIST * nlist),
        "trained_for": n,
    }
    if uses_two_levels(nlist):
        # Past ~3M vectors a flat k-means over nlist centroids costs hours on a small CPU:
        # the centroids come from two-level k-means (dinoret.indexer.coarse); the quantizer
        # stays flat, so every vector goes to its exact nearest list.
        spec["coarse_training"] = "two_level"
    return spec


def keep_current(current: dict | None, n: int, forced: str = "auto", flat_max: int = FLAT_MAX) -> bool:
    """Whether the index type in use still suits ``n`` vectors (hysteresis against flapping)."""
    if not current or current.get("type") not in ("flat", "ivfpq"):
        return False
    if "quantizer_nprobe" in current:
        # The IVF-Flat ("nested") quantizer of before put 42% of vectors in a list other than
        # their nearest at 10M and capped recall@10 at 0.71-0.74 (README): rebuild the index
        # from the stored vectors with a flat quantizer.
        return False
    if forced != "auto":
        return current["type"] == forced and (forced == "flat" or _nlist_still_fits(current, n))
    if current["type"] == "flat":
        return n <= flat_max
    return n > flat_max // 2 and _nlist_still_fits(current, n)


def _nlist_still_fits(current: dict, n: int) -> bool:
    ratio = choose_nlist(n) / current["nlist"]
    return 0.5 <= ratio <= 2 and current["nlist"] <= max(1, n)


def choose_index(n: int, dim: int, current: dict | None = None, forced: str = "auto",
                 flat_max: int = FLAT_MAX, ram_bytes_per_vector: int = RAM_BYTES_PER_VECTOR) -> dict:
    """The index spec for ``n`` vectors: ``current`` if it still suits, else a new one.

    ``forced``: "flat" or "ivfpq" to override the size rule (tests, benchmarks, users who know)."""
    if forced not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, not {forced!r}")
    if keep_current(current, n, forced, flat_max):
        return current
    kind = forced if forced != "auto" else ("flat" if n <= flat_max else "ivfpq")
    return flat_spec() if kind == "flat" else ivfpq_spec(n, dim, ram_bytes_per_vector)
