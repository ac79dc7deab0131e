"""The ``algorithm`` section: which algorithm, its outcome advantages (``algorithm.advantage``), policy
loss (``algorithm.loss``), ResRL weights (``algorithm.resrl``), and DAPO's dynamic sampling and overlong
shaping. What each algorithm IS (estimator, ResRL weights or not, group-normalised or not, its recipe's
defaults) is its spec in ``nemo_resrl.config.specs``; ``AlgorithmConfig.preset(name)`` builds a
config from it, and each ``conf/algorithm/<name>.yaml`` holds the same values (tested).

The defaults are docs/algorithm.md's (the released ResRL code's, section 4-6).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from nemo_resrl.config.keys import ConfigError, Keys, Section

SVD_METHODS = ("randomized", "exact")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_TYPES = ("k1", "k2", "k3", "low_var_kl")


@dataclass
class AdvantageConfig(Section):
    """Settings of the outcome-advantage estimators (``algorithm.advantage``)."""

    KEY = "algorithm.advantage."

    epsilon: float = 1e-6
    """Added to the group std (GRPO)."""
    w_reinforce_lambda: float = 0.1
    """W-REINFORCE's advantage of a correct response (NSR paper default 0.1)."""

    def check(self, keys: Keys) -> None:
        keys.require(self.epsilon > 0, "epsilon", f"must be > 0, got {self.epsilon}")
        keys.at_least(self.w_reinforce_lambda, "w_reinforce_lambda", 0)


@dataclass
class PolicyLossConfig(Section):
    """The policy loss (``algorithm.loss``), docs/algorithm.md §6."""

    KEY = "algorithm.loss."

    name: str = "ppo_clip"
    """A registered policy loss (``nemo_resrl.config.specs.POLICY_LOSS_NAMES``; the functions:
    ``nemo_resrl.algorithms.losses.POLICY_LOSSES``)."""
    clip_low: float = 0.2
    """Ratio clip range [1 - clip_low, 1 + clip_high]."""
    clip_high: float = 0.2
    """DAPO's clip-higher: 0.28."""
    dual_clip_c: float | None = 3.0
    """Dual-clip bound for negative advantages (> 1; null disables)."""
    log_ratio_clamp: float = 20.0
    """|logp - old_logp| is clamped to this before exp (numerical safety, as verl)."""
    agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm (Dr.GRPO: each
    response's token sum over the constant ``agg_constant``), over the GLOBAL batch."""
    agg_constant: float | None = None
    """The constant of seq-mean-token-sum-norm (null: rollout.sampling.max_tokens, the generation budget)."""
    kl_coef: float = 0.0
    """KL to a reference policy (k1, k2, k3 = low_var_kl); needs a reference policy."""
    kl_type: str = "k3"
    entropy_coef: float = 0.0
    """Entropy bonus (subtracted from the loss)."""
    tis_cap: float | None = None
    """Truncated importance sampling (null: off): every token's loss is multiplied by
    min(pi_old / pi_rollout, tis_cap), the trainer's old log-prob against the sampler's, to correct a
    rollout engine that samples from a slightly different distribution (another precision or kernel)."""

    def check(self, keys: Keys) -> None:
        from nemo_resrl.config.specs import POLICY_LOSS_NAMES

        keys.require(
            self.name in POLICY_LOSS_NAMES,
            "name",
            f"{self.name!r} unknown; registered: {sorted(POLICY_LOSS_NAMES)}",
        )
        keys.in_unit(self.clip_low, "clip_low", open_high=True)
        keys.at_least(self.clip_high, "clip_high", 0)
        keys.require(
            self.dual_clip_c is None or self.dual_clip_c > 1,
            "dual_clip_c",
            f"must be > 1 or null, got {self.dual_clip_c}",
        )
        keys.require(self.log_ratio_clamp > 0, "log_ratio_clamp", f"must be > 0, got {self.log_ratio_clamp}")
        keys.one_of(self.agg, "agg", AGG_MODES)
        keys.one_of(self.kl_type, "kl_type", KL_TYPES)
        keys.at_least(self.kl_coef, "kl_coef", 0)
        keys.at_least(self.entropy_coef, "entropy_coef", 0)
        keys.require(
            self.agg_constant is None or self.agg_constant > 0,
            "agg_constant",
            f"must be > 0 or null, got {self.agg_constant}",
        )
        keys.require(
            self.tis_cap is None or self.tis_cap >= 1, "tis_cap", f"must be >= 1 or null, got {self.tis_cap}"
        )


@dataclass
class ResRLConfig(Section):
    """ResRL hyper-parameters (``algorithm.resrl``); defaults are the released code's (docs/algorithm.md
    sections 4-6)."""

    KEY = "algorithm.resrl."

    max_rows: int = 4096
    """M_max: positive rows sampled per group (paper ablation 2048 - 8192)."""
    rank: int = 64
    """k: subspace rank (paper ablation 8 - 256)."""
    alpha: float = 0.2
    """Quantile of the group's negative residuals mapped to z = 0."""
    beta: float = 0.8
    """Quantile mapped to z = 1."""
    xi: float = 0.1
    """Floor weight of a negative token."""
    lambda_pos: float = 0.1
    """Scale of positive advantages."""
    ln_eps: float = 1e-5
    min_positive_tokens: int = 4
    """Groups with fewer valid positive tokens are skipped."""
    svd_method: str = "randomized"
    """randomized (fixed-iteration subspace iteration, the default) | exact (``torch.linalg.svd``, the
    reference); ``algorithms/subspace.py``, chosen by benchmark (docs/benchmarks.md)."""
    svd_iterations: int = 10
    """Subspace iterations of the randomized fit (a fixed number: the same cost on every spectrum)."""
    svd_oversample: int = 64
    """Extra columns of the randomized fit's block (q = rank + oversample)."""
    fit_batch_groups: int = 8
    """Groups fitted together in one batched call (bounds the fit's float32 [groups, M, d] input)."""
    seed: int = 0
    """Base seed of the positive-row sampling (combined with the step and the group id)."""
    residual_chunk_tokens: int = 4096
    deferred_rows_mib: float = 256.0
    """When the layer L-2 rows of a rank's negative tokens take at most this many MiB (the largest rank's,
    in the activation dtype), the pass keeps GRPO's micro-batches: it keeps those rows and computes their
    residuals after the fits, at the end of the pass. Above it (and at 0), positives run first and each
    negative is projected as it comes (no rows kept, but each phase is sorted by length on its own: a few
    percent more padding at small batches). The same weights either way (docs/distributed.md)."""
    positive_set: str = "correct"
    """Which responses span the subspace and get lambda_pos x A: correct (the verifier's verdict, the
    released code's score > 0) or advantage (A > 0, the paper's wording). They differ under a shaped
    reward: a long correct answer under the length-scaled reward can have A < 0."""

    def check(self, keys: Keys) -> None:
        keys.at_least(self.max_rows, "max_rows", 2)
        keys.at_least(self.rank, "rank", 1)
        keys.in_unit(self.alpha, "alpha")
        keys.in_unit(self.beta, "beta")
        keys.require(
            self.alpha < self.beta, "alpha", f"({self.alpha}) must be < {keys.key('beta')} ({self.beta})"
        )
        keys.in_unit(self.xi, "xi")
        keys.at_least(self.lambda_pos, "lambda_pos", 0)
        keys.require(self.ln_eps > 0, "ln_eps", f"must be > 0, got {self.ln_eps}")
        keys.at_least(self.min_positive_tokens, "min_positive_tokens", 2)
        keys.one_of(self.svd_method, "svd_method", SVD_METHODS)
        keys.at_least(self.svd_iterations, "svd_iterations", 0)
        keys.at_least(self.svd_oversample, "svd_oversample", 0)
        keys.at_least(self.fit_batch_groups, "fit_batch_groups", 1)
        keys.at_least(self.residual_chunk_tokens, "residual_chunk_tokens", 1)
        keys.at_least(self.deferred_rows_mib, "deferred_rows_mib", 0)
        keys.one_of(self.positive_set, "positive_set", ("advantage", "correct"))


@dataclass
class DynamicSamplingConfig(Section):
    """DAPO dynamic sampling (``algorithm.dynamic_sampling``): drop groups whose task rewards are all
    equal and generate more prompts, up to ``max_rounds`` generation rounds per step (the first
    included), until the step has ``trainer.prompts_per_step`` groups with signal. A step short of that
    trains on what it kept (logged); a step where a data-parallel rank kept nothing skips its update."""

    KEY = "algorithm.dynamic_sampling."

    enabled: bool = False
    max_rounds: int = 3

    def check(self, keys: Keys) -> None:
        keys.at_least(self.max_rounds, "max_rounds", 1)


@dataclass
class OverlongConfig(Section):
    """DAPO's soft overlong punishment (``algorithm.overlong``), added to the task reward: 0 up to
    ``max_tokens - buffer`` response tokens, then linearly down to ``-factor`` at
    ``rollout.sampling.max_tokens``."""

    KEY = "algorithm.overlong."

    enabled: bool = False
    buffer: int = 0
    """0: a fifth of rollout.sampling.max_tokens (DAPO: 4096 of 20480)."""
    factor: float = 1.0

    def check(self, keys: Keys) -> None:
        keys.at_least(self.buffer, "buffer", 0)
        keys.at_least(self.factor, "factor", 0)


@dataclass
class AlgorithmConfig(Section):
    """Which algorithm and its settings (``algorithm``). ``conf/algorithm/<name>.yaml`` is the preset of
    each; ``algorithm.name=<name>`` on the command line selects that preset too."""

    KEY = "algorithm."

    name: str = "resrl"
    """grpo | dr_grpo | rloo | psr | nsr | w_reinforce | dapo | resrl (``nemo_resrl.config.specs``)."""
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    resrl: ResRLConfig = field(default_factory=ResRLConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)

    def check(self, keys: Keys) -> None:
        from nemo_resrl.config.specs import ALGORITHM_SPECS

        keys.require(
            self.name in ALGORITHM_SPECS,
            "name",
            f"must be one of {ALGORITHM_SPECS.names()}, got {self.name!r}",
        )
        self.advantage.check(keys.sub("advantage"))
        self.loss.check(keys.sub("loss"))
        self.resrl.check(keys.sub("resrl"))
        self.dynamic_sampling.check(keys.sub("dynamic_sampling"))
        self.overlong.check(keys.sub("overlong"))

    def resolve(self, max_tokens: int) -> AlgorithmConfig:
        """This config with the values that derive from the generation budget ``max_tokens``
        (``rollout.sampling.max_tokens``) filled in, the one place they are derived: Dr.GRPO's
        ``loss.agg_constant`` (null: the budget) and DAPO's ``overlong.buffer`` (0: a fifth of it, at least
        1, at most the budget). Idempotent."""
        loss, overlong = self.loss, self.overlong
        if loss.agg == "seq-mean-token-sum-norm" and loss.agg_constant is None:
            loss = replace(loss, agg_constant=float(max_tokens))
        if overlong.enabled and overlong.buffer == 0:
            overlong = replace(overlong, buffer=max(1, max_tokens // 5))
        if overlong.enabled:
            overlong = replace(overlong, buffer=min(overlong.buffer, max_tokens))
        return replace(self, loss=loss, overlong=overlong)

    @property
    def spec(self):
        """This algorithm's ``AlgorithmSpec``."""
        from nemo_resrl.config.specs import algorithm_spec

        return algorithm_spec(self.name)

    @classmethod
    def preset(cls, name: str, **changes) -> AlgorithmConfig:
        """The config of algorithm ``name`` with its recipe's defaults (what ``algorithm=<name>`` loads),
        then ``changes`` (section objects or values) on top."""
        from nemo_resrl.config.specs import algorithm_spec

        spec = algorithm_spec(name)
        loss_fields = {f.name for f in fields(PolicyLossConfig)}
        unknown = set(spec.loss) - loss_fields
        if unknown:  # pragma: no cover - guarded by the spec tests
            raise ConfigError(f"algorithm spec {name}: unknown loss fields {sorted(unknown)}")
        base = cls(
            name=name,
            loss=replace(PolicyLossConfig(), **spec.loss),
            dynamic_sampling=DynamicSamplingConfig(enabled=spec.dynamic_sampling),
            overlong=OverlongConfig(enabled=spec.overlong),
        )
        return replace(base, **changes)
