"""What each algorithm is, in one frozen spec per name: the single source the config and the trainer query.

    spec = algorithm_spec("dapo")
    spec.estimator        # the outcome-advantage estimator (``ADVANTAGE_ESTIMATORS`` key)
    spec.resrl_weights    # whether negative tokens get ResRL weights (docs/algorithm.md §3-6)
    spec.group_normalised # whether the advantage compares responses within a prompt group (needs n >= 2)
    spec.trains_on        # all | correct | incorrect: the responses the loss covers (and normalises over)
    spec.loss             # the recipe's policy-loss settings (``algorithm.loss`` values)
    spec.dynamic_sampling / spec.overlong   # DAPO's extras, on by default for this recipe

``AlgorithmConfig.preset(name)`` builds a config from a spec; ``conf/algorithm/<name>.yaml`` holds the
same values (a test checks that every preset and its spec agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from nemo_resrl.common.registry import Registry

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
    trains_on: str = "all"
    reward: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    """``reward.*`` values the preset sets (the recipe's reward; the other algorithms keep the grader's)."""
    summary: str = ""
    reference: str = ""
    """The code whose loss the preset reproduces (tests/training/test_recipes.py checks it)."""


ALGORITHM_SPECS: Registry[AlgorithmSpec] = Registry("algorithm")

# The names config strings may use for the function registries of ``nemo_resrl.algorithms`` (which holds the
# functions): the config layer validates against these without importing torch code. The built-in ones are
# listed here (tests/algorithms check that both agree); registering a new estimator or loss in
# ``nemo_resrl.algorithms`` adds its name.
ADVANTAGE_ESTIMATOR_NAMES: set[str] = {"dr_grpo", "grpo", "nsr", "psr", "rloo", "w_reinforce"}
POLICY_LOSS_NAMES: set[str] = {"ppo_clip"}


def _add(spec: AlgorithmSpec) -> None:
    ALGORITHM_SPECS.add(spec.name, spec)


def _loss(**changes) -> Mapping[str, object]:
    return MappingProxyType({**_PPO_CLIP, **changes})


# the NSR paper's code (RLVR-Decomposed, verl 0.3-based): PPO clip without dual clip, token-mean, an
# entropy bonus of 0.001, no KL; PSR and NSR update on the subset of responses they train on
_RLVR_DECOMPOSED = _loss(dual_clip_c=None, entropy_coef=0.001)

_add(
    AlgorithmSpec(
        "grpo",
        "grpo",
        False,
        True,
        summary="group-normalised advantages, every token weight 1",
        reference="verl core_algos: grpo advantage, vanilla policy loss, token-mean",
    )
)
_add(
    AlgorithmSpec(
        "dr_grpo",
        "dr_grpo",
        False,
        True,
        loss=_loss(agg="seq-mean-token-sum-norm"),
        summary="r - mean_g, no std division; token sums over a constant (the generation budget)",
        reference="verl's Dr.GRPO recipe: norm_adv_by_std_in_grpo=False, seq-mean-token-sum-norm",
    )
)
_add(
    AlgorithmSpec(
        "rloo",
        "rloo",
        False,
        True,
        summary="leave-one-out baseline: r_i - mean of the group's other rewards",
        reference="verl core_algos: rloo advantage (size-1 groups 0, as rloo_vectorized), vanilla loss",
    )
)
_add(
    AlgorithmSpec(
        "psr",
        "psr",
        False,
        False,
        loss=_RLVR_DECOMPOSED,
        trains_on="correct",
        summary="train on correct responses only, A = +1",
        reference="RLVR-Decomposed: batch.subset(correct) then A = +1",
    )
)
_add(
    AlgorithmSpec(
        "nsr",
        "nsr",
        False,
        False,
        loss=_RLVR_DECOMPOSED,
        trains_on="incorrect",
        summary="train on incorrect responses only, A = -1",
        reference="RLVR-Decomposed: batch.subset(incorrect) then A = -1",
    )
)
_add(
    AlgorithmSpec(
        "w_reinforce",
        "w_reinforce",
        False,
        False,
        loss=_RLVR_DECOMPOSED,
        summary="correct lambda, incorrect -1",
        reference="RLVR-Decomposed: A = +lambda / -1 on the whole batch",
    )
)
_add(
    AlgorithmSpec(
        "dapo",
        "grpo",
        False,
        True,
        loss=_loss(clip_high=0.28),
        dynamic_sampling=True,
        overlong=True,
        reward=MappingProxyType({"incorrect": -1.0}),
        summary="clip-higher 0.2 / 0.28, dynamic sampling, overlong shaping, rewards +1 / -1",
        reference="verl's DAPO recipe: clip 0.2 / 0.28, token-mean, dynamic sampling, overlong buffer",
    )
)
_add(
    AlgorithmSpec(
        "resrl",
        "grpo",
        True,
        True,
        reward=MappingProxyType({"incorrect": -1.0, "shaping": "length_scaled"}),
        summary="GRPO with negative tokens weighted by their positive-subspace residual",
        reference="the released ResRL code (verl 0.5 dp_actor): dual clip 3, token-mean, positives by score",
    )
)


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The spec of ``name``; ``KeyError`` naming the registered ones if unknown."""
    return ALGORITHM_SPECS.get(name)
