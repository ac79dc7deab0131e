"""Typed rollout settings, validated before an engine is built (errors name the key)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nemo_resrl.algorithms.checks import require

ROLLOUT_DTYPES = ("auto", "fp32", "bf16")
# vLLM's CPU attention backend supports these head sizes (16 fails at the first forward)
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)


@dataclass
class SamplingConfig:
    """How responses are sampled. n: responses per prompt (the GRPO group size G); top_k 0 = off;
    max_tokens: response budget (cut to what the context leaves); seed: base seed (each prompt gets
    its own stream derived from it and its index; None = unseeded); stop_on_eos: end at EOS."""

    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 1024
    seed: int | None = 0
    stop_on_eos: bool = True

    def validate(self) -> SamplingConfig:
        require(isinstance(self.n, int) and self.n >= 1, f"rollout.sampling.n must be >= 1, got {self.n!r}")
        require(self.temperature >= 0, f"rollout.sampling.temperature must be >= 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"rollout.sampling.top_p must be in (0, 1], got {self.top_p}")
        require(self.top_k >= 0, f"rollout.sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        require(self.max_tokens >= 1, f"rollout.sampling.max_tokens must be >= 1, got {self.max_tokens}")
        return self


@dataclass
class RolloutConfig:
    """The vLLM engine. tensor_parallel must equal the actor's (colocated ranks); dtype auto follows
    the actor checkpoint. CPU: kv_cache_memory_bytes bounds the KV cache (vLLM would otherwise reserve
    most of the RAM); GPU: gpu_memory_utilization, and sleep (free weights + KV cache) while training.
    consistency_warn: warn
    when the refit consistency metric (mean exp|logp_vllm - logp_actor|) exceeds it."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_model_len: int = 4096
    dtype: str = "auto"
    tensor_parallel: int = 1
    gpu_memory_utilization: float = 0.5
    kv_cache_memory_bytes: int = 256 << 20
    enforce_eager: bool | None = None  # None: True on CPU (no graph capture there)
    sleep_while_training: bool = True
    consistency_warn: float = 1.05

    def validate(self) -> RolloutConfig:
        self.sampling.validate()
        require(self.max_model_len >= 2, f"rollout.max_model_len must be >= 2, got {self.max_model_len}")
        require(
            self.dtype in ROLLOUT_DTYPES, f"rollout.dtype must be one of {ROLLOUT_DTYPES}, got {self.dtype!r}"
        )
        require(
            self.tensor_parallel >= 1, f"rollout.tensor_parallel must be >= 1, got {self.tensor_parallel}"
        )
        require(
            0 < self.gpu_memory_utilization <= 1,
            f"rollout.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}",
        )
        require(self.kv_cache_memory_bytes >= 1 << 20, "rollout.kv_cache_memory_bytes must be >= 1 MiB")
        require(
            self.consistency_warn >= 1, f"rollout.consistency_warn must be >= 1, got {self.consistency_warn}"
        )
        return self
