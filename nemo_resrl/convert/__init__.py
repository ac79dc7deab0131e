"""Checkpoint conversion: Megatron dist-checkpoints of this project <-> Hugging Face directories,
streamed tensor by tensor (``to_hf``, ``from_hf``), and ``resolve_hf_model`` for tools that take either."""

from __future__ import annotations

import os
from pathlib import Path

from nemo_resrl.models.hf_mapping import ConversionError


def is_hf_model_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    weights = (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file()
    return (p / "config.json").is_file() and weights


def resolve_hf_model(
    path: str | os.PathLike,
    work_dir: str | os.PathLike,
    dtype: str | None = None,
    provenance: dict | None = None,
) -> Path:
    """An HF directory for ``path``: ``path`` itself when it is one; a checkpoint of this project (actor
    dir, step dir, checkpoints dir or run dir: the newest intact step) is converted into
    ``work_dir/hf_model``. ``provenance`` (a dict) gets the checkpoint used and its training step."""
    from nemo_resrl.convert.to_hf import NotACheckpoint, checkpoint_step, convert_to_hf, find_actor_checkpoint

    p = Path(path)
    if is_hf_model_dir(p):
        return p
    try:
        actor = find_actor_checkpoint(p)  # once: it names the damaged checkpoints it skips
    except NotACheckpoint:
        raise ConversionError(
            f"{p} is neither a Hugging Face model directory (config.json + model.safetensors[.index.json]) "
            "nor a checkpoint of this project (run dir, checkpoints dir, step dir or actor dir)"
        ) from None
    if provenance is not None:
        provenance.update(checkpoint=str(actor), step=checkpoint_step(actor))
    return convert_to_hf(actor, Path(work_dir) / "hf_model", dtype=dtype, overwrite=True)


__all__ = ["ConversionError", "is_hf_model_dir", "resolve_hf_model"]
