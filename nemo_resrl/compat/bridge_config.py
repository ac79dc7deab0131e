"""Workaround for megatron-bridge 0.3.1 with transformers 5: the rotary base.

transformers 5 keeps ``rope_theta`` only in ``config.rope_parameters``; megatron-bridge 0.3.1 reads
``config.rope_theta``, finds nothing and keeps its default base 10000 (Qwen3 needs 1e6, Llama 3 5e5,
SmolLM2 1e5): the model would run with the wrong rotary frequencies. ``tests/models/test_embedded.py``
(the actor's logits equal the GGUF-loaded SmolLM2's) fails without it (logits off by about 10).
"""

from __future__ import annotations


def rope_theta(hf: dict) -> float | None:
    """The rotary base of an HF config dict: ``rope_theta`` (transformers 4) or
    ``rope_parameters["rope_theta"]`` (transformers 5)."""
    theta = hf.get("rope_theta")
    if theta is None:
        theta = (hf.get("rope_parameters") or {}).get("rope_theta")
    return float(theta) if theta is not None else None


def fix_rotary_base(provider, hf: dict) -> None:
    """Set the bridge's model provider's rotary base from the HF config (module docstring)."""
    theta = rope_theta(hf)
    if theta is not None:
        provider.rotary_base = theta
