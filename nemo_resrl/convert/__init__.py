"""Checkpoint conversion: Megatron dist-checkpoints of this project <-> Hugging Face directories,
streamed tensor by tensor (``to_hf``, ``from_hf``), and ``resolve_hf_model`` for tools that take either."""
