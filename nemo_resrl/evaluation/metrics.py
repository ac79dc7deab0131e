"""Evaluation metrics of n sampled responses per problem, as pure functions.

- ``avg_at_n``: mean correctness over all n samples (Avg@n).
- ``pass_at_k`` (docs/algorithm.md §9): the unbiased estimator of
  Chen et al. (2021), 1 - C(n-c, k) / C(n, k), computed as a product (no overflow for large n).
- ``expected_maj_at_k``: the EXPECTED accuracy of majority voting over a uniformly random k-subset of the n
  samples. Answers are grouped into classes by their (normalised) extracted answer; a sample with no
  answer never votes; a tie between classes is broken uniformly at random (a tie between a correct and a
  wrong class counts 1/2); a subset with no answer at all scores 0. Computed exactly by a dynamic
  programme over the classes (hypergeometric counts); when that programme would grow past
  ``max_states`` states the value is a seeded Monte-Carlo estimate over ``mc_draws`` random subsets,
  and the method is reported.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

from nemo_resrl.common import require


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples of which ``c`` are correct:
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k / i) (no overflow)."""
    require(n >= 1 and 0 <= c <= n, f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    require(1 <= k <= n, f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def ks_for(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself when it is not a power of two."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return ks if ks[-1] == n else [*ks, n]


def avg_at_n(correct: Sequence[bool]) -> float:
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def answer_classes(
    answers: Sequence[str | None], correct: Sequence[bool]
) -> tuple[list[tuple[int, bool]], int]:
    """Group samples by answer: ([(count, class is correct)], samples without an answer). A class is
    correct when most of its members were graded correct (they share one answer, so normally all)."""
    members: dict[str, list[bool]] = defaultdict(list)
    none = 0
    for a, c in zip(answers, correct, strict=True):
        if a is None:
            none += 1
        else:
            members[a].append(bool(c))
    return {a: (len(v), sum(v) * 2 > len(v)) for a, v in members.items()}, none


def _maj_exact(classes: list[tuple[int, bool]], none: int, k: int, max_states: int) -> float | None:
    """Exact expected majority accuracy, or None when the state space grows past ``max_states``."""
    n = none + sum(c for c, _ in classes)
    # state: (samples used, top count, classes at the top count, correct classes among them) -> weight
    states: dict[tuple[int, int, int, int], int] = {(0, 0, 0, 0): 1}
    for count, ok in [*classes, (none, None)]:
        new: dict[tuple[int, int, int, int], int] = defaultdict(int)
        for (used, top, tied, tied_ok), w in states.items():
            for x in range(0, min(count, k - used) + 1):
                w2 = w * math.comb(count, x)
                if ok is None or x == 0 or x < top:  # no-answer samples never vote
                    key = (used + x, top, tied, tied_ok)
                elif x == top:
                    key = (used + x, top, tied + 1, tied_ok + int(ok))
                else:
                    key = (used + x, x, 1, int(ok))
                new[key] += w2
        states = new
        if len(states) > max_states:
            return None
    total = sum(w * ok / tied for (used, top, tied, ok), w in states.items() if used == k and top > 0)
    return total / math.comb(n, k)


def _maj_monte_carlo(
    answers: Sequence[str | None], cls_ok: dict[str, bool], k: int, draws: int, seed: int
) -> float:
    rng = random.Random(seed)
    idx = list(range(len(answers)))
    score = 0.0
    for _ in range(draws):
        votes: dict[str, int] = defaultdict(int)
        for i in rng.sample(idx, k):
            if answers[i] is not None:
                votes[answers[i]] += 1
        if votes:
            top = max(votes.values())
            winners = [a for a, v in votes.items() if v == top]
            score += sum(cls_ok[a] for a in winners) / len(winners)
    return score / draws


def expected_maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    k: int,
    *,
    max_states: int = 200_000,
    mc_draws: int = 2000,
    seed: int = 0,
) -> tuple[float, str]:
    """(maj@k, method) for one problem's samples; method is ``exact`` or ``monte_carlo``."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k} n={n}")
    classes, none = answer_classes(answers, correct)
    exact = _maj_exact(list(classes.values()), none, k, max_states)
    if exact is not None:
        return exact, "exact"
    cls_ok = {a: ok for a, (_, ok) in classes.items()}
    return _maj_monte_carlo(answers, cls_ok, k, mc_draws, seed), "monte_carlo"


def normalise_answer(answer: str | None) -> str | None:
    """The voting key of an extracted answer: whitespace removed (``\\frac{1}{2}`` == ``\\frac {1}{2}``)."""
    if answer is None:
        return None
    key = "".join(answer.split())
    return key or None


__all__ = ["answer_classes", "avg_at_n", "expected_maj_at_k", "ks_for", "normalise_answer", "pass_at_k"]
