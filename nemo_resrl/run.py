"""The training run around ``Trainer.train_step``: resume, step loop, checkpoints, metrics files, the
per-step table and the reward-curve PNG. ``nemo-resrl train`` builds the pieces from the config and
calls ``run_training``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
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
    ("lld/seq_logp_delta_mean", "lld+", "{:>7.3f}"),
    ("eval/accuracy", "eval_acc", "{:>8.3f}"),
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


def require_logging_backends(cfg: RunConfig) -> None:
    """Fail before any model is built when an enabled logging backend is not installed."""
    for enabled, module, key in (
        (cfg.logging.tensorboard, "tensorboard", "tensorboard"),
        (cfg.logging.wandb, "wandb", "wandb"),
    ):
        if enabled:
            try:
                __import__(module)
            except ImportError:
                raise RuntimeError(
                    f"logging.{key}=true needs the {module} package (pip install {module}), "
                    f"or set logging.{key}=false"
                ) from None


class MetricsLog:
    """metrics.jsonl (always), TensorBoard and Weights & Biases when enabled; rank 0 writes. A resumed
    run continues the same W&B run (its id is kept in ``<run dir>/wandb_id``)."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool,
        history: list[dict],
        wandb_project: str | None = None,
        config: dict | None = None,
    ):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.wandb = None
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
        if wandb_project:
            import wandb

            id_file = run_dir / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
            id_file.write_text(run_id)
            self.wandb = wandb.init(
                project=wandb_project,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                name=run_dir.name,
                config=config,
            )

    def write(self, m: dict[str, float]) -> None:
        if not _rank0():
            return
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in m.items() if k != "step"}, step=int(m["step"]))
        with open(self.path, "a") as f:
            f.write(json.dumps(m) + "\n")
        if self.tb is not None:
            for k, v in m.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, int(m["step"]))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def plot_reward_curve(history: list[dict], path: Path) -> Path:
    """PNG of reward and accuracy per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, [m["reward/mean"] for m in history], marker="o", label="mean reward")
    ax.plot(steps, [m["reward/accuracy"] for m in history], marker=".", label="accuracy")
    evals = [(m["step"], m["eval/accuracy"]) for m in history if "eval/accuracy" in m]
    if evals:
        ax.plot(*zip(*evals), marker="s", label="eval accuracy (greedy)")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate(trainer: Trainer, records: Sequence[dict]) -> dict[str, float]:
    """Greedy (one response per prompt) accuracy on ``records``, over all data-parallel ranks."""
    local, _ = trainer._share(records)
    greedy = replace(trainer.engine.cfg.sampling, n=1, temperature=0.0, seed=None)
    trainer.engine.wake_up()
    rollout = trainer.engine.generate([r["prompt_ids"] for r in local], greedy)
    reward = trainer.reward_fn(rollout, local)
    total, correct, length, n = trainer._dp_sum(
        [
            float(reward.rewards.sum()),
            float(reward.correct.sum()),
            float(rollout.lengths.sum()),
            float(len(rollout)),
        ]
    )
    return {
        "eval/reward_mean": total / n,
        "eval/accuracy": correct / n,
        "eval/length_mean": length / n,
        "eval/n": n,
    }


class _Progress:
    """A tqdm bar over the run's steps showing the current phase (rank 0, when enabled); table rows are
    written above it."""

    def __init__(self, enabled: bool, total: int, initial: int, print_fn: Callable[[str], None]):
        self.bar = None
        self.print_fn = print_fn
        if enabled and _rank0():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc="steps", unit="step", file=sys.stderr, dynamic_ncols=True
            )

    def phase(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name)

    def write(self, line: str) -> None:
        if not _rank0():  # every rank runs the loop; one table
            return
        if self.bar is not None and self.print_fn is print:
            self.bar.write(line)
        else:
            self.print_fn(line)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_training(
    cfg: RunConfig,
    actor: MegatronActor,
    engine: RolloutEngine,
    reward_fn: RewardFn,
    records: Sequence[dict],
    *,
    eval_records: Sequence[dict] | None = None,
    print_fn: Callable[[str], None] = print,
) -> list[dict]:
    """Train ``cfg.trainer.steps`` steps (resuming from the latest checkpoint if enabled); returns the
    per-step metrics of the whole run. With ``trainer.eval_every`` > 0 and ``eval_records``, greedy
    accuracy on them is measured after every ``eval_every``-th step and the last one (``eval/`` keys of
    that step's row)."""
    run_dir = Path(cfg.logging.run_dir)
    require_logging_backends(cfg)
    ckpt = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last)
    per_step, seed = cfg.trainer.prompts_per_step, cfg.trainer.seed
    extra_rounds = max(1, cfg.algorithm.dynamic_sampling.max_rounds - 1)

    def refill(step: int, round_: int) -> list[dict]:  # a second shuffled stream, position (step, round)
        return step_records(records, step * extra_rounds + round_ - 1, per_step, seed + 1)

    progress = _Progress(cfg.logging.progress, cfg.trainer.steps, 0, print_fn)
    trainer = Trainer(
        actor,
        engine,
        reward_fn,
        cfg.algorithm,
        StepConfig(
            prompts_per_step=per_step, mini_batches=cfg.trainer.mini_batches, lld_every=cfg.trainer.lld_every
        ),
        seed=seed,
        refill=refill,
        on_phase=progress.phase,
    )
    history: list[dict] = []
    latest = ckpt.latest() if cfg.checkpoint.resume else None
    if latest is not None:
        state = ckpt.load(latest, actor)
        trainer.step, history = int(state["step"]), list(state["history"])
        engine.refit(actor.export_hf_weights())  # the engine starts from the HF weights: bring it level
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
    progress.write(format_row({}, header=True))
    for m in history:
        progress.write(format_row(m))
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "-1"))
    every_eval = cfg.trainer.eval_every if eval_records else 0
    while trainer.step < cfg.trainer.steps:
        step = trainer.step
        m = trainer.train_step(step_records(records, step, per_step, seed))
        last = trainer.step == cfg.trainer.steps
        if every_eval and (trainer.step % every_eval == 0 or last):
            progress.phase("eval")
            m.update(evaluate(trainer, eval_records))
        history.append(m)
        log.write(m)
        progress.write(format_row(m))
        progress.advance()
        if cfg.checkpoint.every and (trainer.step % cfg.checkpoint.every == 0 or last):
            progress.phase("checkpoint")
            ckpt.save(trainer.step, actor, {"step": trainer.step, "history": history})
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    progress.close()
    log.close()
    if _rank0() and history:
        png = plot_reward_curve(history, run_dir / "reward_curve.png")
        print_fn(f"reward curve: {png}")
    return history
