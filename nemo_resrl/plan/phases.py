"""The plan of one run configuration: per GPU and per phase of the step, each component of device memory;
the step's FLOPs and an estimated step time. docs/plan.md explains each term.

    plan = make_plan(cfg)          # a validated RunConfig (its ``cluster`` section: the machines)
    plan.fits, plan.failing        # every phase within the device; the phases that are not
    print(format_plan(plan))       # report.py

The phases follow the trainer's colocated lifecycle (docs/trainer.md): generation (the engine awake, the
actor's state resident unless ``actor.offload`` moves it), the old-log-prob pass (the engine asleep),
training, the refit (the engine's weights awake, its KV cache not yet), and a checkpoint save (the engine
asleep, every part of the actor's state on the device). Each phase is planned for every pipeline stage;
the report shows the stage that needs most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nemo_resrl.config import ConfigError, RunConfig
from nemo_resrl.plan.activations import (
    forward_working_bytes,
    layer_input_bytes,
    layer_token_bytes,
    logits_bytes,
    logprob_chunk_bytes,
)
from nemo_resrl.plan.arch import ModelArch, resolve_arch
from nemo_resrl.plan.flops import forward_flops_per_token, train_flops_per_token
from nemo_resrl.plan.params import ActorStatic, actor_static, stage_layers, stage_params
from nemo_resrl.plan.resrl import pass_bytes, pass_seconds, worst_case
from nemo_resrl.plan.rollout import (
    CUDA_GRAPHS_BYTES,
    MAX_NUM_SEQS,
    EngineMemory,
    engine_memory,
    hf_engine_memory,
)

GIB = 1 << 30
FP32 = 4
PHASES = ("generation", "old log-probs", "training", "refit", "checkpoint save")


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int


@dataclass
class Phase:
    """One phase on one pipeline stage: its components (bytes per GPU)."""

    name: str
    stage: int
    components: list[Component]

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.components)


@dataclass(frozen=True)
class JobLayout:
    """The planned job's parallel layout: actor TP x PP x DP (and EP / ETP), the rollout engine's TP."""

    tp: int
    pp: int
    dp: int
    rollout_tp: int
    world: int
    ep: int = 1  # expert parallel (mixture-of-experts models)
    etp: int = 1  # expert tensor parallel

    @property
    def moe(self) -> dict[str, int]:
        """The expert-parallel keyword arguments of the byte counts."""
        return {"ep": self.ep, "etp": self.etp}


@dataclass
class Plan:
    arch: ModelArch
    layout: JobLayout
    capacity: int  # device bytes
    margin: int
    phases: list[Phase]  # the worst stage of each phase, in PHASES order
    engine: EngineMemory
    facts: dict[str, float] = field(default_factory=dict)  # sizes the report prints
    seconds: dict[str, float] = field(default_factory=dict)  # estimated time per part of the step
    flops: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # phase -> why it cannot run, memory aside

    @property
    def failing(self) -> list[Phase]:
        return [p for p in self.phases if p.total + self.margin > self.capacity or p.name in self.problems]

    @property
    def fits(self) -> bool:
        return not self.failing

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)


def _dtype_bytes(dtype: str) -> int:
    return 2 if dtype in ("bf16", "fp16", "auto-bf16") else 4


def _resident(st: ActorStatic, keep_params: bool, keep_grads: bool, keep_optim: bool) -> list[Component]:
    """The actor's training state on the device: parameters, gradient buffer, optimizer state (each 0 when
    offloaded at that point of the step)."""
    return [
        Component(
            "actor parameters" + ("" if keep_params else " (offloaded)"), st.params if keep_params else 0
        ),
        Component(
            "actor gradient buffer (fp32)" + ("" if keep_grads else " (offloaded)"),
            st.grads if keep_grads else 0,
        ),
        Component(
            "actor fp32 master weights + Adam moments" + ("" if keep_optim else " (offloaded)"),
            st.master + st.optimizer if keep_optim else 0,
        ),
    ]


def layout_of(cfg: RunConfig) -> JobLayout:
    """The parallel layout of ``cfg`` on ``cfg.cluster``: data parallel = GPUs / (TP x PP)."""
    a, world = cfg.actor, cfg.cluster.world_size
    mp = a.tensor_parallel * a.pipeline_parallel
    if world % mp:
        raise ConfigError(
            f"actor.tensor_parallel x actor.pipeline_parallel = {mp} does not divide the cluster's {world} "
            "GPUs (cluster.nodes x cluster.gpus_per_node)"
        )
    ep, etp = a.expert_parallel, a.resolved_expert_tensor_parallel
    if (world // a.pipeline_parallel) % (ep * etp):
        raise ConfigError(
            f"actor.expert_parallel x expert_tensor_parallel = {ep * etp} does not divide the "
            f"{world // a.pipeline_parallel} GPUs of a pipeline stage"
        )
    return JobLayout(
        a.tensor_parallel,
        a.pipeline_parallel,
        world // mp,
        cfg.rollout.tensor_parallel,
        world,
        ep=ep,
        etp=etp,
    )


def make_plan(cfg: RunConfig, arch: ModelArch | None = None, *, te_available: bool = True) -> Plan:
    """Plan ``cfg`` (see the module docstring); ``arch``: the model (default: ``resolve_arch``);
    ``te_available``: whether TransformerEngine is installed where the job runs (``layer_spec: auto``
    builds the local layers without it)."""
    arch = arch or resolve_arch(cfg.actor)
    lay = layout_of(cfg)
    arch.check_layout(lay.tp, lay.pp, **lay.moe)
    a, r, c = cfg.actor, cfg.rollout, cfg.cluster
    p = _dtype_bytes(a.dtype)
    rp = p if r.dtype == "auto" else _dtype_bytes(r.dtype)
    spec = a.resolved_layer_spec(te_available, cuda=True)
    capacity = int(c.gpu_memory_gib * GIB)
    overhead = Component("CUDA context, NCCL, allocator", int(c.runtime_overhead_gib * GIB))

    # the batch
    s = r.sampling
    seq = a.max_tokens_per_row if a.pack_sequences else cfg.data.max_prompt_tokens + s.max_tokens
    seq = int(math.ceil(seq / a.token_multiple) * a.token_multiple)
    micro_tokens = a.micro_batch_size * seq
    responses_per_rank = math.ceil(cfg.trainer.prompts_per_step * s.n / lay.dp)
    per_update = math.ceil(responses_per_rank / cfg.trainer.mini_batches)
    micro_batches = max(1, math.ceil(per_update / a.micro_batch_size))

    hf = r.engine == "transformers"
    if hf:  # every rank generates its share of the step's sequences at once
        rows = math.ceil(cfg.trainer.prompts_per_step * s.n * lay.pp / lay.world)
        engine = hf_engine_memory(
            arch, p=rp, rows=rows, prompt_len=cfg.data.max_prompt_tokens, max_tokens=s.max_tokens
        )
        engine_name = "transformers engine"
        asleep = Component("transformers engine asleep", 0)
    else:
        engine = engine_memory(
            arch,
            tp=lay.rollout_tp,
            p=rp,
            device_bytes=capacity,
            utilization=r.gpu_memory_utilization,
            max_model_len=r.max_model_len,
            cuda_graphs=not r.enforce_eager,
        )
        engine_name = "vLLM"
        asleep = Component(
            "vLLM asleep (CUDA graphs pool)" if not r.enforce_eager else "vLLM asleep",
            CUDA_GRAPHS_BYTES if not r.enforce_eager else 0,
        )
    if not r.sleep_while_training:
        asleep = Component(f"{engine_name} (awake: rollout.sleep_while_training=false)", engine.budget)

    off = a.offload
    resrl = cfg.algorithm.spec.resrl_weights
    kl = cfg.algorithm.loss.kl_coef > 0
    penultimate_stage = max(0, arch.num_layers - 2) // (arch.num_layers // lay.pp)
    resrl_ranks = []

    per_stage: dict[str, list[Phase]] = {name: [] for name in PHASES}
    statics: list[ActorStatic] = []  # per pipeline stage
    for stage in range(lay.pp):
        st = actor_static(
            arch,
            tp=lay.tp,
            pp=lay.pp,
            dp=lay.dp,
            stage=stage,
            dtype_bytes=p,
            distributed_optimizer=a.optim.use_distributed_optimizer,
            spec=spec,
            freeze_router=a.moe.freeze_router,
            **lay.moe,
        )
        statics.append(st)
        params, grads, optim = _resident(st, True, True, True)
        layers = len(stage_layers(arch, lay.pp, stage))
        last = stage == lay.pp - 1

        def resident(keep_params: bool, keep_grads: bool, keep_optim: bool, st=st) -> list[Component]:
            return _resident(st, keep_params, keep_grads, keep_optim)

        # generation: the engine awake; the actor as the refit left it
        gen = [
            overhead,
            Component("transformers engine (weights, KV cache of every row, temporaries)", engine.budget)
            if hf
            else Component(f"vLLM (gpu_memory_utilization {r.gpu_memory_utilization})", engine.budget),
        ]
        gen += resident(not off.params, not off.grads, not off.optimizer)
        per_stage["generation"].append(Phase("generation", stage, gen))

        # old log-probs (+ ResRL, + reference): forward only, one micro-batch at a time
        lp = [overhead, asleep, *resident(True, not off.grads, not off.optimizer)]
        lp.append(
            Component(
                "forward working set (one micro-batch)",
                forward_working_bytes(
                    arch,
                    tp=lay.tp,
                    p=p,
                    tokens=micro_tokens,
                    seq_len=seq,
                    spec=spec,
                    attention=a.attention,
                    cuda=True,
                    **lay.moe,
                ),
            )
        )
        if last:
            lp.append(
                Component("logits of a micro-batch", logits_bytes(arch, tp=lay.tp, p=p, tokens=micro_tokens))
            )
            lp.append(
                Component(
                    "log-prob float32 chunks",
                    logprob_chunk_bytes(arch, tp=lay.tp, chunk_rows=a.logprob_chunk_rows),
                )
            )
        if resrl and stage == penultimate_stage:
            # the ResRL pass on the busiest rank of the stage: rows kept and received, a fit batch and its
            # workspace, the subspaces, the residuals (plan/resrl.py, byte-exact against the pass)
            resrl_ranks = worst_case(cfg, arch.hidden_size, p, lay.dp, lay.tp, micro_tokens)
            term = max(pass_bytes(sz, dims) for sz, dims in resrl_ranks)
            if resrl_ranks[0][0].deferred:
                layout = "deferred: negatives' rows kept"
            else:
                # a step smaller than the worst case may take the deferred layout: its kept negative rows
                # (at most the budget) come on top of moments no larger than the worst case's
                layout = "two-phase"
                term += int(cfg.algorithm.resrl.deferred_rows_mib * 2**20)
            lp.append(Component(f"ResRL ({layout}): sampled rows, fit, subspaces, residuals", term))
        if kl:
            largest = max(q.numel for q in stage_params(arch, lay.tp, lay.pp, stage, spec, **lay.moe))
            lp.append(Component("reference swap temporary", largest * p))
        per_stage["old log-probs"].append(Phase("old log-probs", stage, lp))

        # training: 1F1B keeps (pp - stage) micro-batches in flight on a stage
        in_flight = min(lay.pp - stage, micro_batches)
        if a.recompute == "full":
            kept = layers * layer_input_bytes(arch, p=p) * micro_tokens
            transient = (
                micro_tokens
                * layer_token_bytes(
                    arch, tp=lay.tp, p=p, seq_len=seq, spec=spec, attention=a.attention, cuda=True, **lay.moe
                )
                * 2
            )
        else:
            kept = (
                layers
                * layer_token_bytes(
                    arch, tp=lay.tp, p=p, seq_len=seq, spec=spec, attention=a.attention, cuda=True, **lay.moe
                )
                * micro_tokens
            )
            transient = micro_tokens * layer_token_bytes(
                arch, tp=lay.tp, p=p, seq_len=seq, spec=spec, attention=a.attention, cuda=True, **lay.moe
            )
        tr = [overhead, asleep, params, grads, optim]
        tr.append(
            Component(
                f"activations kept for backward ({in_flight} micro-batch(es) in flight)", in_flight * kept
            )
        )
        tr.append(Component("backward temporaries (one layer)", transient))
        if last:
            lg = logits_bytes(arch, tp=lay.tp, p=p, tokens=micro_tokens)
            tr.append(Component("logits kept + their gradient", in_flight * lg + lg))
            tr.append(
                Component(
                    "log-prob float32 chunks",
                    logprob_chunk_bytes(arch, tp=lay.tp, chunk_rows=a.logprob_chunk_rows),
                )
            )
        per_stage["training"].append(Phase("training", stage, tr))

        # refit: optimizer / gradients released if offloaded, the engine's weights awake, one full tensor
        largest_full = max(
            arch.vocab_size * arch.hidden_size, (arch.q_dim + 2 * arch.kv_dim) * arch.hidden_size
        )
        rf = [overhead, Component(f"{engine_name} weights (KV cache asleep)", engine.weights)]
        rf += resident(True, not off.grads, not off.optimizer)
        rf.append(Component("export: one tensor gathered over TP (+ copy)", 2 * largest_full * p))
        per_stage["refit"].append(Phase("refit", stage, rf))

        # checkpoint save: the engine asleep, everything of the actor on the device
        ck = [overhead, asleep, params, grads, optim]
        if kl:  # the reference is swapped in to be saved
            largest = max(q.numel for q in stage_params(arch, lay.tp, lay.pp, stage, spec, **lay.moe))
            ck.append(Component("reference swap temporary", largest * p))
        per_stage["checkpoint save"].append(Phase("checkpoint save", stage, ck))

    phases = [max(per_stage[name], key=lambda ph: ph.total) for name in PHASES]
    plan = Plan(arch, lay, capacity, int(c.margin_gib * GIB), phases, engine)

    # sizes and time
    n_seq = cfg.trainer.prompts_per_step * s.n
    engines = lay.world // lay.rollout_tp
    # every pipeline stage holds the same data-parallel replicas: its engines generate the same sequences
    per_engine = math.ceil(n_seq * lay.pp / engines)
    concurrent = max(1, min(MAX_NUM_SEQS, int(engine.kv_tokens // seq) if engine.kv_tokens else 0) or 1)
    waves = math.ceil(per_engine / concurrent)
    plan.facts.update(
        seq_len=seq,
        micro_batch_tokens=micro_tokens,
        micro_batches_per_update=micro_batches,
        responses_per_rank=responses_per_rank,
        sequences=n_seq,
        engines=engines,
        sequences_per_engine=per_engine,
        concurrent_sequences=concurrent,
        waves=waves,
        params=arch.total_params,
    )
    peak = c.gpu_bf16_tflops * 1e12
    fwd = forward_flops_per_token(arch, seq)
    tokens = n_seq * seq
    prompt_tokens = cfg.trainer.prompts_per_step * cfg.data.max_prompt_tokens
    plan.flops["generation"] = (
        prompt_tokens * forward_flops_per_token(arch, cfg.data.max_prompt_tokens) + n_seq * s.max_tokens * fwd
    )
    passes = 1 + int(kl) + (1 if cfg.trainer.lld_every == 1 else 0)
    plan.flops["log-prob passes"] = passes * tokens * fwd
    plan.flops["training"] = tokens * train_flops_per_token(arch, seq, recompute=a.recompute == "full")
    prefill = (
        prompt_tokens * forward_flops_per_token(arch, cfg.data.max_prompt_tokens) / (lay.world * peak * c.mfu)
    )
    kv_read = concurrent * (seq / 2) * engine.kv_per_token
    decode_step = (engine.weights + kv_read) / (c.hbm_gbps * 1e9)
    plan.seconds["generation"] = prefill + waves * s.max_tokens * decode_step
    plan.seconds["log-prob passes"] = plan.flops["log-prob passes"] / (lay.world * peak * c.mfu)
    if resrl_ranks:  # every rank of the L-2 stage fits its share at once: the slowest one counts
        plan.seconds["ResRL fits"] = max(
            pass_seconds(sz, dims, c.gpu_fp32_tflops) for sz, dims in resrl_ranks
        )
    plan.seconds["training"] = plan.flops["training"] / (lay.world * peak * c.mfu)
    st0 = statics[0]
    dp_bw = (
        c.network_gbps if c.nodes > 1 and lay.dp > 1 and lay.tp * lay.pp < c.world_size else c.nvlink_gbps
    ) * 1e9
    sync_bytes = (st0.grads + st0.params) * (lay.dp - 1) / max(1, lay.dp)
    plan.seconds["gradient sync"] = cfg.trainer.mini_batches * sync_bytes / dp_bw
    plan.seconds["refit"] = engine.weights / (c.hbm_gbps * 1e9) + (
        engine.weights * (lay.tp - 1) / (c.nvlink_gbps * 1e9)
    )
    # actor.offload: what is copied to the host and back each step (the gradient buffer is only freed)
    copied = (st0.master + st0.optimizer) * off.optimizer + st0.params * off.params
    if copied:
        plan.seconds["offload"] = 2 * copied / (c.pcie_gbps * 1e9)
    if not hf and engine.kv_tokens < r.max_model_len:
        plan.problems["generation"] = (
            f"vLLM's {engine.budget / GIB:.1f} GiB (gpu_memory_utilization {r.gpu_memory_utilization}) leave "
            f"no KV cache for one sequence of max_model_len {r.max_model_len} after its weights "
            f"({engine.weights / GIB:.1f} GiB) and profiling activations: the engine would not start"
        )
    moved = [
        n
        for n, on in (
            ("optimizer state", off.optimizer),
            ("gradient buffer", off.grads),
            ("parameters", off.params),
        )
        if on
    ]
    if moved:
        plan.notes.append(
            f"actor.offload: the {', '.join(moved)} leave the device while the {engine_name} holds it "
            "(0 above)"
        )
    if not r.sleep_while_training:
        plan.notes.append(
            "rollout.sleep_while_training=false: the engine keeps its memory while the actor trains"
        )
    if spec == "te":
        plan.notes.append("TransformerEngine activation sizes are estimated, not measured (docs/plan.md)")
    return plan
