"""Workarounds for megatron-bridge 0.3.1 with megatron's SequentialMLP experts under expert parallelism.

Without TransformerEngine, megatron-core builds a mixture-of-experts layer's experts as ``SequentialMLP``
(``mlp.experts.local_experts.<i>.linear_fc1.weight``, ``i`` local to the expert-parallel rank); with TE
they are one ``TEGroupedMLP`` (``mlp.experts.linear_fc1.weight<i>``). megatron-bridge 0.3.1 maps both
names to HF's per-expert tensors, but turns a local expert number into a global one only for the grouped
names:

- import: ``_megatron_local_name_to_global`` leaves ``local_experts.<i>`` local, so at expert parallel 2
  rank 1's local expert 0 is loaded with HF expert 0 instead of expert 4 (the logits then differ from
  transformers' by about 1.8 on the tiny test model);
- export: ``gather_from_ep_ranks`` reads the expert number after ``.weight`` (empty for SequentialMLP
  names) and fails.

``install()`` renumbers ``local_experts.<i>`` to ``local_experts.<rank x experts per rank + i>`` and
gives the export the same per-rank gather for SequentialMLP names. ``tests/models/test_moe.py`` (EP=2
logits against transformers, and the EP=2 export against EP=1) fails without it.
"""

from __future__ import annotations

import re

_LOCAL = re.compile(r"\.mlp\.experts\.local_experts\.(\d+)\.")
_installed = False


def install() -> None:
    """Patch megatron-bridge's expert renumbering and export gather (idempotent)."""
    global _installed
    if _installed:
        return
    import torch
    from megatron.bridge.models.conversion import model_bridge, param_mapping
    from megatron.core import parallel_state

    to_global = model_bridge._megatron_local_name_to_global

    def local_name_to_global(models, config, param_name, vp_stage=None):
        name = to_global(models, config, param_name, vp_stage)
        ep = parallel_state.get_expert_model_parallel_world_size()
        m = _LOCAL.search(name)
        if m is None or ep <= 1:
            return name
        per_rank = config.num_moe_experts // ep
        glob = per_rank * parallel_state.get_expert_model_parallel_rank() + int(m.group(1))
        return name[: m.start(1)] + str(glob) + name[m.end(1) :]

    gather = param_mapping.MegatronParamMapping.gather_from_ep_ranks

    def gather_from_ep_ranks(self, megatron_weights, megatron_module, hf_param_name):
        m = _LOCAL.search(str(self.megatron_param))
        if m is None:
            return gather(self, megatron_weights, megatron_module, hf_param_name)
        if megatron_module is None:
            per_rank = self.broadcast_obj_from_pp_rank(None, "num_experts_per_rank")
        else:
            per_rank = self._get_config(megatron_module).num_moe_experts // self.ep_size
            per_rank = self.broadcast_obj_from_pp_rank(per_rank, "num_experts_per_rank")
        local = int(m.group(1)) % per_rank
        names = [
            re.sub(r"experts\.(\d+)", f"experts.{local + per_rank * k}", str(hf_param_name))
            for k in range(self.ep_size)
        ]
        parts = [torch.empty_like(megatron_weights) for _ in range(self.ep_size)]
        torch.distributed.all_gather(parts, megatron_weights.contiguous(), group=self.ep_group)
        return dict(zip(names, parts, strict=True))

    model_bridge._megatron_local_name_to_global = local_name_to_global
    param_mapping.MegatronParamMapping.gather_from_ep_ranks = gather_from_ep_ranks
    _installed = True
