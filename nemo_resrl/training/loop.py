"""The training run around ``Trainer.train_step``: resume, the step loop, evaluation, checkpoints, the
metrics files, the per-step table, and the stop protocol (``stop.py``). ``nemo-resrl train`` builds the
pieces from the config (``nemo_resrl/launch.py``) and calls ``run_training``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from nemo_resrl.common import barrier, is_rank0
from nemo_resrl.config.run import RunConfig
from nemo_resrl.runs.checkpoints import CheckpointManager
from nemo_resrl.runs.run_dir import RunDirLock, claim_run_dir
from nemo_resrl.training.data_order import step_records
from nemo_resrl.training.interfaces import DataParallelInterface, GenerationInterface
from nemo_resrl.training.metrics_log import (
    MetricsLog,
    Progress,
    format_row,
    require_logging_backends,
)
from nemo_resrl.training.stop import PREEMPTED_FILE, Preempted, StopRequest
from nemo_resrl.training.trainer import RewardFn, Trainer

logger = logging.getLogger(__name__)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj) + "\n")
    os.replace(tmp, path)


# keys a checkpoint's run must share with the run that resumes it (prefixes of dotted config keys)
RESUME_KEYS = (
    "algorithm.name",
    "actor.hf_path",
    "actor.arch",
    "actor.dtype",
    "actor.tensor_parallel",
    "actor.pipeline_parallel",
    "actor.expert_parallel",
    "data.source",
    "data.path",
    "data.task",
    "data.size",
    "data.seed",
    "data.prompt_key",
    "data.answer_key",
    "data.prompt_template",
    "data.system_prompt",
    "data.chat_template",
    "trainer.prompts_per_step",
    "rollout.sampling.n",
    "rollout.sampling.max_tokens",
    "reward.name",
    "reward.incorrect",
    "reward.shaping",
)


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumed_config(checkpoint: Path, cfg: RunConfig) -> list[str]:
    """The keys of ``RESUME_KEYS`` on which ``cfg`` differs from the config ``checkpoint`` was trained
    with (its ``config.json``). Refused with ``ConfigError`` unless ``checkpoint.allow_config_change``;
    then warned about and returned (the first step logs ``checkpoint/config_changed``)."""
    from nemo_resrl.config.keys import ConfigError
    from nemo_resrl.runs.checkpoints import CONFIG_FILE

    recorded = checkpoint / CONFIG_FILE
    if not recorded.is_file():
        logger.warning(
            "%s records no config (an older checkpoint): its run's config is not checked", checkpoint
        )
        return []
    old = _flat(json.loads(recorded.read_text()))
    new = _flat(json.loads(json.dumps(asdict(cfg), default=str)))
    watched = [k for k in sorted(set(old) | set(new)) if any(k == p or k.startswith(p) for p in RESUME_KEYS)]
    changed = [k for k in watched if old.get(k) != new.get(k)]
    if not changed:
        return []
    lines = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
    if not cfg.checkpoint.allow_config_change:
        raise ConfigError(
            f"{checkpoint} was trained with another config ({lines}): resuming would mix two runs in one "
            "directory. Use another logging.run_dir, checkpoint.start_over=true to move this run aside, or "
            "checkpoint.allow_config_change=true if the change is intended"
        )
    logger.warning("resuming %s, config changed (checkpoint.allow_config_change): %s", checkpoint, lines)
    return changed


def run_training(
    cfg: RunConfig,
    policy,
    engine: GenerationInterface,
    reward_fn: RewardFn,
    records: Sequence[dict],
    *,
    dp: DataParallelInterface,
    eval_records: Sequence[dict] | None = None,
    print_fn: Callable[[str], None] = print,
    run_lock: RunDirLock | None = None,
    stop: StopRequest | None = None,
) -> list[dict]:
    """Train ``cfg.trainer.steps`` steps (resuming from the latest checkpoint if enabled); returns the
    per-step metrics of the whole run.

    ``policy`` implements ``PolicyInterface`` plus ``save_checkpoint(path)`` / ``load_checkpoint(path)``
    (the checkpoints). With ``trainer.eval_every`` > 0 and ``eval_records``, greedy accuracy on them is
    measured after every ``eval_every``-th step and the last one (``eval/`` keys of that step's row). A
    stop request (``stop.py``) ends the run after the current step with a checkpoint of it, and raises
    ``Preempted``.

    ``run_lock``: the run directory's lock, already claimed (``nemo-resrl train`` claims it before building
    anything); without one, rank 0 claims it here (``run_dir.py``). ``stop``: the stop protocol, already
    armed (``nemo-resrl train`` arms it at its first line); without one it is armed here.
    """
    run_dir = Path(cfg.logging.run_dir)
    own_lock = None
    if run_lock is None and is_rank0():
        own_lock = claim_run_dir(run_dir, resume=cfg.checkpoint.resume, start_over=cfg.checkpoint.start_over)
    try:
        return _run(cfg, policy, engine, reward_fn, records, dp, eval_records, print_fn, stop)
    finally:
        if own_lock is not None:
            own_lock.release()


def _plot_curves(run_dir: Path, print_fn) -> None:
    """The training curves of every step so far (resumes included) as PNG files in RUN_DIR/plots. A machine
    without matplotlib (a lent GPU carries only what the run needs) skips them and says how to draw them
    later: the run's work is saved by then, a missing plotting library must not fail it."""
    from nemo_resrl.plotting import load_run, plot_runs

    try:
        plots = plot_runs([load_run(run_dir)], run_dir / "plots")
    except ImportError as e:
        print_fn(
            f"training curves: skipped ({e}); `nemo-resrl plot {run_dir}` draws them where it is installed"
        )
        return
    print_fn(f"training curves: {run_dir / 'plots'} ({len(plots['written'])} PNG files)")


def _run(cfg, policy, engine, reward_fn, records, dp, eval_records, print_fn, stop) -> list[dict]:
    run_dir = Path(cfg.logging.run_dir)
    require_logging_backends(cfg.logging.tensorboard, cfg.logging.wandb)
    ckpt = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last)
    per_step, seed = cfg.trainer.prompts_per_step, cfg.trainer.seed
    extra_rounds = max(1, cfg.algorithm.dynamic_sampling.max_rounds - 1)

    def refill(step: int, round_: int) -> list[dict]:  # a second shuffled stream, position (step, round)
        return step_records(records, step * extra_rounds + round_ - 1, per_step, seed + 1)

    progress = Progress(cfg.logging.progress, cfg.trainer.steps, 0, print_fn)
    trainer = Trainer(
        policy,
        engine,
        reward_fn,
        algorithm=cfg.algorithm,
        trainer=cfg.trainer,
        rollout=cfg.rollout,
        dp=dp,
        reward=cfg.reward,
        refill=refill,
        on_phase=progress.phase,
    )
    history: list[dict] = []
    # resume from the newest intact checkpoint (damaged newer ones are named in a warning); start_over moved
    # the old run aside already
    latest, damaged = None, []
    if cfg.checkpoint.resume and not cfg.checkpoint.start_over:
        latest, damaged = ckpt.latest_intact()
    if damaged:  # fallen back: the damaged newer ones go aside, so that keep_last never prunes the good one
        ckpt.set_aside(damaged)
        barrier()
    saved: tuple[int, Path] | None = None  # (step, directory) of this run's latest checkpoint
    config_changed = check_resumed_config(latest, cfg) if latest is not None else []
    if latest is not None:
        # loading brings the optimizer state and gradients back to the device: the engine sleeps meanwhile,
        # and the colocated refit sequence then releases what the load brought in (as after an update),
        # refits the engine (it starts from the HF weights) and wakes its KV cache
        with trainer.engine_asleep():
            state = ckpt.load(latest, policy)
        trainer.step, history = int(state["step"]), list(state["history"])
        saved = (trainer.step, latest)
        progress.write(f"resumed from {latest} (next step {trainer.step})")
        if progress.bar is not None:
            progress.bar.update(trainer.step)
    log = MetricsLog(
        run_dir,
        cfg.logging.tensorboard,
        history,
        wandb_project=cfg.logging.wandb_project if cfg.logging.wandb else None,
        config=asdict(cfg),
    )
    preempted_file = run_dir / PREEMPTED_FILE
    if is_rank0():
        preempted_file.unlink(missing_ok=True)  # from an earlier attempt of this run
    progress.write(format_row({}, header=True))
    for m in history:
        progress.write(format_row(m))
    every_eval = cfg.trainer.eval_every if eval_records else 0
    if stop is None:
        stop = StopRequest.from_env()
        stop.install()
    reason, checkpoint = "", None
    first_save = True

    def save() -> None:
        nonlocal saved, first_save
        progress.phase("checkpoint")
        # the engine sleeps meanwhile: saving brings the actor's optimizer state back to the device
        with stop.held() if first_save else contextlib.nullcontext(), trainer.engine_asleep():
            path = ckpt.save(trainer.step, policy, {"step": trainer.step, "history": history}, asdict(cfg))
        first_save, saved = False, (trainer.step, path)

    try:
        while trainer.step < cfg.trainer.steps:
            reason = stop.poll()  # once per step, before it: every rank agrees
            if reason:
                break
            step = trainer.step
            m = trainer.train_step(step_records(records, step, per_step, seed))
            if config_changed:  # the first step after a resume the user allowed despite a changed config
                m["checkpoint/config_changed"] = float(len(config_changed))
                config_changed = []
            last = trainer.step == cfg.trainer.steps
            if every_eval and (trainer.step % every_eval == 0 or last):
                progress.phase("eval")
                m.update(trainer.evaluate(eval_records))
            history.append(m)
            log.write(m)
            progress.write(format_row(m))
            progress.advance()
            if cfg.checkpoint.every and (trainer.step % cfg.checkpoint.every == 0 or last):
                save()
        if reason and trainer.step > 0:
            if saved is None or saved[0] != trainer.step:  # off the checkpoint.every grid: save it now
                save()
            checkpoint = str(saved[1])
    finally:
        stop.restore()
    progress.close()
    log.close()
    if is_rank0() and history and (run_dir / "metrics.jsonl").is_file():
        _plot_curves(run_dir, print_fn)
    if reason:
        stopped = Preempted(trainer.step, reason, checkpoint)
        if is_rank0():
            _write_json_atomic(
                preempted_file, {"step": trainer.step, "reason": reason, "checkpoint": checkpoint}
            )
            what = f"checkpoint saved: {checkpoint}" if checkpoint else "no step finished, nothing to save"
            print_fn(f"preempted at step {trainer.step} ({reason}), {what}")
            sys.stdout.flush()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()  # rank 0 has written everything before any rank exits (srun --kill-on-bad-exit)
        raise stopped
    return history
