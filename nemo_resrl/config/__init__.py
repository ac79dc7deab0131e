"""The configuration schema: every typed section of a run, and nothing that runs.

Importing this package (and loading / validating any shipped config) imports neither megatron, vLLM nor
transformers, so ``nemo-resrl train --print-config`` and a config error are instant, and tools such as a
planner can read a config without the training stack.

    actor.py      ActorConfig (+ OptimConfig)        actor / actor.optim
    rollout.py    RolloutConfig (+ SamplingConfig)   rollout / rollout.sampling
    algorithm.py  AlgorithmConfig and its parts      algorithm, algorithm.{advantage,loss,resrl,...}
    data.py       DataConfig                         data
    run.py        RunConfig (+ trainer, reward, checkpoint, logging) and the cross-section rules
    cluster.py    ClusterConfig                      cluster (nemo-resrl plan)
    eval.py       EvalConfig (nemo-resrl eval)
    keys.py       ConfigError and the key paths errors name
    loader.py     load_config / load_eval_config: Hydra composition, --config-dir, validation

Each field carries its docstring on the line below it (as megatron-core's configs do).
"""

from nemo_resrl.config.actor import (
    ActorConfig,
    ActorConfigError,
    ArchConfig,
    MoEConfig,
    OffloadConfig,
    OptimConfig,
)
from nemo_resrl.config.algorithm import (
    AdvantageConfig,
    AlgorithmConfig,
    DynamicSamplingConfig,
    OverlongConfig,
    PolicyLossConfig,
    ResRLConfig,
)
from nemo_resrl.config.cluster import ClusterConfig
from nemo_resrl.config.data import DataConfig
from nemo_resrl.config.eval import EvalConfig
from nemo_resrl.config.keys import ConfigError, Keys
from nemo_resrl.config.loader import CONF_DIR, load_config, load_eval_config
from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
from nemo_resrl.config.run import CheckpointConfig, LoggingConfig, RewardConfig, RunConfig, TrainerConfig

__all__ = [
    "ActorConfig",
    "ActorConfigError",
    "AdvantageConfig",
    "AlgorithmConfig",
    "ArchConfig",
    "CONF_DIR",
    "CheckpointConfig",
    "ClusterConfig",
    "ConfigError",
    "DataConfig",
    "DynamicSamplingConfig",
    "EvalConfig",
    "Keys",
    "LoggingConfig",
    "MoEConfig",
    "OffloadConfig",
    "OptimConfig",
    "OverlongConfig",
    "PolicyLossConfig",
    "ResRLConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "SamplingConfig",
    "TrainerConfig",
    "load_config",
    "load_eval_config",
]
