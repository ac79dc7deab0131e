"""The small non-weight files of a Hugging Face model directory (config, generation config, tokenizer,
chat template), copied with a checkpoint so that it converts back to HF without the original directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ACTOR_META = "nemo_resrl_actor.json"  # marks an actor dist-checkpoint directory (layout, step, HF source)
HF_META_DIR = "hf"  # in an actor checkpoint: the HF config / tokenizer files of the model

# Copied when present. Weights (*.safetensors, *.bin) and their index never are.
HF_META_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


def copy_hf_meta_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy the HF metadata files of ``src`` into ``dst`` (created); returns the names copied."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in HF_META_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def hf_num_experts(hf_config: dict) -> int:
    """Routed experts per layer of a mixture-of-experts HF config (0 for a dense model). Qwen's released
    configs write ``num_experts``; transformers >= 5 saves the same number as ``num_local_experts``."""
    return int(hf_config.get("num_experts") or hf_config.get("num_local_experts") or 0)
