"""The raw vector store: random access by id across chunk files."""
from __future__ import annotations

import numpy as np
import pytest

from dinoret.indexer.vectors import VectorStore, write_chunk


def _chunks(tmp_path, sizes, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    rows, first = [], 0
    for n in sizes:
        block = rng.standard_normal((n, dim)).astype(np.float16)
        write_chunk(tmp_path, first, block)
        rows.append(block)
        first += n
    return np.concatenate(rows)


def test_get_gathers_any_order_and_repeats_across_chunks(tmp_path):
    stored = _chunks(tmp_path, [5, 1, 7, 4])
    store = VectorStore(tmp_path)
    ids = np.array([16, 0, 5, 5, 12, 3, 6, 16, 1, 11])
    raw = store.get(ids, normalise=False)
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(raw, stored[ids].astype(np.float32))
    unit = store.get(ids)
    expect = stored[ids].astype(np.float32)
    np.testing.assert_allclose(unit, expect / np.linalg.norm(expect, axis=1, keepdims=True), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(store.get_float16(ids), stored[ids])
    assert store.get([]).shape == (0, 8)


def test_get_refuses_ids_never_stored_and_sees_later_chunks(tmp_path):
    stored = _chunks(tmp_path, [4, 4])
    store = VectorStore(tmp_path)
    with pytest.raises(KeyError):
        store.get([2, 8])
    more = np.ones((3, 8), np.float16)
    write_chunk(tmp_path, 8, more)  # committed after the store was opened
    np.testing.assert_array_equal(store.get([9, 1], normalise=False), np.vstack([more[1], stored[1]]).astype(np.float32))
    with pytest.raises(KeyError):
        store.get([11])
