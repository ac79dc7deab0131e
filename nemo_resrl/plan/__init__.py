"""``nemo-resrl plan``: per-GPU memory of each phase of the step, the step's FLOPs and an estimated step
time, for a run configuration and the machines in its ``cluster`` section (docs/plan.md).

    arch.py         the model's numbers (HF config.json or actor.arch)
    params.py       parameter / gradient / master / optimizer bytes per rank, exactly megatron-core's layout
    activations.py  activations per token per layer, logits, log-prob chunks
    rollout.py      the vLLM engine: weights, KV cache, sequences it holds
    flops.py        FLOPs per token
    phases.py       the phases of the step per pipeline stage -> Plan
    fixes.py        a change that makes a failing phase fit
    report.py       the plan as text; cli.py the command (exit 0 fits, 3 does not)
"""

from nemo_resrl.plan.phases import PHASES, Plan, make_plan

__all__ = ["PHASES", "Plan", "make_plan"]
