"""The configuration of ``nemo-resrl eval``: the rollout section's engine and sampling keys at the top
level of its own file (``sampling.n``, ``max_model_len``, ...), plus the model, the benchmarks, the prompt
format and the grader. Defaults in ``conf/eval.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nemo_resrl.config.keys import Keys
from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig


def _eval_sampling() -> SamplingConfig:
    return SamplingConfig(n=8, temperature=0.6, top_p=0.95, top_k=0, max_tokens=4096, seed=0)


@dataclass
class EvalConfig(RolloutConfig):
    """Sampled evaluation: ``n`` samples per problem (pass@k up to k = n), graded with math-verify. Being a
    ``RolloutConfig``, it is handed to the rollout engine as it is."""

    KEY = ""

    sampling: SamplingConfig = field(default_factory=_eval_sampling)
    max_model_len: int = 8192
    """Prompt + response; prompts that leave no room for a response are counted and score 0."""
    kv_cache_memory_bytes: int = 1 << 30
    gpu_memory_utilization: float = 0.85
    sleep_while_training: bool = False
    model: str = "???"
    """An HF directory or a checkpoint of this project (run / checkpoints / step / actor dir)."""
    benchmarks: list[str] = field(default_factory=list)
    """jsonl files, one {"problem": ..., "answer": ...} per line."""
    names: list[str] = field(default_factory=list)
    """Report names of the benchmarks (default: the file stems)."""
    problem_key: str = "problem"
    answer_key: str = "answer"
    prompt_template: str = (
        "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    """``{problem}`` is replaced."""
    system_prompt: str = ""
    chat_template: bool = True
    """Wrap in the tokenizer's chat template (assistant turn opened)."""
    grader_workers: int = 2
    grader_timeout_s: float = 5.0
    output_dir: str = "runs/eval"
    """eval.json, samples.jsonl, pass_at_k.png."""

    def check(self, keys: Keys) -> None:
        super().check(keys)
        keys.require(
            bool(self.benchmarks),
            "benchmarks",
            "needs at least one jsonl file, e.g. benchmarks=[data/aime24.jsonl]",
        )
        keys.require(
            not self.names or len(self.names) == len(self.benchmarks),
            "names",
            f"has {len(self.names)} names for {len(self.benchmarks)} benchmarks",
        )
        names = self.benchmark_names()
        keys.require(len(set(names)) == len(names), "names", f"must be unique, got {names}")
        keys.require("{problem}" in self.prompt_template, "prompt_template", "must contain {problem}")
        keys.require(
            self.sampling.temperature > 0,
            "sampling.temperature",
            f"must be > 0 (sampled evaluation), got {self.sampling.temperature}",
        )
        keys.at_least(self.grader_workers, "grader_workers", 1)
        keys.require(
            self.grader_timeout_s > 0, "grader_timeout_s", f"must be > 0, got {self.grader_timeout_s}"
        )

    def benchmark_names(self) -> list[str]:
        return list(self.names) or [Path(b).stem for b in self.benchmarks]
