"""The ``data`` section: where the prompts come from and how they are rendered (``nemo_resrl/data``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nemo_resrl.config.keys import Keys, Section

DATA_SOURCES = ("reasoning_gym", "jsonl", "parquet")
BAD_ROW_POLICIES = ("error", "skip")


@dataclass
class DataConfig(Section):
    """Prompts (``data``): an offline reasoning-gym task, or jsonl / parquet files."""

    KEY = "data."

    source: str = "reasoning_gym"
    """reasoning_gym | jsonl | parquet."""
    path: str = ""
    """jsonl / parquet: a file or a glob."""
    eval_path: str = ""
    """jsonl / parquet: the held-out prompts of trainer.eval_every."""
    task: str = "basic_arithmetic"
    """reasoning_gym: the task name."""
    task_kwargs: dict = field(default_factory=dict)
    size: int = 1024
    """reasoning_gym: how many problems to generate."""
    seed: int = 0
    prompt_key: str = "problem"
    answer_key: str = "answer"
    prompt_template: str = "{prompt}"
    """Wraps the problem (``{prompt}`` is replaced) before the chat template."""
    system_prompt: str = ""
    """If set, the system message."""
    chat_template: bool = True
    """false: tokenize the text as it is."""
    max_prompt_tokens: int = 512
    """Longer prompts (after the chat template) are dropped and counted, never truncated."""
    on_bad_row: str = "error"
    """error: a malformed row stops loading, naming it; skip: dropped, logged and counted."""

    def check(self, keys: Keys) -> None:
        keys.one_of(self.source, "source", DATA_SOURCES)
        keys.require(
            self.source == "reasoning_gym" or bool(self.path),
            "path",
            f"is required for {keys.key('source')}={self.source}",
        )
        keys.at_least(self.size, "size", 1)
        keys.at_least(self.max_prompt_tokens, "max_prompt_tokens", 1)
        keys.require(
            "{prompt}" in self.prompt_template,
            "prompt_template",
            f"must contain '{{prompt}}', got {self.prompt_template!r}",
        )
        keys.one_of(self.on_bad_row, "on_bad_row", BAD_ROW_POLICIES)
