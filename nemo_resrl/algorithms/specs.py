"""What each algorithm is, in one frozen spec per name: the single source the config and the trainer query.

    spec = algorithm_spec("dapo")
    spec.estimator        # the outcome-advantage estimator (``ADVANTAGE_ESTIMATORS`` key)
    spec.resrl_weights    # whether negative tokens get ResRL weights (docs/algorithm.md §3-6)
    spec.group_normalised # whether the advantage compares responses within a prompt group (needs n >= 2)
    spec.loss             # the recipe's policy-loss settings (``algorithm.loss`` values)
    spec.dynamic_sampling / spec.overlong   # DAPO's extras, on by default for this recipe

``AlgorithmConfig.preset(name)`` builds a config from a spec; ``conf/algorithm/<name>.yaml`` holds the
same values (a test checks that every preset and its spec agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from nemo_resrl.algorithms.registry import Registry

# the PPO-clip recipe every algorithm here starts from (docs/algorithm.md §6)
_PPO_CLIP = {
    "clip_low": 0.2,
    "clip_high": 0.2,
    "dual_clip_c": 3.0,
    "agg": "token-mean",
    "kl_coef": 0.0,
    "entropy_coef": 0.0,
}


@dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm's fixed facts; see the module docstring."""

    name: str
    estimator: str
    resrl_weights: bool
    group_normalised: bool
    loss: Mapping[str, object] = field(default_factory=lambda: MappingProxyType(dict(_PPO_CLIP)))
    dynamic_sampling: bool = False
    overlong: bool = False
    summary: str = ""


ALGORITHM_SPECS: Registry[AlgorithmSpec] = Registry("algorithm")


def _add(spec: AlgorithmSpec) -> None:
    ALGORITHM_SPECS.add(spec.name, spec)


def _loss(**changes) -> Mapping[str, object]:
    return MappingProxyType({**_PPO_CLIP, **changes})


_add(AlgorithmSpec("grpo", "grpo", False, True, summary="group-normalised advantages, every token weight 1"))
_add(AlgorithmSpec("dr_grpo", "dr_grpo", False, True, summary="r - mean_g, no std division"))
_add(AlgorithmSpec("psr", "psr", False, False, summary="train on correct responses only, A = +1"))
_add(AlgorithmSpec("nsr", "nsr", False, False, summary="train on incorrect responses only, A = -1"))
_add(AlgorithmSpec("w_reinforce", "w_reinforce", False, False, summary="correct lambda, incorrect -1"))
_add(
    AlgorithmSpec(
        "dapo",
        "grpo",
        False,
        True,
        loss=_loss(clip_high=0.28),
        dynamic_sampling=True,
        overlong=True,
        summary="clip-higher 0.2 / 0.28, dynamic sampling, overlong shaping",
    )
)
_add(
    AlgorithmSpec(
        "resrl",
        "grpo",
        True,
        True,
        summary="GRPO with negative tokens weighted by their positive-subspace residual",
    )
)


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The spec of ``name``; ``KeyError`` naming the registered ones if unknown."""
    return ALGORITHM_SPECS.get(name)
