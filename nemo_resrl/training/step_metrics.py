"""A step's metrics, each recorded with how it combines over data-parallel ranks.

A metric is one of:
- ``replicated``: already the same on every rank (the actor's all-reduced loss terms, the ResRL plan's group
  counts, dynamic-sampling counts, the LLD sums): kept as it is;
- ``sum``: a count of this rank's share (responses, grader outcomes): summed over ranks;
- ``mean``: a per-rank value (timings, this rank's mean length): averaged over the ranks that have it;
- ``max``: a per-rank value whose worst rank matters (a phase's memory peak): the largest over ranks;
- ``weighted``: a mean over this rank's ``weight`` items (reward mean over its responses): the
  weighted mean over ranks, i.e. the mean over every item of the step.

Nothing depends on a metric's name: the trainer says which kind each is when it records it.
``reduce_over_ranks`` is a pure function of every rank's ``StepMetrics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

KINDS = ("replicated", "sum", "mean", "max", "weighted")


@dataclass
class StepMetrics:
    """Values, their kinds, and the weights of ``weighted`` ones."""

    values: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def _put(self, kind: str, items: Mapping[str, float], weight: float | None = None) -> None:
        for k, v in items.items():
            self.values[k] = float(v)
            self.kinds[k] = kind
            if weight is not None:
                self.weights[k] = float(weight)

    def replicated(self, items: Mapping[str, float]) -> None:
        """Values identical on every rank."""
        self._put("replicated", items)

    def sum(self, items: Mapping[str, float]) -> None:
        """Counts of this rank's share, summed over ranks."""
        self._put("sum", items)

    def mean(self, items: Mapping[str, float]) -> None:
        """Per-rank values, averaged over ranks."""
        self._put("mean", items)

    def max(self, items: Mapping[str, float]) -> None:
        """Per-rank values, the largest over ranks."""
        self._put("max", items)

    def weighted(self, items: Mapping[str, float], weight: float) -> None:
        """Means over ``weight`` items of this rank, combined as the mean over every rank's items."""
        self._put("weighted", items, weight)

    def local(self) -> dict[str, float]:
        """This rank's values (what a single rank reports)."""
        return dict(self.values)


def reduce_over_ranks(ranks: Sequence[StepMetrics]) -> dict[str, float]:
    """The step's metrics over data-parallel ranks (module docstring). A key only some ranks recorded
    (a grader outcome no other rank saw) reduces over those ranks; ``replicated`` keys take the first rank
    that has them."""
    out: dict[str, float] = {}
    keys: dict[str, None] = {}
    for r in ranks:
        keys.update(dict.fromkeys(r.values))
    for k in keys:
        have = [r for r in ranks if k in r.values]
        kind = have[0].kinds[k]
        if any(r.kinds[k] != kind for r in have):
            raise ValueError(f"metric {k!r} is recorded as different kinds on different ranks")
        vals = [r.values[k] for r in have]
        if kind == "replicated":
            out[k] = vals[0]
        elif kind == "sum":
            out[k] = sum(vals)
        elif kind == "mean":
            out[k] = sum(vals) / len(vals)
        elif kind == "max":
            out[k] = max(vals)
        else:
            w = [r.weights[k] for r in have]
            out[k] = sum(v * x for v, x in zip(vals, w)) / sum(w) if sum(w) > 0 else sum(vals) / len(vals)
    return out
