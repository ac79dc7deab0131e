"""Fakes behind the trainer's interfaces, for fast tests of its orchestration (``test_trainer.py``).

They are small but real: ``BigramPolicy`` is a trainable bigram language model (logits of token t from
token t-1) whose "penultimate representation" is the embedding of the previous token, trained with the
project's policy loss and ResRL weights (the single-process ``compute_resrl_weights``); ``BigramEngine``
samples from its own copy of the same model (seeded per prompt, as vLLM is), so the consistency metric
is exactly 1 until a refit is missed. ``ThreadDataParallel`` runs several trainers in threads as
data-parallel ranks. Every call is appended to a shared ``events`` list, so tests can check the order.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from dataclasses import replace

import torch

from nemo_resrl.algorithms.resrl import compute_resrl_weights
from nemo_resrl.algorithms.token_batch import PerToken, local_counts
from nemo_resrl.config import (
    AlgorithmConfig,
    ResRLConfig,
    RolloutConfig,
    RunConfig,
    SamplingConfig,
    TrainerConfig,
)
from nemo_resrl.models.batch import Sequences, TokenOutputs
from nemo_resrl.rewards.base import RewardResult
from nemo_resrl.rollout.batch import RefitStats, RolloutBatch
from nemo_resrl.training.interfaces import LogprobResult

VOCAB, HIDDEN, EOS = 16, 8, 0


class BigramPolicy:
    """A bigram LM trained by the project's loss; see the module docstring."""

    def __init__(
        self,
        temperature: float = 1.0,
        lr: float = 0.05,
        seed: int = 0,
        events: list | None = None,
        reference: bool = False,
    ):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN, generator=g))
        self.out = torch.nn.Parameter(torch.randn(HIDDEN, VOCAB, generator=g))
        # reference=True: the initial weights, the reference policy of a KL penalty (saved in checkpoints)
        self.reference = (self.emb.detach().clone(), self.out.detach().clone()) if reference else None
        self.opt = torch.optim.Adam([self.emb, self.out], lr=lr)
        self.temperature = temperature
        self.events = events if events is not None else []
        self.train_calls: list[dict] = []  # what each train_step received
        self.logprob_calls: list[dict] = []

    # the model
    def _logits(self, prev: torch.Tensor) -> torch.Tensor:
        return (self.emb[prev] @ self.out) / self.temperature

    def _token_logprobs(self, seqs: Sequences) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logp [B, T] with grad, hidden [B, T, d], mask [B, T]) of the response tokens."""
        ids, mask = seqs.response_tokens()
        B, T = mask.shape
        prev = torch.zeros(B, T, dtype=torch.long)
        for i, (tok, p) in enumerate(zip(seqs.tokens, seqs.prompt_lens)):
            n = tok.numel() - p
            prev[i, :n] = tok[p - 1 : p - 1 + n]
        logp = torch.log_softmax(self._logits(prev), dim=-1).gather(-1, ids.clamp_min(0)[..., None])[..., 0]
        return logp * mask, self.emb[prev].detach(), mask

    # PolicyInterface
    def _reference_logprobs(self, seqs: Sequences) -> torch.Tensor:
        if self.reference is None:
            raise ValueError("reference log-probs asked of a policy built without reference=True")
        own = (self.emb.detach().clone(), self.out.detach().clone())
        with torch.no_grad():
            self.emb.copy_(self.reference[0])
            self.out.copy_(self.reference[1])
            logp = self._token_logprobs(seqs)[0].float()
            self.emb.copy_(own[0])
            self.out.copy_(own[1])
        return logp

    def logprobs(self, seqs: Sequences, *, resrl=None, reference: bool = False) -> LogprobResult:
        self.events.append("policy.logprobs" + ("+resrl" if resrl is not None else ""))
        with torch.no_grad():
            logp, hidden, mask = self._token_logprobs(seqs)
        out = TokenOutputs(logprobs=logp.float(), entropy=None, mask=mask)
        self.logprob_calls.append({"n": len(seqs), "resrl": resrl is not None, "reference": reference})
        ref = self._reference_logprobs(seqs) if reference else None
        if resrl is None:
            return LogprobResult(outputs=out, ref_logprobs=ref)
        res = compute_resrl_weights(
            hidden,
            mask,
            resrl.meta.group_ids,
            resrl.meta.advantages,
            resrl.cfg,
            step=resrl.step,
            response_ids=resrl.meta.response_ids,
            positive=resrl.meta.positive,
        )
        return LogprobResult(outputs=out, weights=res.weights, stats=res.stats, ref_logprobs=ref)

    def train_step(self, seqs, batch: PerToken, loss_fn) -> dict[str, float]:
        self.events.append("policy.train_step")
        old_logprobs, advantages, mask = batch.old_logprobs, batch.advantages, batch.mask
        ref_logprobs, is_weights = batch.ref_logprobs, batch.is_weights
        self.train_calls.append(
            {
                "seqs": seqs,
                "old": old_logprobs.clone(),
                "adv": advantages.clone(),
                "mask": mask.clone(),
                "ref": None if ref_logprobs is None else ref_logprobs.clone(),
                "is_weights": None if is_weights is None else is_weights.clone(),
                "loss_cfg": loss_fn.cfg,
            }
        )
        logp, _, resp_mask = self._token_logprobs(seqs)
        masked = batch.masked(resp_mask)
        loss, metrics = loss_fn(logp, None, masked, local_counts(masked.mask))
        self.opt.zero_grad()
        loss.backward()
        grad_norm = torch.cat([p.grad.flatten() for p in (self.emb, self.out)]).norm()
        self.opt.step()
        out = {k: float(v) for k, v in metrics.items()}
        out.update(grad_norm=float(grad_norm), lr=self.opt.param_groups[0]["lr"], update_ok=1.0)
        return out

    def export_weights(self):
        self.events.append("policy.export_weights")
        yield "emb", self.emb.detach().clone()
        yield "out", self.out.detach().clone()

    # the memory lifecycle: recorded (the Megatron actor's is tested in tests/models/test_offload.py)
    def prepare_for_logprobs(self) -> None:
        self.events.append("policy.prepare_for_logprobs")

    def prepare_for_training(self) -> None:
        self.events.append("policy.prepare_for_training")

    def prepare_for_refit(self) -> None:
        self.events.append("policy.prepare_for_refit")

    def finish_refit(self) -> None:
        self.events.append("policy.finish_refit")

    # what the run's checkpoints need
    def save_checkpoint(self, path) -> None:
        self.events.append("policy.save_checkpoint")
        path.mkdir(parents=True, exist_ok=True)
        state = {"emb": self.emb.detach(), "out": self.out.detach(), "opt": self.opt.state_dict()}
        state["reference"] = self.reference
        torch.save(state, path / "policy.pt")

    def load_checkpoint(self, path) -> None:
        state = torch.load(path / "policy.pt", weights_only=False)
        with torch.no_grad():
            self.emb.copy_(state["emb"])
            self.out.copy_(state["out"])
        self.opt.load_state_dict(state["opt"])
        if self.reference is not None:
            if state.get("reference") is None:
                raise ValueError(f"{path} holds no reference policy")
            self.reference = state["reference"]


class BigramEngine:
    """Samples from its own copy of a ``BigramPolicy``'s weights; see the module docstring."""

    def __init__(self, policy: BigramPolicy, events: list | None = None):
        self.emb = policy.emb.detach().clone()
        self.out = policy.out.detach().clone()
        self.awake = {"weights", "kv_cache"}
        self.events = events if events is not None else policy.events
        self.generated: list[dict] = []  # the prompts and first index of each generate call
        self.refits = 0

    def generate(self, prompts, sampling, *, first_index: int = 0) -> RolloutBatch:
        assert self.awake == {"weights", "kv_cache"}, f"generate() with only {self.awake} awake"
        self.events.append("engine.generate")
        self.generated.append({"prompts": [list(p) for p in prompts], "first_index": first_index})
        idx, resp, lps, trunc = [], [], [], []
        for i, p in enumerate(prompts):
            g = torch.Generator()
            if sampling.seed is not None:
                g.manual_seed(sampling.seed * 1_000_003 + first_index + i)
            for _ in range(sampling.n):
                prev, toks, lp = int(p[-1]), [], []
                for _ in range(sampling.max_tokens):
                    logits = self.emb[prev] @ self.out
                    if sampling.temperature == 0:
                        t = int(logits.argmax())
                        lp.append(float(torch.log_softmax(logits, -1)[t]))
                    else:
                        logps = torch.log_softmax(logits / sampling.temperature, -1)
                        t = int(torch.multinomial(logps.exp(), 1, generator=g))
                        lp.append(float(logps[t]))
                    toks.append(t)
                    prev = t
                    if sampling.stop_on_eos and t == EOS:
                        break
                idx.append(i)
                resp.append(toks)
                lps.append(torch.tensor(lp))
                trunc.append(not (sampling.stop_on_eos and toks[-1] == EOS))
        return RolloutBatch(
            prompts=[list(p) for p in prompts],
            prompt_index=torch.tensor(idx, dtype=torch.long),
            responses=resp,
            logprobs=lps,
            truncated=torch.tensor(trunc),
            lengths=torch.tensor([len(r) for r in resp]),
        )

    def refit(self, weights: Iterable[tuple[str, torch.Tensor]]) -> RefitStats:
        assert "weights" in self.awake, "refit() with the weights asleep"
        self.events.append("engine.refit")
        n = b = 0
        for name, t in weights:
            getattr(self, name).copy_(t)
            n, b = n + 1, b + t.numel() * t.element_size()
        self.refits += 1
        return RefitStats(tensors=n, bytes=b, calls=1, seconds=0.0)

    def sleep(self) -> None:
        self.events.append("engine.sleep")
        self.awake = set()

    def wake_up(self, tags=None) -> None:
        want = set(tags or ("weights", "kv_cache"))
        if want - self.awake:
            self.events.append("engine.wake_up:" + ",".join(sorted(want - self.awake)))
        self.awake |= want


def even_first_token(rollout: RolloutBatch, records) -> RewardResult:
    """Reward 1 when a response starts with an even token id; a record may force its group's outcome
    with ``"force": 0 | 1`` (a group without reward variance)."""
    rewards = []
    for p, r in zip(rollout.prompt_index.tolist(), rollout.responses):
        force = records[p].get("force")
        rewards.append(float(force) if force is not None else float(len(r) > 0 and r[0] % 2 == 0))
    t = torch.tensor(rewards)
    return RewardResult(t, t > 0, collections.Counter(ok=len(rewards)))


def prompts(n: int, seed: int = 0, **extra) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"prompt_ids": torch.randint(1, VOCAB, (3,), generator=g).tolist(), **extra} for _ in range(n)]


class ThreadGroup:
    """The shared state of ``size`` data-parallel ranks running in threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=30)
        self.slots: list = [None] * size


class ThreadDataParallel:
    """``DataParallelInterface`` over threads: all-gather through shared slots and a barrier."""

    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.size = group, rank, group.size

    def all_gather(self, obj):
        g = self.group
        g.slots[self.rank] = obj
        g.barrier.wait()
        out = list(g.slots)
        g.barrier.wait()  # everyone has read before the slots are reused
        return out

    def sum(self, values: list[float]) -> list[float]:
        return [float(sum(col)) for col in zip(*self.all_gather(list(values)))]


def fake_run_config(run_dir, steps: int, algorithm: AlgorithmConfig | None = None, **checkpoint) -> RunConfig:
    """A run of the fakes: ResRL (or ``algorithm``), 4 prompts x 4 responses, eval every 2 steps, a
    checkpoint every step."""
    cfg = RunConfig()
    cfg.actor.hf_path = "fake"
    cfg.rollout = RolloutConfig(sampling=SamplingConfig(n=4, temperature=1.0, max_tokens=5, seed=0))
    cfg.algorithm = algorithm or AlgorithmConfig.preset("resrl", resrl=ResRLConfig(max_rows=64, rank=4))
    cfg.trainer = TrainerConfig(steps=steps, prompts_per_step=4, eval_every=2, eval_prompts=3)
    cfg.checkpoint = replace(cfg.checkpoint, **{"every": 1, "keep_last": 2, **checkpoint})
    cfg.logging.run_dir, cfg.logging.tensorboard, cfg.logging.progress = str(run_dir), False, False
    return cfg.validate()


def fake_run(
    run_dir,
    steps: int,
    *,
    policy: BigramPolicy | None = None,
    reward=None,
    algorithm: AlgorithmConfig | None = None,
    **checkpoint,
) -> list[dict]:
    """``run_training`` of the fakes in ``run_dir`` (``fake_run_config``); returns the history."""
    from nemo_resrl.training.data_parallel import SingleProcess
    from nemo_resrl.training.loop import run_training

    policy = policy or BigramPolicy(seed=0)
    cfg = fake_run_config(run_dir, steps, algorithm, **checkpoint)
    return run_training(
        cfg,
        policy,
        BigramEngine(policy),
        reward or even_first_token,
        prompts(6),
        dp=SingleProcess(),
        eval_records=prompts(3, seed=9),
        print_fn=lambda s: None,
    )


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in history]
