"""Hugging Face model directories: the check that one is usable (offline, before anything is built), the
resolution of ``embedded:`` model names, and the small non-weight files (config, generation config,
tokenizer, chat template) copied with a checkpoint so that it converts back to HF without the original
directory. No torch import: the CLI reads this before anything heavy."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from nemo_resrl.config import ConfigError

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


EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = ("smollm2-135m-instruct",)


def check_hf_dir(hf_path: str, key: str = "actor.hf_path") -> Path:
    """``hf_path`` as a local Hugging Face checkpoint directory (config.json and weights), checked offline;
    a ``ConfigError`` says what is missing (a hub id is named as such: models are read from disk only)."""
    p = Path(hf_path).expanduser()
    if not p.exists():
        hint = ""
        if re.fullmatch(r"[\w.-]+/[\w.-]+", hf_path):
            hint = (
                f" (it looks like a hub id: models are read from local directories only; download it first, "
                f"e.g. huggingface-cli download {hf_path} --local-dir DIR, and set {key}=DIR)"
            )
        raise ConfigError(f"{key} {hf_path!r} does not exist{hint}")
    if not p.is_dir():
        raise ConfigError(f"{key} {hf_path!r} is a file, not a Hugging Face checkpoint directory")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{key} {hf_path!r} has no config.json: not a Hugging Face checkpoint directory")
    weights = sorted([*p.glob("*.safetensors"), *p.glob("*.bin")])
    if not weights:
        raise ConfigError(f"{key} {hf_path!r} has no weights (*.safetensors or *.bin files)")
    for w in weights:
        size = w.stat().st_size
        if size < 8:  # a safetensors file starts with its 8-byte header length
            raise ConfigError(
                f"{key}: the weights file {w} is empty ({size} bytes): a failed download or copy"
            )
        if w.suffix == ".safetensors":
            with open(w, "rb") as f:
                header = int.from_bytes(f.read(8), "little")
            if header <= 0 or 8 + header > size:
                raise ConfigError(
                    f"{key}: the weights file {w} is truncated or not safetensors ({size} bytes, its header "
                    f"says {header} bytes of metadata): a failed download or copy"
                )
    return p


def resolve_model_path(hf_path: str, dtype: str) -> str:
    """An HF directory for ``hf_path``: itself (checked), or the cached conversion of an ``embedded:``
    model."""
    if not hf_path.startswith(EMBEDDED_PREFIX):
        return str(check_hf_dir(hf_path))
    name = hf_path[len(EMBEDDED_PREFIX) :]
    if name not in EMBEDDED_MODELS:
        raise ConfigError(f"actor.hf_path: unknown embedded model {name!r}; embedded: {EMBEDDED_MODELS}")
    from nemo_resrl.models.embedded import ensure_embedded_model

    return str(ensure_embedded_model(dtype="bfloat16" if dtype == "bf16" else "float32"))
