"""pass@k and maj@k against brute-force enumeration of every k-subset; the Monte-Carlo maj@k against the
exact one."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from nemo_resrl.evaluation.metrics import avg_at_n, expected_maj_at_k, ks_for, normalise_answer, pass_at_k


def _brute_pass(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def _brute_maj(answers, correct, k) -> float:
    """Every k-subset; ties broken uniformly at random (expected value); no answers -> 0."""
    ok = {}
    for a, c in zip(answers, correct):
        if a is not None:
            ok.setdefault(a, []).append(c)
    ok = {a: sum(v) * 2 > len(v) for a, v in ok.items()}
    total, subsets = 0.0, list(itertools.combinations(range(len(answers)), k))
    for s in subsets:
        votes = {}
        for i in s:
            if answers[i] is not None:
                votes[answers[i]] = votes.get(answers[i], 0) + 1
        if votes:
            top = max(votes.values())
            winners = [a for a, v in votes.items() if v == top]
            total += sum(ok[a] for a in winners) / len(winners)
    return total / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force_for_every_c_and_k(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_pass(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 8, 3) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    v = pass_at_k(1024, 5, 512)  # C(1024, 512) overflows a float: the product form must not
    assert v == pytest.approx(1 - math.comb(1019, 512) / math.comb(1024, 512), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)


def test_ks_and_avg():
    assert ks_for(1) == [1] and ks_for(8) == [1, 2, 4, 8] and ks_for(12) == [1, 2, 4, 8, 12]
    assert avg_at_n([True, False, False, True]) == 0.5


CASES = [
    (["1", "1", "2", None, "2", "3"], [True, True, False, False, False, False]),  # ties between 1 and 2
    (["a", "b", "c", "d"], [False, True, False, False]),  # all distinct: ties everywhere
    ([None, None, "x", None], [False, False, True, False]),  # subsets without answers score 0
    (["5"] * 3 + ["6"] * 3, [True] * 3 + [False] * 3),
]


@pytest.mark.parametrize("answers,correct", CASES)
def test_maj_at_k_equals_brute_force(answers, correct):
    for k in range(1, len(answers) + 1):
        got, method = expected_maj_at_k(answers, correct, k)
        assert method == "exact" and got == pytest.approx(_brute_maj(answers, correct, k), abs=1e-12), k


def test_maj_at_k_random_cases_equal_brute_force():
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 9)
        answers = [rng.choice(["p", "q", "r", None]) for _ in range(n)]
        truth = rng.choice(["p", "q", "r"])
        correct = [a == truth for a in answers]
        k = rng.randint(1, n)
        assert expected_maj_at_k(answers, correct, k)[0] == pytest.approx(
            _brute_maj(answers, correct, k), abs=1e-12
        )


def test_monte_carlo_path_agrees_with_the_exact_value():
    rng = random.Random(1)
    answers = [rng.choice(["1", "2", "3", "4", None]) for _ in range(14)]
    correct = [a == "2" for a in answers]
    exact, m1 = expected_maj_at_k(answers, correct, 7)
    approx, m2 = expected_maj_at_k(answers, correct, 7, max_states=1, mc_draws=20000, seed=3)
    assert (m1, m2) == ("exact", "monte_carlo") and approx == pytest.approx(exact, abs=0.015)


def test_answers_normalise_whitespace():
    assert normalise_answer(" \\frac {1}{2} ") == normalise_answer("\\frac{1}{2}") == "\\frac{1}{2}"
    assert normalise_answer("  ") is None and normalise_answer(None) is None
