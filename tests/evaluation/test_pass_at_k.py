"""Tests of the unbiased pass@k (docs/algorithm.md §9) against brute-force enumeration of all size-k
subsets and exact rational arithmetic (1 - C(n-c, k) / C(n, k))."""

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_resrl.evaluation.metrics import pass_at_k


def brute_pass_at_k(n, c, k):
    """Fraction of size-k subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(1 for s in subsets if any(i < c for i in s)), len(subsets))


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


# ----------------------------------------------------------------------------------------------------------
# pass@k
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (2, 1, 1, 0.5),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 0, 3, 0.0),
        (5, 5, 1, 1.0),
        (10, 3, 1, 0.3),  # pass@1 = c / n
        (10, 3, 8, 1.0),  # n - c < k
        (10, 3, 7, 1.0 - 1 / 120),  # C(7,7)/C(10,7) = 1/120
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 10).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_brute_force(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(n, c, k)), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize(
    "n,c,k", [(1000, 10, 100), (256, 1, 128), (256, 3, 1), (512, 500, 13), (300, 0, 300)]
)
def test_pass_at_k_large_n_exact(n, c, k):
    v = pass_at_k(n, c, k)
    assert math.isfinite(v) and 0.0 <= v <= 1.0
    assert v == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-12, abs=1e-14)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(2, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(1, n - 1)))
)
def test_pass_at_k_monotone(nck):
    n, c, k = nck
    v = pass_at_k(n, c, k)
    assert pass_at_k(n, c, k + 1) >= v - 1e-12
    assert pass_at_k(n, c + 1, k) >= v - 1e-12


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5, 2, -1)])
def test_pass_at_k_bad_args(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
