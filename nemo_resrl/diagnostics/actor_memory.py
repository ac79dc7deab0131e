"""The bytes a built Megatron actor holds for its training state, read off its tensors: what the plan's
``nemo_resrl.plan.params.actor_static`` predicts (tests/plan/test_params.py, and the one-device check)."""

from __future__ import annotations


def measured_bytes(actor) -> dict[str, int]:
    """What the built actor holds: parameter storage (the contiguous param buffers when the distributed
    optimizer has them, expert-parallel ones included; frozen parameters), the fp32 gradient buffers, the
    fp32 master copies and Adam's two moments."""
    from nemo_resrl.compat.megatron_optimizer import inner_adams

    params = grads = 0
    for chunk in actor.model.chunks:
        for b in [*chunk.buffers, *getattr(chunk, "expert_parallel_buffers", [])]:
            grads += b.grad_data.numel() * b.grad_data.element_size()
            if b.param_data is not None:
                params += b.param_data.numel() * b.param_data.element_size()
            else:
                params += sum(p.numel() * p.element_size() for p in b.params)
        # parameters without a gradient (a frozen mixture-of-experts router) are in no buffer
        params += sum(p.numel() * p.element_size() for p in chunk.parameters() if not p.requires_grad)
    master = 0
    for opt in getattr(actor.optimizer, "chained_optimizers", [actor.optimizer]):
        for name in ("shard_fp32_from_float16_groups", "fp32_from_float16_groups"):
            for group in getattr(opt, name, []):
                master += sum(t.numel() * t.element_size() for t in group)
    moments = 0
    for inner in inner_adams(actor.optimizer):
        for state in inner.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                moments += state[key].numel() * state[key].element_size()
    return {"params": params, "grads": grads, "master": master, "optimizer": moments}
