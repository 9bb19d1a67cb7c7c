"""The multi-index Hamming search returns exactly the pairs that comparing all pairs returns."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image_learner.data.hamming_index import chunk_plan, radius_pairs


def _brute_force(database, queries, radius):
    dist = np.bitwise_count(queries[:, None, :] ^ database[None, :, :]).sum(axis=2)
    return set(zip(*map(np.ndarray.tolist, np.nonzero(dist <= radius))))


def _near_copies(rng, source, n, max_flips, words):
    """``n`` rows, each a row of ``source`` with 0..max_flips random bits flipped."""
    rows = source[rng.integers(0, len(source), n)].copy()
    for row in rows:
        for bit in rng.choice(64 * words, rng.integers(0, max_flips + 1), replace=False):
            row[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    return rows


@pytest.mark.parametrize("radius", [0, 1, 5, 20, 21, 22, 33, 40])
def test_every_pair_within_the_radius_is_found_and_nothing_else(radius):
    rng = np.random.default_rng(radius)
    database = rng.integers(0, 2**64, size=(1500, 4), dtype=np.uint64, endpoint=False)
    queries = np.concatenate([_near_copies(rng, database, 400, 48, 4),
                              rng.integers(0, 2**64, size=(100, 4), dtype=np.uint64, endpoint=False)])
    q, d = radius_pairs(database, queries, radius, batch=50)  # small batches: the batching is exercised too
    assert set(zip(q.tolist(), d.tolist())) == _brute_force(database, queries, radius)
    assert len(set(zip(q.tolist(), d.tolist()))) == len(q)  # each pair once


def test_skewed_data_with_many_identical_strings_stays_exact():
    """Hundreds of identical strings (every flat image hashes to zero) put them all in one bucket."""
    rng = np.random.default_rng(3)
    zeros = np.zeros((1, 4), np.uint64)
    database = np.concatenate([np.repeat(zeros, 300, axis=0), _near_copies(rng, zeros, 200, 30, 4),
                               rng.integers(0, 2**64, size=(300, 4), dtype=np.uint64, endpoint=False)])
    q, d = radius_pairs(database, database, 20, batch=1000)
    assert set(zip(q.tolist(), d.tolist())) == _brute_force(database, database, 20)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_any_radius_and_width(radius, words, seed):
    rng = np.random.default_rng(seed)
    database = rng.integers(0, 2**64, size=(120, words), dtype=np.uint64, endpoint=False)
    queries = _near_copies(rng, database, 60, min(radius + 6, 64 * words), words)
    q, d = radius_pairs(database, queries, radius, batch=17)
    assert set(zip(q.tolist(), d.tolist())) == _brute_force(database, queries, radius)


@pytest.mark.parametrize("radius", range(0, 64))
def test_chunk_plan_is_exact_by_pigeonhole(radius):
    chunks, bits = chunk_plan(radius, 256)
    assert chunks * bits <= 256
    assert 2 * chunks > radius  # some chunk differs in at most one bit, which the probes cover
