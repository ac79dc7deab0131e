"""The training run around ``Trainer.train_step``: resume, step loop, checkpoints, metrics files, the
per-step table and the reward-curve PNG. ``nemo-resrl train`` builds the pieces from the config and
calls ``run_training``.
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_resrl.checkpointing import CheckpointManager
from nemo_resrl.config import RunConfig
from nemo_resrl.models.actor import MegatronActor
from nemo_resrl.rollout.engine import RolloutEngine
from nemo_resrl.trainer import RewardFn, StepConfig, Trainer

TABLE_COLUMNS = (
    ("step", "step", "{:>4.0f}"),
    ("reward/mean", "reward", "{:>7.3f}"),
    ("reward/accuracy", "acc", "{:>6.3f}"),
    ("response/length_mean", "len", "{:>6.1f}"),
    ("response/truncated_frac", "trunc", "{:>6.3f}"),
    ("train/entropy", "entropy", "{:>7.3f}"),
    ("train/pg_clipfrac", "clipfrac", "{:>8.4f}"),
    ("resrl/frac_negative_tokens_weighted", "resrl_w", "{:>7.3f}"),
    ("rollout/token_mult_prob_error", "tmpe", "{:>7.4f}"),
)
# test hook: SIGKILL this process right after the checkpoint of this step (resume tests)
KILL_AFTER_STEP_ENV = "NEMO_RESRL_TEST_KILL_AFTER_STEP"


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The record order of one pass over the data (seeded shuffle per epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_records(records: Sequence[dict], step: int, per_step: int, seed: int) -> list[dict]:
    """The prompts of ``step``: positions ``[step * per_step, (step + 1) * per_step)`` of the shuffled
    stream of epochs, so the data position is a function of the step (what resume needs)."""
    n = len(records)
    orders: dict[int, list[int]] = {}  # one shuffle per epoch this step touches, not one per record
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(pos, n)
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        out.append(records[orders[epoch][i]])
    return out


def format_row(m: dict[str, float], header: bool = False) -> str:
    if header:
        return " ".join(f"{name:>{len(fmt.format(0.0))}}" for _, name, fmt in TABLE_COLUMNS)
    cells = []
    for key, _, fmt in TABLE_COLUMNS:
        v = m.get(key, float("nan"))
        cells.append(
            fmt.format(v) if not (isinstance(v, float) and math.isnan(v)) else " " * len(fmt.format(0.0))
        )
    return " ".join(cells)


class MetricsLog:
    """metrics.jsonl (always), TensorBoard when enabled; rank 0 writes."""

    def __init__(self, run_dir: Path, tensorboard: bool, history: list[dict]):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not _rank0():
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        # rewrite from the checkpoint's history: steps after it (from a killed run) are dropped
        with open(self.path, "w") as f:
            for m in history:
                f.write(json.dumps(m) + "\n")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError(
                    "logging.tensorboard=true needs the tensorboard package (pip install tensorboard), "
                    "or set logging.tensorboard=false"
                ) from e
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, m: dict[str, float]) -> None:
        if not _rank0():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(m) + "\n")
        if self.tb is not None:
            for k, v in m.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, int(m["step"]))
            self.tb.flush()


def plot_reward_curve(history: list[dict], path: Path) -> Path:
    """PNG of reward and accuracy per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, [m["reward/mean"] for m in history], marker="o", label="mean reward")
    ax.plot(steps, [m["reward/accuracy"] for m in history], marker=".", label="accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_training(
    cfg: RunConfig,
    actor: MegatronActor,
    engine: RolloutEngine,
    reward_fn: RewardFn,
    records: Sequence[dict],
    *,
    print_fn: Callable[[str], None] = print,
) -> list[dict]:
    """Train ``cfg.trainer.steps`` steps (resuming from the latest checkpoint if enabled); returns the
    per-step metrics of the whole run."""
    run_dir = Path(cfg.logging.run_dir)
    ckpt = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last)
    trainer = Trainer(
        actor,
        engine,
        reward_fn,
        cfg.algorithm,
        StepConfig(prompts_per_step=cfg.trainer.prompts_per_step, mini_batches=cfg.trainer.mini_batches),
        seed=cfg.trainer.seed,
    )
    history: list[dict] = []
    latest = ckpt.latest() if cfg.checkpoint.resume else None
    if latest is not None:
        state = ckpt.load(latest, actor)
        trainer.step, history = int(state["step"]), list(state["history"])
        engine.refit(actor.export_hf_weights())  # the engine starts from the HF weights: bring it level
        print_fn(f"resumed from {latest} (next step {trainer.step})")
    log = MetricsLog(run_dir, cfg.logging.tensorboard, history)
    print_fn(format_row({}, header=True))
    for m in history:
        print_fn(format_row(m))
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "-1"))
    while trainer.step < cfg.trainer.steps:
        step = trainer.step
        m = trainer.train_step(step_records(records, step, cfg.trainer.prompts_per_step, cfg.trainer.seed))
        history.append(m)
        log.write(m)
        print_fn(format_row(m))
        last = trainer.step == cfg.trainer.steps
        if cfg.checkpoint.every and (trainer.step % cfg.checkpoint.every == 0 or last):
            ckpt.save(trainer.step, actor, {"step": trainer.step, "history": history})
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    if _rank0() and history:
        png = plot_reward_curve(history, run_dir / "reward_curve.png")
        print_fn(f"reward curve: {png}")
    return history
