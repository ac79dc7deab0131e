"""The ``rollout`` section: the vLLM engine and how it samples (``rollout.sampling``).

The eval config (``config/eval.py``) is this section plus what evaluation needs, at the top level of its
own file, so its keys are ``sampling.n``, ``max_model_len``, ... and its errors say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nemo_resrl.config.keys import Keys, Section

ROLLOUT_DTYPES = ("auto", "fp32", "bf16")
ROLLOUT_ENGINES = ("vllm", "transformers")
SEED_MODES = ("prompt", "step")


@dataclass
class SamplingConfig(Section):
    """How responses are sampled (``rollout.sampling``)."""

    KEY = "rollout.sampling."

    n: int = 8
    """Responses per prompt (the GRPO group size G)."""
    temperature: float = 1.0
    """The policy trained is softmax(logits / temperature), the distribution sampled from."""
    top_p: float = 1.0
    top_k: int = 0
    """0: off."""
    max_tokens: int = 1024
    """Response budget (cut to what the context leaves)."""
    seed: int | None = 0
    """Base seed (null: unseeded); a training run salts it per step and generation round."""
    seed_mode: str = "prompt"
    """prompt: every prompt samples from its own stream (seed, global prompt index), so samples do not
    depend on how prompts are split over data-parallel ranks; step: the engine's generator is seeded
    once per call and requests carry no seed (vLLM's GPU sampler handles seeded requests one by one at
    every decode step, which is slow), repeatable for the same split only."""
    stop_on_eos: bool = True

    def check(self, keys: Keys) -> None:
        keys.require(isinstance(self.n, int) and self.n >= 1, "n", f"must be >= 1, got {self.n!r}")
        keys.at_least(self.temperature, "temperature", 0)
        keys.require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        keys.require(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        keys.at_least(self.max_tokens, "max_tokens", 1)
        keys.one_of(self.seed_mode, "seed_mode", SEED_MODES)


@dataclass
class RolloutConfig(Section):
    """The vLLM engine (``rollout``)."""

    KEY = "rollout."

    engine: str = "vllm"
    """vllm (the default: a cluster's engine) | transformers (``rollout/transformers_engine.py``: the HF
    model with this project's sampling loop, on CPU or one GPU, for machines or models vLLM does not
    cover; tensor_parallel 1)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_model_len: int = 4096
    """Prompt + response tokens."""
    dtype: str = "auto"
    """auto (the checkpoint's) | fp32 | bf16."""
    tensor_parallel: int = 1
    """vLLM tensor parallel; in training a multiple of actor.tensor_parallel (colocated ranks: an engine
    wider than the actor serves several data-parallel replicas)."""
    gpu_memory_utilization: float = 0.5
    """GPU: the fraction of the device vLLM may take for weights + KV cache."""
    kv_cache_memory_bytes: int = 256 << 20
    """CPU: the KV cache size (vLLM would otherwise reserve most of the RAM)."""
    enforce_eager: bool | None = None
    """null: eager on CPU (no graph capture there), CUDA graphs on GPU."""
    sleep_while_training: bool = True
    """GPU: free the engine's memory from after generation until the refit (the actor's log-prob pass and
    training run meanwhile)."""
    sleep_level: int = 2
    """vLLM sleep level: 2 (default) drops the weights, since every wake-up is followed by a refit that
    rewrites each of them (vLLM keeps its buffers, e.g. the rotary tables, on the host: "level 2 ... RLHF
    weight update" in vLLM's sleep-mode docs); 1 copies every weight to pinned host memory and back each
    step (4-29 GB per GPU each way for the presets)."""
    consistency_warn: float = 1.05
    """Warn when token_mult_prob_error (mean exp|logp_vllm - logp_actor|) exceeds it."""
    consistency_error: float | None = 1.25
    """Stop the run when token_mult_prob_error exceeds it (null: never): the engine samples from a policy
    other than the one trained (a broken refit: 1.09-1.49 measured; a healthy bf16 engine against an fp32
    actor stays below 1.05)."""

    def check(self, keys: Keys) -> None:
        self.sampling.check(keys.sub("sampling"))
        keys.at_least(self.max_model_len, "max_model_len", 2)
        keys.one_of(self.dtype, "dtype", ROLLOUT_DTYPES)
        keys.at_least(self.tensor_parallel, "tensor_parallel", 1)
        keys.require(
            0 < self.gpu_memory_utilization <= 1,
            "gpu_memory_utilization",
            f"must be in (0, 1], got {self.gpu_memory_utilization}",
        )
        keys.require(
            self.kv_cache_memory_bytes >= 1 << 20,
            "kv_cache_memory_bytes",
            f"must be >= 1 MiB (1048576), got {self.kv_cache_memory_bytes}",
        )
        keys.one_of(self.engine, "engine", ROLLOUT_ENGINES)
        keys.require(
            self.engine != "transformers" or self.tensor_parallel == 1,
            "tensor_parallel",
            f"must be 1 with {keys.key('engine')}=transformers (each rank runs a whole model), got "
            f"{self.tensor_parallel}",
        )
        keys.at_least(self.consistency_warn, "consistency_warn", 1)
        keys.require(
            self.consistency_error is None or self.consistency_error >= self.consistency_warn,
            "consistency_error",
            f"must be null or >= {keys.key('consistency_warn')} ({self.consistency_warn}), "
            f"got {self.consistency_error}",
        )
        keys.one_of(self.sleep_level, "sleep_level", (1, 2))
