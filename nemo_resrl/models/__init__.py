"""The Megatron actor: building from HF via megatron-bridge, forward-only log-prob + penultimate capture,
train step, checkpoints (``docs/actor.md``)."""
