"""Tests of nemo_resrl.algorithms.metrics (docs/algorithm.md §9): Avg@k, unbiased pass@k, maj@k.

pass@k is checked against brute-force enumeration of all size-k subsets and against exact rational
arithmetic (1 - C(n-c, k) / C(n, k)); maj@k and Avg@k against small plain-python references.
"""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_resrl.algorithms.metrics import avg_at_k, maj_at_k, mean_pass_at_k, pass_at_k


def brute_pass_at_k(n, c, k):
    """Fraction of size-k subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(1 for s in subsets if any(i < c for i in s)), len(subsets))


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def ref_maj(answers, correct, k):
    solved = 0
    for ans, cor in zip(answers, correct):
        counts, first = {}, {}
        for i, a in enumerate(ans[:k]):
            if a is None:
                continue
            counts[a] = counts.get(a, 0) + 1
            first.setdefault(a, i)
        if not counts:
            continue
        best = max(counts.values())
        winner_pos = min(first[a] for a in counts if counts[a] == best)  # first-seen among the tied
        solved += bool(cor[winner_pos])
    return solved / len(answers)


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


def test_mean_pass_at_k():
    counts = [0, 1, 4, 10]
    expected = sum(float(exact_pass_at_k(10, c, 3)) for c in counts) / 4
    assert mean_pass_at_k(counts, 10, 3) == pytest.approx(expected, rel=1e-12)
    ns = [4, 8, 16]
    cs = [1, 0, 16]
    expected = sum(float(exact_pass_at_k(n, c, 2)) for n, c in zip(ns, cs)) / 3
    assert mean_pass_at_k(cs, ns, 2) == pytest.approx(expected, rel=1e-12)
    assert mean_pass_at_k([3], 4, 1) == pytest.approx(0.75)


def test_mean_pass_at_k_bad_args():
    with pytest.raises(ValueError):
        mean_pass_at_k([], 4, 1)
    with pytest.raises(ValueError):
        mean_pass_at_k([1, 2], [4], 1)
    with pytest.raises(ValueError):
        mean_pass_at_k([1, 2], [4, 2], 3)  # k > n for the second problem


# ----------------------------------------------------------------------------------------------------------
# Avg@k
# ----------------------------------------------------------------------------------------------------------
def test_avg_at_k():
    correct = [[True, False, True, True], [False] * 4, [True] * 4]
    assert avg_at_k(correct) == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    # problems with different sample counts: mean of per-problem fractions, not pooled
    assert avg_at_k([[True], [False, False, False]]) == pytest.approx(0.5)
    assert avg_at_k([[1, 0], [0, 0]]) == pytest.approx(0.25)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=16), min_size=1, max_size=8))
def test_avg_at_k_reference(correct):
    expected = sum(Fraction(sum(c), len(c)) for c in correct) / len(correct)
    assert avg_at_k(correct) == pytest.approx(float(expected), rel=1e-12, abs=1e-15)


def test_avg_at_k_bad_args():
    with pytest.raises(ValueError):
        avg_at_k([])
    with pytest.raises(ValueError):
        avg_at_k([[True], []])


# ----------------------------------------------------------------------------------------------------------
# maj@k
# ----------------------------------------------------------------------------------------------------------
def test_maj_at_k_majority_wins():
    answers = [["1", "2", "2", "3"], ["5", "5", "4", "4"]]
    correct = [[False, True, True, False], [True, True, False, False]]
    assert maj_at_k(answers, correct, 4) == 1.0
    # the majority answer is wrong -> not solved even though a correct sample exists
    assert maj_at_k([["7", "7", "8"]], [[False, False, True]], 3) == 0.0


def test_maj_at_k_all_none_counts_as_wrong():
    answers = [[None, None, None], ["a", None, "a"]]
    correct = [[True, True, True], [True, False, True]]  # None verdicts must not matter
    assert maj_at_k(answers, correct, 3) == 0.5


def test_maj_at_k_none_does_not_vote():
    # Two Nones outnumber the single "x" but do not vote.
    assert maj_at_k([[None, "x", None]], [[False, True, False]], 3) == 1.0


def test_maj_at_k_tie_goes_to_first_seen():
    answers = [["b", "a", "a", "b"], ["a", "b", "b", "a"]]
    correct = [[True, False, False, True], [False, True, True, False]]
    # problem 0: a and b tie 2-2, b seen first -> correct; problem 1: a first -> wrong
    assert maj_at_k(answers, correct, 4) == 0.5
    # a None before both does not change who was seen first
    assert maj_at_k([[None, "b", "a"]], [[False, True, False]], 3) == 1.0


def test_maj_at_k_uses_only_first_k():
    answers = [["a", "b", "b", "b"]]
    correct = [[True, False, False, False]]
    assert maj_at_k(answers, correct, 1) == 1.0
    assert maj_at_k(answers, correct, 2) == 1.0  # tie a/b -> a seen first
    assert maj_at_k(answers, correct, 3) == 0.0


def test_maj_at_k_judged_by_winning_answer_first_sample():
    # "a" wins; its first sample (index 1) is correct, its later one is not.
    assert maj_at_k([["z", "a", "a"]], [[False, True, False]], 3) == 1.0
    assert maj_at_k([["z", "a", "a"]], [[False, False, True]], 3) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.integers(1, 8).flatmap(
            lambda k: st.tuples(
                st.lists(st.one_of(st.none(), st.sampled_from("abc")), min_size=k, max_size=k),
                st.lists(st.booleans(), min_size=k, max_size=k),
            )
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(1, 8),
)
def test_maj_at_k_reference(problems, k):
    k = min([k] + [len(a) for a, _ in problems])
    answers = [a for a, _ in problems]
    correct = [c for _, c in problems]
    assert maj_at_k(answers, correct, k) == pytest.approx(ref_maj(answers, correct, k), abs=1e-15)


def test_maj_at_k_bad_args():
    with pytest.raises(ValueError):
        maj_at_k([], [], 1)
    with pytest.raises(ValueError):
        maj_at_k([["a"]], [[True], [False]], 1)
    with pytest.raises(ValueError):
        maj_at_k([["a", "b"]], [[True]], 1)
    with pytest.raises(ValueError):
        maj_at_k([["a", "b"]], [[True, False]], 3)
    with pytest.raises(ValueError):
        maj_at_k([["a", "b"]], [[True, False]], 0)


def test_mean_pass_at_k_accepts_numpy_integers():
    assert mean_pass_at_k([1, 2], np.int64(4), 1) == pytest.approx((0.25 + 0.5) / 2)
