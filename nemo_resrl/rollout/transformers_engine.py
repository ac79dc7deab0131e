"""A rollout engine on transformers (``rollout.engine: transformers``): the same ``GenerationInterface`` as
vLLM's (``engine.py``) for the machines and models vLLM does not cover (no vLLM wheel for the torch or the
GPU at hand, an architecture vLLM does not support yet, a laptop GPU), on CPU or one GPU.

The model is the HF checkpoint's, colocated with the actor in this process; every rank holds a whole copy
(``rollout.tensor_parallel`` 1) and generates its own prompts. Generation is this module's loop over the
model with a KV cache (``DynamicCache``), all prompts x ``n`` samples in one left-padded batch, so that
sampling follows vLLM's semantics rather than ``generate``'s:

- logits / temperature, then top-k and top-p, sampled; each response token's log-prob is the
  ``processed`` one (the distribution sampled from, what ``logprobs_mode="processed_logprobs"`` gives in
  vLLM and what the actor reproduces at the same temperature); temperature 0 is greedy (log-probs of the
  untempered distribution);
- ``seed_mode: prompt``: prompt ``first_index + i`` draws its ``n`` samples from its own generator seeded
  with ``(seed x 1000003 + index) mod 2^31`` (vLLM's per-request seed), so samples do not depend on what
  else is in the batch or on the data-parallel split; ``step``: one generator per call;
- a response stops after an EOS token (kept, as vLLM does) or at ``min(max_tokens, max_model_len -
  prompt length)`` tokens (``truncated``).

``refit`` copies HF-named tensors (the actor's export stream) into the model's parameters in place and
checks that every parameter was written. ``sleep`` frees the parameters' storage (every wake is followed
by a refit that rewrites them, as with vLLM's sleep level 2); ``wake_up(["weights"])`` allocates them
again; the KV cache exists only inside ``generate``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from nemo_resrl.common import require
from nemo_resrl.compat import running_on_cpu
from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
from nemo_resrl.rollout.batch import RefitStats, RolloutBatch

log = logging.getLogger(__name__)
WAKE_TAGS = ("weights", "kv_cache")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def prompt_seed(seed: int, index: int) -> int:
    """vLLM's per-request seed of this project (``RolloutEngine._params``)."""
    return (seed * 1_000_003 + index) % (1 << 31)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """[B, V] float32 logits -> the log-probs of the distribution sampled from (-inf where top-k / top-p
    removed a token): log_softmax(logits / T) restricted to the top-k, then to the smallest set of the
    most likely tokens whose probability reaches top_p (the token that crosses it kept)."""
    x = logits / temperature if temperature > 0 else logits.clone()
    if top_k > 0 and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # the mass of the more likely tokens
        drop = before >= top_p
        x = x.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return torch.log_softmax(x, dim=-1)


class TransformersEngine:
    """See the module docstring. ``device``: where the model runs (default: the current CUDA device, else
    the CPU)."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        cfg: RolloutConfig,
        *,
        replica_width: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        from nemo_resrl.rollout.engine import _eos_ids, check_model_for_rollout

        require(
            cfg.tensor_parallel == 1,
            "rollout.engine=transformers runs a whole model on each rank: rollout.tensor_parallel must be "
            f"1, got {cfg.tensor_parallel}",
        )
        self.cfg = cfg
        self.path = Path(model_path)
        self.hf_config = check_model_for_rollout(self.path, cpu=False)
        self.vocab_size = int(self.hf_config["vocab_size"])
        self.eos_ids = _eos_ids(self.path)
        if device is None:
            device = "cpu" if running_on_cpu() else torch.device("cuda", torch.cuda.current_device())
        self.device = torch.device(device)
        dtype = "auto" if cfg.dtype == "auto" else _DTYPES[cfg.dtype]
        model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype)
        self.model = model.to(self.device).eval()
        self.params = dict(self.model.named_parameters())  # tied weights appear once
        self._shapes = {k: (p.shape, p.dtype) for k, p in self.params.items()}
        self._aliases = self._tied_aliases()
        self.awake = set(WAKE_TAGS)

    def _tied_aliases(self) -> dict[str, str]:
        """HF names of tensors tied to a parameter under another name (``lm_head.weight`` ->
        ``model.embed_tokens.weight`` with tied embeddings): a refit may stream either."""
        out = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            for canon, q in self.params.items():
                if q is p and canon != name:
                    out[name] = canon
        return out

    @property
    def asleep(self) -> bool:
        return self.awake != set(WAKE_TAGS)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig | None = None,
        *,
        first_index: int = 0,
    ) -> RolloutBatch:
        """``n`` responses for every prompt (token-id lists); see the module docstring."""
        from transformers import DynamicCache

        s = self.cfg.sampling if sampling is None else sampling.validate()
        prompts = [[int(t) for t in p] for p in prompts]
        require(not self.asleep, "the rollout engine is asleep: call wake_up() before generate()")
        require(first_index >= 0, f"first_index must be >= 0, got {first_index}")
        for i, p in enumerate(prompts):
            require(len(p) >= 1, f"prompt {i} is empty")
            require(
                len(p) < self.cfg.max_model_len,
                f"prompt {i} has {len(p)} tokens: no room to generate within max_model_len "
                f"{self.cfg.max_model_len}",
            )
            bad = [t for t in p if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(
                    f"prompt {i}: token id {bad[0]} outside the vocabulary [0, {self.vocab_size})"
                )
        if not prompts:
            empty = torch.zeros(0, dtype=torch.long)
            return RolloutBatch([], empty, [], [], empty.bool(), empty)
        dev, n = self.device, s.n
        rows = [p for p in prompts for _ in range(n)]
        budget = torch.tensor([min(s.max_tokens, self.cfg.max_model_len - len(p)) for p in rows], device=dev)
        gens = self._generators(s, len(prompts), first_index)
        width = max(len(p) for p in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, p in enumerate(rows):  # left-padded
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        # the prompt pass: only the last position's logits ([rows, V], not [rows, width, V])
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1].float()
        eos = torch.tensor(self.eos_ids if s.stop_on_eos else [], dtype=torch.long, device=dev)
        done = torch.zeros(len(rows), dtype=torch.bool, device=dev)
        tokens, logps = [], []
        next_pos = pos[:, -1]
        for t in range(int(budget.max())):
            logp = filter_logits(logits, s.temperature, s.top_k, s.top_p)
            tok = self._sample(logp, s.temperature, gens, n)
            tokens.append(tok)
            logps.append(logp.gather(-1, tok[:, None]).squeeze(-1))
            done = done | (t + 1 >= budget) | torch.isin(tok, eos)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            next_pos = next_pos + 1
            out = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                             past_key_values=cache, use_cache=True)  # fmt: skip
            logits = out.logits[:, -1].float()
        del cache, out, logits
        return self._batch(
            prompts, n, torch.stack(tokens, 1).cpu(), torch.stack(logps, 1).cpu(), budget.cpu(), eos.cpu()
        )

    def _generators(
        self, s: SamplingConfig, n_prompts: int, first_index: int
    ) -> list[torch.Generator] | None:
        """One generator per prompt (seed_mode prompt), one for the call (step), or None (unseeded)."""
        if s.seed is None:
            return None
        make = lambda seed: torch.Generator(device=self.device).manual_seed(seed)  # noqa: E731
        if s.seed_mode == "step":
            return [make(prompt_seed(s.seed, first_index))]
        return [make(prompt_seed(s.seed, first_index + i)) for i in range(n_prompts)]

    @staticmethod
    def _sample(logp: torch.Tensor, temperature: float, gens: list | None, n: int) -> torch.Tensor:
        if temperature == 0:
            return logp.argmax(-1)
        probs = logp.exp()
        if gens is None:
            return torch.multinomial(probs, 1).squeeze(-1)
        if len(gens) == 1:
            return torch.multinomial(probs, 1, generator=gens[0]).squeeze(-1)
        return torch.cat(
            [torch.multinomial(probs[i * n : (i + 1) * n], 1, generator=g) for i, g in enumerate(gens)]
        ).squeeze(-1)

    @staticmethod
    def _batch(prompts, n, tokens, logps, budget, eos) -> RolloutBatch:
        responses, lps, truncated = [], [], []
        for r in range(tokens.shape[0]):
            row = tokens[r].tolist()
            stop = next((j for j, t in enumerate(row) if t in set(eos.tolist())), None)
            length = stop + 1 if stop is not None else min(len(row), int(budget[r]))
            responses.append(row[:length])
            lps.append(logps[r, :length].float().clone())
            truncated.append(stop is None)
        return RolloutBatch(
            prompts=prompts,
            prompt_index=torch.arange(len(prompts)).repeat_interleave(n),
            responses=responses,
            logprobs=lps,
            truncated=torch.tensor(truncated, dtype=torch.bool),
            lengths=torch.tensor([len(x) for x in responses], dtype=torch.long),
        )

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def refit(self, weights: Iterable[tuple[str, torch.Tensor]]) -> RefitStats:
        """Copy HF-named tensors into the model in place; every parameter must be written."""
        require(
            "weights" in self.awake, "the rollout engine's weights are asleep: wake_up(['weights']) first"
        )
        t0 = time.perf_counter()
        written, n, nbytes = set(), 0, 0
        for name, tensor in weights:
            canon = self._aliases.get(name, name)
            p = self.params.get(canon)
            require(p is not None, f"refit: the rollout model has no parameter {name!r}")
            require(
                tuple(p.shape) == tuple(tensor.shape),
                f"refit: {name} has shape {tuple(tensor.shape)}, the rollout model's {tuple(p.shape)}",
            )
            p.copy_(tensor.to(p.device, p.dtype, non_blocking=True))
            written.add(canon)
            n += 1
            nbytes += tensor.numel() * tensor.element_size()
        missing = sorted(set(self.params) - written)
        require(not missing, f"refit: {len(missing)} parameter(s) were not written, e.g. {missing[:3]}")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return RefitStats(tensors=n, bytes=nbytes, calls=1, seconds=time.perf_counter() - t0)

    def sleep(self) -> None:
        """Free the parameters' storage (what the next refit rewrites) and the allocator's cache."""
        if "weights" in self.awake:
            for p in self.params.values():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self.awake = set()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Allocate ``tags`` again (``weights``: uninitialised until the refit; ``kv_cache``: nothing to do,
        the cache exists only inside ``generate``)."""
        want = set(WAKE_TAGS if tags is None else tags)
        require(want <= set(WAKE_TAGS), f"wake_up tags must be among {WAKE_TAGS}, got {sorted(want)}")
        if "weights" in want - self.awake:
            for name, p in self.params.items():
                shape, dtype = self._shapes[name]
                p.data = torch.empty(shape, dtype=dtype, device=self.device)
        self.awake |= want
