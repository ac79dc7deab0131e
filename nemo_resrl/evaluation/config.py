"""The evaluation configuration: a typed schema, defaults in ``conf/eval.yaml``, dotlist overrides
(``model=PATH benchmarks=[a.jsonl,b.jsonl] sampling.n=16``); a bad key or value is a ``ConfigError``
naming it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_resrl.config import CONF_DIR, ConfigError

DTYPES = ("auto", "fp32", "bf16")  # as the rollout engine takes them


@dataclass
class EvalSampling:
    """n samples per problem (pass@k up to k = n); temperature > 0; top_k 0 = off."""

    n: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_tokens: int = 4096
    seed: int = 0


@dataclass
class EvalConfig:
    """model: an HF directory or a checkpoint of this project (run / checkpoints / step / actor dir).
    benchmarks: jsonl files; names: their report names (default: the file stems). prompt_template:
    ``{problem}`` is replaced. chat_template: wrap in the tokenizer's chat template (assistant turn
    opened). max_model_len bounds prompt + response; prompts that leave no room are counted and score 0.
    output_dir: eval.json, samples.jsonl, pass_at_k.png."""

    model: str = "???"
    benchmarks: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    problem_key: str = "problem"
    answer_key: str = "answer"
    prompt_template: str = (
        "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    system_prompt: str = ""
    chat_template: bool = True
    sampling: EvalSampling = field(default_factory=EvalSampling)
    max_model_len: int = 8192
    dtype: str = "auto"
    tensor_parallel: int = 1
    kv_cache_memory_bytes: int = 1 << 30
    gpu_memory_utilization: float = 0.85
    grader_workers: int = 2
    grader_timeout_s: float = 5.0
    output_dir: str = "runs/eval"

    def validate(self) -> EvalConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(
            bool(self.benchmarks),
            "benchmarks: give at least one jsonl file, e.g. benchmarks=[data/aime24.jsonl]",
        )
        need(
            not self.names or len(self.names) == len(self.benchmarks),
            f"names: {len(self.names)} names for {len(self.benchmarks)} benchmarks",
        )
        names = self.benchmark_names()
        need(len(set(names)) == len(names), f"names: benchmark names must be unique, got {names}")
        need("{problem}" in self.prompt_template, "prompt_template must contain {problem}")
        s = self.sampling
        need(s.n >= 1, f"sampling.n must be >= 1, got {s.n}")
        need(s.temperature > 0, f"sampling.temperature must be > 0 (sampled evaluation), got {s.temperature}")
        need(0 < s.top_p <= 1, f"sampling.top_p must be in (0, 1], got {s.top_p}")
        need(s.top_k >= 0, f"sampling.top_k must be >= 0, got {s.top_k}")
        need(s.max_tokens >= 1, f"sampling.max_tokens must be >= 1, got {s.max_tokens}")
        need(self.max_model_len > 1, f"max_model_len must be > 1, got {self.max_model_len}")
        need(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        need(self.tensor_parallel >= 1, f"tensor_parallel must be >= 1, got {self.tensor_parallel}")
        need(self.grader_workers >= 1, f"grader_workers must be >= 1, got {self.grader_workers}")
        need(self.grader_timeout_s > 0, f"grader_timeout_s must be > 0, got {self.grader_timeout_s}")
        return self

    def benchmark_names(self) -> list[str]:
        return list(self.names) or [Path(b).stem for b in self.benchmarks]


def load_eval_config(
    overrides: list[str] | None = None, path: str | Path = CONF_DIR / "eval.yaml"
) -> EvalConfig:
    """``conf/eval.yaml`` with dotlist ``overrides`` merged into the schema, validated."""
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(EvalConfig),
            OmegaConf.load(path),
            OmegaConf.from_dotlist(list(overrides or [])),
        )
        cfg: EvalConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None
    return cfg.validate()
