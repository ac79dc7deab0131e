"""The plan as text: one column per phase, one row per memory component (GiB per GPU), the KV cache, the
step's FLOPs and time, and the verdict with a change that makes a failing phase fit."""

from __future__ import annotations

from nemo_resrl.plan.phases import GIB, PHASES, Plan


def _gib(n: float) -> str:
    return f"{n / GIB:6.1f}"


def format_plan(plan: Plan, cfg_summary: str = "", fixes: dict[str, str] | None = None) -> str:
    a, lay, e = plan.arch, plan.layout, plan.engine
    mlp = (
        f"{a.num_experts} experts ({a.experts_per_token} per token, ffn {a.moe_intermediate_size})"
        if a.is_moe
        else f"ffn {a.intermediate_size}"
    )
    experts = f" EP={lay.ep} ETP={lay.etp}" if a.is_moe else ""
    lines = [
        f"model: {a.num_layers} layers, hidden {a.hidden_size}, {a.num_attention_heads} heads "
        f"({a.num_key_value_heads} KV), {mlp}, vocab {a.vocab_size}, "
        f"{plan.facts['params'] / 1e9:.2f} B parameters (from {a.source})",
        f"layout: {lay.world} GPUs, actor TP={lay.tp} PP={lay.pp}{experts} DP={lay.dp}, "
        f"rollout TP={lay.rollout_tp}" + (f"; {cfg_summary}" if cfg_summary else ""),
        f"batch: {plan.facts['sequences']} sequences of up to {plan.facts['seq_len']} tokens per step; "
        f"{plan.facts['responses_per_rank']} per data-parallel rank; micro-batches of "
        f"{plan.facts['micro_batch_tokens']} tokens, {plan.facts['micro_batches_per_update']} per update",
        "",
        "per GPU, GiB (the pipeline stage that needs most)",
    ]
    names: list[str] = []
    for ph in plan.phases:
        for c in ph.components:
            if c.name not in names:
                names.append(c.name)
    width = max(len(n) for n in names) + 2
    lines.append(" " * width + "".join(f"{name[:15]:>16}" for name in PHASES))
    for n in names:
        cells = []
        for ph in plan.phases:
            v = next((c.bytes for c in ph.components if c.name == n), None)
            cells.append(f"{'-':>16}" if v is None else f"{_gib(v):>16}")
        lines.append(f"{n:<{width}}" + "".join(cells))
    lines.append(f"{'total':<{width}}" + "".join(f"{_gib(ph.total):>16}" for ph in plan.phases))
    lines.append(f"{'pipeline stage':<{width}}" + "".join(f"{ph.stage:>16}" for ph in plan.phases))
    lines.append(
        f"{'free of ' + format(plan.capacity / GIB, '.1f') + ' GiB':<{width}}"
        + "".join(f"{_gib(plan.capacity - ph.total):>16}" for ph in plan.phases)
    )
    f = plan.facts
    lines += [
        "",
        f"{e.name} per engine: weights {e.weights / GIB:.1f} GiB, KV cache {e.kv_cache / GIB:.1f} GiB = "
        f"{e.kv_tokens / 1e6:.2f} M tokens at {e.kv_per_token / 1024:.0f} KiB per token = {e.sequences:.0f} "
        f"sequences of max_model_len {e.max_model_len}; a step generates {f['sequences_per_engine']} "
        f"sequences per engine ({f['engines']} engines), {f['concurrent_sequences']} at a time: "
        f"{f['waves']} wave(s)",
        "FLOPs per step: " + ", ".join(f"{k} {v / 1e15:.1f} PFLOP" for k, v in plan.flops.items()),
        "estimated step time: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in plan.seconds.items())
        + f"; total {sum(plan.seconds.values()):.1f} s (decoding bound by memory bandwidth; the rest at "
        "cluster.mfu)",
    ]
    lines += [f"note: {n}" for n in plan.notes]
    lines.append("")
    lines += verdict_lines(plan, fixes)
    return "\n".join(lines)


def verdict_lines(plan: Plan, fixes: dict[str, str] | None = None) -> list[str]:
    """The plan's last lines: that every phase fits, or one line per failing phase with what it needs and
    the change (``fixes``) that makes it fit."""
    if plan.fits:
        worst = min(plan.phases, key=lambda ph: plan.capacity - ph.total)
        return [
            f"fits: every phase is within {plan.capacity / GIB:.1f} GiB per GPU (smallest margin "
            f"{(plan.capacity - worst.total) / GIB:.1f} GiB, in {worst.name})"
        ]
    lines = []
    for ph in plan.failing:
        fix = (fixes or {}).get(ph.name)
        why = plan.problems.get(ph.name)
        head = (
            f"does not fit: {ph.name}: {why}"
            if why and ph.total + plan.margin <= plan.capacity
            else f"does not fit: {ph.name} needs {ph.total / GIB:.1f} GiB on pipeline stage {ph.stage} "
            f"(limit {(plan.capacity - plan.margin) / GIB:.1f} GiB)" + (f"; {why}" if why else "")
        )
        lines.append(head + (f"; {fix}" if fix else "; no single change tried makes it fit (docs/plan.md)"))
    return lines
