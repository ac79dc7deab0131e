"""The run configuration: one typed schema, loaded from the Hydra configs in ``conf/`` with overrides,
validated before any model is built. A bad key or value gets a ``ConfigError`` naming it.

``load_config(overrides)`` composes ``conf/config.yaml`` (groups ``algorithm``, ``model``,
``precision``) with command-line style overrides (``algorithm=grpo trainer.steps=20``), merges the
result into the dataclass schema (unknown keys and wrong types are refused by OmegaConf's structured
configs) and runs every section's ``validate()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_resrl.algorithms.checks import require
from nemo_resrl.data.prompts import DataConfig
from nemo_resrl.models.config import ActorConfig
from nemo_resrl.rollout.config import RolloutConfig
from nemo_resrl.trainer import AlgorithmConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A configuration key or value that cannot run; the message names the key."""


@dataclass
class RewardConfig:
    """name: math (math-verify on the last boxed answer) | reasoning_gym (the task's own scorer).
    Grading runs in ``workers`` processes with a per-answer ``timeout_s``; crashes and timeouts score 0
    and are counted."""

    name: str = "reasoning_gym"
    workers: int = 2
    timeout_s: float = 5.0

    def validate(self) -> RewardConfig:
        require(
            self.name in ("math", "reasoning_gym"),
            f"reward.name must be math or reasoning_gym, got {self.name!r}",
        )
        require(self.workers >= 1, f"reward.workers must be >= 1, got {self.workers}")
        require(self.timeout_s > 0, f"reward.timeout_s must be > 0, got {self.timeout_s}")
        return self


@dataclass
class TrainerConfig:
    """steps: RL steps; prompts_per_step (each sampled rollout.sampling.n times); mini_batches: updates
    per step; eval_every: steps between greedy evaluations on ``eval_prompts`` held-out prompts (0:
    never; reasoning-gym: generated with another seed, files: ``data.eval_path``); lld_every: steps
    between measurements of the positive log-likelihood displacement (0: never)."""

    steps: int = 10
    prompts_per_step: int = 8
    mini_batches: int = 1
    seed: int = 0
    eval_every: int = 0
    eval_prompts: int = 32
    lld_every: int = 1

    def validate(self) -> TrainerConfig:
        require(self.steps >= 1, f"trainer.steps must be >= 1, got {self.steps}")
        require(
            self.prompts_per_step >= 1, f"trainer.prompts_per_step must be >= 1, got {self.prompts_per_step}"
        )
        require(self.mini_batches >= 1, f"trainer.mini_batches must be >= 1, got {self.mini_batches}")
        require(self.eval_every >= 0, f"trainer.eval_every must be >= 0, got {self.eval_every}")
        require(self.eval_prompts >= 1, f"trainer.eval_prompts must be >= 1, got {self.eval_prompts}")
        require(self.lld_every >= 0, f"trainer.lld_every must be >= 0, got {self.lld_every}")
        return self


@dataclass
class CheckpointConfig:
    """Every ``every`` steps (0: never) into ``<run dir>/checkpoints``, keeping the last ``keep_last``;
    ``resume``: continue from the latest complete checkpoint if there is one."""

    every: int = 5
    keep_last: int = 2
    resume: bool = True

    def validate(self) -> CheckpointConfig:
        require(self.every >= 0, f"checkpoint.every must be >= 0, got {self.every}")
        require(self.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {self.keep_last}")
        return self


@dataclass
class LoggingConfig:
    """The metrics jsonl is always written; TensorBoard and Weights & Biases when enabled."""

    run_dir: str = "runs/default"
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "nemo_resrl"
    progress: bool = True

    def validate(self) -> LoggingConfig:
        require(bool(self.run_dir), "logging.run_dir must not be empty")
        return self


@dataclass
class RunConfig:
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> RunConfig:
        """Every section, plus the rules that span sections."""
        self.actor.validate()
        for section in (self.rollout, self.algorithm, self.trainer, self.data, self.reward, self.checkpoint):
            section.validate()
        self.logging.validate()
        require(
            self.rollout.tensor_parallel == self.actor.tensor_parallel,
            f"rollout.tensor_parallel ({self.rollout.tensor_parallel}) must equal actor.tensor_parallel "
            f"({self.actor.tensor_parallel}): the engine runs colocated in the actor's ranks",
        )
        require(
            self.rollout.sampling.n >= 2 or self.algorithm.name in ("psr", "nsr", "w_reinforce"),
            f"rollout.sampling.n must be >= 2 for group-normalised algorithms ({self.algorithm.name})",
        )
        sampling = self.rollout.sampling
        require(
            sampling.temperature > 0,
            f"rollout.sampling.temperature must be > 0 for training, got {sampling.temperature}",
        )
        require(
            self.data.max_prompt_tokens + sampling.max_tokens <= self.rollout.max_model_len,
            f"data.max_prompt_tokens ({self.data.max_prompt_tokens}) + rollout.sampling.max_tokens "
            f"({sampling.max_tokens}) must be <= rollout.max_model_len ({self.rollout.max_model_len})",
        )
        require(
            self.reward.name != "reasoning_gym" or self.data.source == "reasoning_gym",
            "reward.name=reasoning_gym grades with the task's own scorer and needs "
            "data.source=reasoning_gym; use reward.name=math for jsonl / parquet answers",
        )
        require(
            self.algorithm.overlong.buffer <= sampling.max_tokens,
            f"algorithm.overlong.buffer ({self.algorithm.overlong.buffer}) must be <= "
            f"rollout.sampling.max_tokens ({sampling.max_tokens})",
        )
        require(
            self.trainer.eval_every == 0 or self.data.source == "reasoning_gym" or bool(self.data.eval_path),
            "trainer.eval_every > 0 with a jsonl / parquet dataset needs data.eval_path (or set "
            "trainer.eval_every=0)",
        )
        return self


def load_config(
    overrides: list[str] | None = None, config_dir: str | Path = CONF_DIR, name: str = "config"
) -> RunConfig:
    """Compose ``conf/<name>.yaml`` with Hydra ``overrides``, merge into the schema, validate."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    # the schema is the first default of config.yaml: every key exists (overridable without '+') and
    # Hydra refuses unknown keys and wrong types while composing
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
            composed = compose(config_name=name, overrides=list(overrides or []))
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), composed)
        cfg: RunConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None
    except Exception as e:  # hydra's override parser / missing config group option
        if type(e).__module__.startswith("hydra"):
            raise ConfigError(str(e)) from None
        raise
    try:
        return cfg.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
