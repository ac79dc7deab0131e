"""Pure-torch RL algorithm core: no distributed state, no model code.

advantages  outcome advantage estimators (grpo, dr_grpo, psr, nsr, w_reinforce), registry ADVANTAGE_ESTIMATORS
resrl       ResRL token weights and token-wise advantages (docs/algorithm.md §3-6)
subspace    positive subspace fit (exact / gram / randomized SVD) and residual energy
losses      policy losses (registry POLICY_LOSSES), KL, the single aggregation point, ``PolicyLoss`` (the loss
            object the trainer hands to the policy's train_step)
token_batch the per-token training batch (``PerToken``) and the global counts the loss divides by
shaping     length-scaled reward, DAPO overlong penalty and dynamic-sampling filter

What each algorithm is (``AlgorithmSpec``: estimator, ResRL or not, recipe defaults) is plain data in
``nemo_resrl.config.specs``, re-exported here.

The config dataclasses (``ResRLConfig``, ``PolicyLossConfig``, ``AdvantageConfig``) live in the schema
layer, ``nemo_resrl.config``, and are re-exported here.
"""

from nemo_resrl.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    broadcast_to_tokens,
    compute_advantages,
)
from nemo_resrl.algorithms.losses import (
    POLICY_LOSSES,
    PolicyLossConfig,
    aggregate,
    compute_policy_loss,
    kl_penalty,
)
from nemo_resrl.algorithms.resrl import (
    ResRLConfig,
    ResRLStats,
    ResRLWeights,
    compute_resrl_weights,
    group_sample_seed,
    group_skip_reason,
    normalize_hidden,
    quantile_gate,
    resrl_token_advantages,
    sample_row_indices,
    token_advantages,
)
from nemo_resrl.algorithms.shaping import length_scaled_reward, nonzero_variance_groups, overlong_penalty
from nemo_resrl.algorithms.subspace import (
    PositiveSubspace,
    fit_positive_subspace,
    principal_angles,
    residual_energy,
)
from nemo_resrl.algorithms.token_batch import GlobalCounts, local_counts
from nemo_resrl.config.specs import ALGORITHM_SPECS, AlgorithmSpec, algorithm_spec

__all__ = [
    "ALGORITHM_SPECS",
    "AlgorithmSpec",
    "algorithm_spec",
    "ADVANTAGE_ESTIMATORS",
    "AdvantageConfig",
    "broadcast_to_tokens",
    "compute_advantages",
    "POLICY_LOSSES",
    "GlobalCounts",
    "PolicyLossConfig",
    "aggregate",
    "compute_policy_loss",
    "kl_penalty",
    "local_counts",
    "ResRLConfig",
    "ResRLStats",
    "ResRLWeights",
    "compute_resrl_weights",
    "group_sample_seed",
    "group_skip_reason",
    "normalize_hidden",
    "quantile_gate",
    "resrl_token_advantages",
    "sample_row_indices",
    "token_advantages",
    "length_scaled_reward",
    "nonzero_variance_groups",
    "overlong_penalty",
    "PositiveSubspace",
    "fit_positive_subspace",
    "principal_angles",
    "residual_energy",
]
