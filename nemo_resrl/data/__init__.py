"""Prompt datasets (jsonl / parquet through HF datasets, or offline reasoning-gym tasks) with chat
templates; see ``prompts``."""

from nemo_resrl.config.data import DataConfig
from nemo_resrl.data.prompts import DatasetError, PromptSet, load_prompts, render_prompt

__all__ = ["DataConfig", "DatasetError", "PromptSet", "load_prompts", "render_prompt"]
