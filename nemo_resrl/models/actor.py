"""The Megatron actor: a megatron-core GPT model built from a Hugging Face checkpoint through
megatron-bridge, laid out tensor x pipeline x data parallel; the trainer's ``PolicyInterface``.

The work is split by job, and this class wires the parts together:
- ``build.py``: the model (bridge, DDP, layer spec) and the optimizer with its LR schedule;
- ``forward.py``: layouts, megatron's schedule, chunked vocab-parallel log-probs at the sampling
  temperature, the layer L-2 hook (docs/algorithm.md §3), broadcasts between stages;
- ``train_step.py``: one optimizer step with the globally normalised policy loss;
- ``checkpoint.py``: dist-checkpoints (the model loads at any TP / PP layout);
- ``nemo_resrl.models.resrl_pass``: the ResRL weights riding on the old-log-prob pass.

Every call is collective over all ranks of the job. Data parallelism: each data-parallel rank passes
ITS share of the batch; all tensor / pipeline ranks of one data-parallel rank pass the same share.
Returned tensors are on the CPU and identical on all ranks of a model-parallel group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from nemo_resrl.algorithms.token_batch import PerToken
from nemo_resrl.config.actor import ActorConfig
from nemo_resrl.models import checkpoint
from nemo_resrl.models.batch import LogprobResult, Sequences, TokenOutputs
from nemo_resrl.models.build import build_model, build_optimizer
from nemo_resrl.models.forward import ForwardRunner, PenultimateChunk, PenultimateConsumer
from nemo_resrl.models.offload import ActorMemory
from nemo_resrl.models.reference import ReferenceWeights
from nemo_resrl.models.train_step import LossFunction, train_step

REFERENCE_DIR = "reference"  # inside the actor's checkpoint directory
__all__ = ["MegatronActor", "PenultimateChunk", "PenultimateConsumer", "TokenOutputs"]


class MegatronActor:
    """See the module docstring. Build with ``MegatronActor(cfg, temperature=T)`` on every rank, where T is
    the rollout's sampling temperature: every log-prob is of softmax(logits / T). ``reference=True`` (a KL
    penalty) keeps the initial weights as the reference policy (``reference.py``)."""

    def __init__(self, cfg: ActorConfig, *, temperature: float = 1.0, reference: bool = False):
        self.cfg = cfg
        self.model = build_model(cfg)
        self.optimizer, self.scheduler = build_optimizer(self.model)
        self.forward = ForwardRunner(self.model, temperature)
        self.memory = ActorMemory(cfg.offload, self.model.chunks, self.optimizer)
        self.step = 0  # optimizer steps taken (restored by load_checkpoint)
        # reference=True (a KL penalty): the initial weights, kept for the reference log-prob pass
        params = [p for c in self.model.chunks for p in c.parameters()]
        self.reference = ReferenceWeights(params) if reference else None

    # ------------------------------------------------------------------ facts
    @property
    def layout(self):
        return self.model.layout

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def hidden_size(self) -> int:
        return self.model.hidden_size

    @property
    def activation_bytes(self) -> int:
        """Bytes per element of the decoder layers' outputs (2 in bf16, 4 in fp32)."""
        return 2 if self.model.half_precision else 4

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def gpt(self) -> torch.nn.Module:
        return self.model.gpt

    # ------------------------------------------------------------------ PolicyInterface
    @property
    def temperature(self) -> float:
        """Log-probs are of softmax(logits / temperature), the rollout's sampling distribution."""
        return self.forward.temperature

    def logprobs(self, seqs: Sequences, *, resrl=None, reference: bool = False):
        """The old-log-prob pass; with a ``ResRLRequest`` the ResRL weights ride on it; with ``reference``
        the reference policy's log-probs follow it (``LogprobResult``)."""
        if resrl is None:
            out = LogprobResult(outputs=self.forward_logprobs(seqs))
        else:
            from nemo_resrl.models.resrl_pass import old_logprobs_with_resrl

            res = old_logprobs_with_resrl(self, seqs, resrl.meta, resrl.cfg, step=resrl.step)
            out = LogprobResult(outputs=res.outputs, weights=res.weights, stats=res.stats)
        if reference:
            if self.reference is None:
                raise ValueError("reference log-probs asked of an actor built without reference=True")
            with self.reference.swapped_in():
                out.ref_logprobs = self.forward_logprobs(seqs).logprobs
        return out

    def train_step(self, seqs: Sequences, batch: PerToken, loss_fn: LossFunction) -> dict[str, float]:
        """One optimizer step on this rank's share (``train_step.py``); metrics identical on all ranks."""
        self.memory.before_training()  # a no-op unless something is offloaded
        out = train_step(self.forward, self.optimizer, self.scheduler, seqs, batch, loss_fn)
        self.step += 1
        return out

    # the colocated memory lifecycle (``actor.offload``; ``offload.py``), in the trainer's phase order
    def prepare_for_logprobs(self) -> None:
        self.memory.before_forward()

    def prepare_for_training(self) -> None:
        self.memory.before_training()

    def prepare_for_refit(self) -> None:
        self.memory.after_training()

    def finish_refit(self) -> None:
        self.memory.after_refit()

    # ------------------------------------------------------------------ forward-only pass
    def forward_logprobs(
        self,
        seqs: Sequences,
        *,
        with_entropy: bool = False,
        penultimate_consumer: PenultimateConsumer | None = None,
        phases: list[int] | None = None,
    ) -> TokenOutputs:
        """Per-response-token log-probs [B, T] (``ForwardRunner.logprobs``)."""
        self.memory.before_forward()  # a no-op unless the parameters are offloaded
        return self.forward.logprobs(
            seqs, with_entropy=with_entropy, penultimate_consumer=penultimate_consumer, phases=phases
        )

    def owns_penultimate_layer(self) -> bool:
        return self.forward.owns_penultimate_layer()

    def combine_from_penultimate_stage(self, t: torch.Tensor, op: str) -> torch.Tensor:
        return self.forward.combine_from_penultimate_stage(t, op)

    # ------------------------------------------------------------------ weights out / checkpoints
    def export_weights(self, *, cpu: bool | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream the current weights as (HF name, full tensor); collective over all ranks. The refit's
        stream (``PolicyInterface.export_weights``) and conversion's. ``cpu``: the tensors on the CPU;
        None (the refit): on the actor's device (on a GPU the engine runs in this process and copies them
        device to device).

        A yielded tensor may share storage with a live parameter (when no gather or concatenation was
        needed): consume it, or copy it, before the next optimizer step.
        """
        self.memory.before_forward()
        cpu = self.device.type == "cpu" if cpu is None else cpu
        yield from self.model.bridge.export_hf_weights(self.model.chunks, cpu=cpu, show_progress=False)

    def save_hf(self, path: str | os.PathLike) -> None:
        """Write an HF directory (config, tokenizer if any, safetensors) that transformers loads."""
        self.memory.before_forward()
        self.model.bridge.save_hf_pretrained(self.model.chunks, str(path), show_progress=False)

    def save_checkpoint(
        self, path: str | os.PathLike, *, with_optimizer: bool = True, optim_sharding: str = "dp_reshardable"
    ) -> None:
        """Megatron dist-checkpoint of the model (and optimizer + LR schedule + step): ``checkpoint.py``."""
        self.memory.before_training()  # whatever is offloaded comes back first
        checkpoint.save_checkpoint(
            self.model,
            path,
            optimizer=self.optimizer if with_optimizer else None,
            scheduler=self.scheduler,
            step=self.step,
            optim_sharding=optim_sharding,
        )
        if self.reference is not None:  # the reference travels with the run (see models/reference.py)
            with self.reference.swapped_in():
                checkpoint.save_checkpoint(self.model, Path(path) / REFERENCE_DIR)

    def load_checkpoint(self, path: str | os.PathLike, *, with_optimizer: bool = True) -> None:
        """Load a dist-checkpoint written by ``save_checkpoint`` (model: any TP / PP layout)."""
        self.memory.before_training()
        step = checkpoint.load_checkpoint(
            self.model,
            path,
            optimizer=self.optimizer if with_optimizer else None,
            scheduler=self.scheduler,
        )
        if step is not None:
            self.step = step
        if self.reference is not None:
            ref = Path(path) / REFERENCE_DIR
            if not ref.is_dir():
                raise ValueError(
                    f"{path} holds no reference policy ({REFERENCE_DIR}/): it was saved without a KL "
                    "penalty; resuming with one would take another reference than the run started with"
                )
            self.reference.load_with(lambda: checkpoint.load_checkpoint(self.model, ref))
