"""nemo_resrl: ResRL (residual-subspace token weighting for RLVR) as a megatron-core plugin.

Subpackages:
    algorithms   pure torch math (advantages, ResRL weights, losses, reward shaping, metrics)
    distributed  cross-rank parts of ResRL and loss normalisation
    models       the Megatron actor
    rollout      vLLM generation and refit
    rewards      verifiable rewards
    data         prompt datasets
    compat       CPU-only patches for megatron-core / megatron-bridge / gloo
"""

__version__ = "0.1.0"
