"""The run configuration: every section of ``nemo-resrl train`` and the rules that span sections.

``RunConfig.validate()`` is the one validation pass: the CLI runs it after composing the YAML files and
overrides, before anything is built, and every message names the full key a user types.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nemo_resrl.config.actor import ActorConfig
from nemo_resrl.config.algorithm import AlgorithmConfig
from nemo_resrl.config.cluster import ClusterConfig
from nemo_resrl.config.data import DataConfig
from nemo_resrl.config.keys import Keys, Section
from nemo_resrl.config.rollout import RolloutConfig

REWARDS = ("math", "reasoning_gym")
SHAPINGS = ("none", "length_scaled")


@dataclass
class LengthScaleConfig(Section):
    """The released ResRL code's length penalty (``reward.length_scale``, docs/algorithm.md §7): a positive
    reward is kept up to ``start`` response tokens, scaled down linearly to ``end_scale`` at
    ``max_length``, and by ``end_scale`` beyond; other rewards are unchanged."""

    KEY = "reward.length_scale."

    start: int = 3500
    max_length: int = 4096
    end_scale: float = 0.7

    def check(self, keys: Keys) -> None:
        keys.at_least(self.start, "start", 1)
        keys.require(
            self.max_length > self.start, "max_length", f"({self.max_length}) must be > {keys.key('start')}"
        )
        keys.in_unit(self.end_scale, "end_scale")


@dataclass
class RewardConfig(Section):
    """The verifier (``reward``): math (math-verify on the last boxed answer) | reasoning_gym (the task's
    own scorer). Grading runs in ``workers`` processes with a per-answer ``timeout_s``; crashes and
    timeouts score 0 and are counted."""

    KEY = "reward."

    name: str = "reasoning_gym"
    workers: int = 2
    timeout_s: float = 5.0
    incorrect: float | None = None
    """The reward of an incorrect response, replacing the grader's (null: keep it, 0 for the binary
    graders; the released ResRL run's math_dapo scorer gives -1). A correct response keeps the grader's."""
    shaping: str = "none"
    """none | length_scaled (``length_scale``, applied to positive rewards before the advantages)."""
    length_scale: LengthScaleConfig = field(default_factory=LengthScaleConfig)

    def check(self, keys: Keys) -> None:
        keys.one_of(self.name, "name", REWARDS)
        keys.at_least(self.workers, "workers", 1)
        keys.require(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")
        keys.require(
            self.incorrect is None or self.incorrect <= 0,
            "incorrect",
            f"must be <= 0 or null, got {self.incorrect} (a reward > 0 reads as a correct answer's)",
        )
        keys.one_of(self.shaping, "shaping", SHAPINGS)
        self.length_scale.check(keys.sub("length_scale"))


@dataclass
class TrainerConfig(Section):
    """The RL loop (``trainer``)."""

    KEY = "trainer."

    steps: int = 10
    """RL steps of the run."""
    prompts_per_step: int = 8
    """Prompts per step over all data-parallel ranks (each sampled rollout.sampling.n times)."""
    mini_batches: int = 1
    """Optimizer updates per step (the step's responses split in this many parts)."""
    seed: int = 0
    """Data order and the per-step sampling streams."""
    eval_every: int = 0
    """Steps between greedy evaluations on eval_prompts held-out prompts (0: never)."""
    eval_prompts: int = 32
    lld_every: int = 1
    """Steps between measurements of the positive log-likelihood displacement (0: never): the change of
    log pi(y+ | c) over the step's correct responses caused by the step's updates."""

    def check(self, keys: Keys) -> None:
        keys.at_least(self.steps, "steps", 1)
        keys.at_least(self.prompts_per_step, "prompts_per_step", 1)
        keys.at_least(self.mini_batches, "mini_batches", 1)
        keys.at_least(self.eval_every, "eval_every", 0)
        keys.at_least(self.eval_prompts, "eval_prompts", 1)
        keys.at_least(self.lld_every, "lld_every", 0)


@dataclass
class CheckpointConfig(Section):
    """Checkpoints (``checkpoint``) into ``<run dir>/checkpoints``."""

    KEY = "checkpoint."

    every: int = 5
    """Steps between checkpoints (0: never; the last step and a stop request always save)."""
    keep_last: int = 2
    resume: bool = True
    """Continue from the newest intact checkpoint if there is one. false in a directory that already holds
    a run is refused (it would overwrite it) unless start_over."""
    start_over: bool = False
    """Start a fresh run in logging.run_dir after moving the run it holds aside into
    <run dir>/previous-<time>/ (nothing is deleted)."""
    allow_config_change: bool = False
    """Resume although the checkpoint was trained with another algorithm, model, data or batch shape
    (``checkpoint.config.json``; otherwise refused, naming the keys). Logged as checkpoint/config_changed."""

    def check(self, keys: Keys) -> None:
        keys.at_least(self.every, "every", 0)
        keys.at_least(self.keep_last, "keep_last", 1)


@dataclass
class LoggingConfig(Section):
    """Outputs (``logging``): metrics.jsonl is always written; TensorBoard and W&B when enabled."""

    KEY = "logging."

    run_dir: str = "runs/default"
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "nemo_resrl"
    progress: bool = True
    """A progress bar with the current phase (rank 0, on a terminal)."""

    def check(self, keys: Keys) -> None:
        keys.require(bool(self.run_dir), "run_dir", "must not be empty")


@dataclass
class RunConfig(Section):
    """Everything ``nemo-resrl train`` runs."""

    KEY = ""

    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def resolve(self) -> RunConfig:
        """This config with every derived value filled in (``AlgorithmConfig.resolve``), once, after
        validation: what the run uses, what ``--print-config`` shows and what a checkpoint records."""
        return replace(self, algorithm=self.algorithm.resolve(self.rollout.sampling.max_tokens))

    def check(self, keys: Keys) -> None:
        """Every section, then the rules that span sections."""
        for name in (
            "actor",
            "rollout",
            "algorithm",
            "trainer",
            "data",
            "reward",
            "checkpoint",
            "logging",
            "cluster",
        ):
            getattr(self, name).check(keys.sub(name))
        algo, sampling = self.algorithm, self.rollout.sampling
        if self.rollout.engine == "vllm":
            keys.require(
                self.rollout.tensor_parallel % self.actor.tensor_parallel == 0,
                "rollout.tensor_parallel",
                f"({self.rollout.tensor_parallel}) must be a multiple of actor.tensor_parallel "
                f"({self.actor.tensor_parallel}): the engine runs colocated in the actor's ranks, one engine "
                "per actor tensor-parallel group or per several of them",
            )
        else:  # every rank samples its replica's prompts itself: the ranks of a replica must agree
            keys.require(
                sampling.seed is not None or self.actor.tensor_parallel * self.actor.pipeline_parallel == 1,
                "rollout.sampling.seed",
                "must be set with rollout.engine=transformers and actor tensor / pipeline parallel > 1: "
                "the ranks of a replica each sample its prompts and must draw the same responses",
            )
        keys.require(
            sampling.n >= 2 or not algo.spec.group_normalised,
            "rollout.sampling.n",
            f"must be >= 2 for the group-normalised algorithm {algo.name} (got {sampling.n})",
        )
        keys.require(
            sampling.temperature > 0,
            "rollout.sampling.temperature",
            f"must be > 0 for training (the policy is softmax(logits / T)), got {sampling.temperature}",
        )
        keys.require(
            self.data.max_prompt_tokens + sampling.max_tokens <= self.rollout.max_model_len,
            "data.max_prompt_tokens",
            f"({self.data.max_prompt_tokens}) + rollout.sampling.max_tokens ({sampling.max_tokens}) must be "
            f"<= rollout.max_model_len ({self.rollout.max_model_len})",
        )
        keys.require(
            self.reward.name != "reasoning_gym" or self.data.source == "reasoning_gym",
            "reward.name",
            "is reasoning_gym, which grades with the task's own scorer and needs data.source=reasoning_gym; "
            "use reward.name=math for jsonl / parquet answers",
        )
        keys.require(
            algo.overlong.buffer <= sampling.max_tokens,
            "algorithm.overlong.buffer",
            f"({algo.overlong.buffer}) must be <= rollout.sampling.max_tokens ({sampling.max_tokens})",
        )
        keys.require(
            self.trainer.eval_every == 0 or self.data.source == "reasoning_gym" or bool(self.data.eval_path),
            "trainer.eval_every",
            f"is {self.trainer.eval_every}: evaluating a jsonl / parquet dataset needs data.eval_path "
            "(or set trainer.eval_every=0)",
        )
