"""The training run around ``Trainer.train_step``: resume, step loop, checkpoints, metrics files, the
per-step table and the reward-curve PNG. ``nemo-resrl train`` builds the pieces from the config and
calls ``run_training``.

Stopping early (preemption, time limits; ``docs/slurm.md``): SIGUSR1, SIGTERM, or the file named by
``NEMO_RESRL_STOP_FILE`` appearing, ask the run to stop. The run finishes its current step, saves a
checkpoint of it (whatever ``checkpoint.every`` is), writes the metrics, ``<run dir>/preempted.json``
and "preempted at step N, checkpoint saved: ..." and raises ``Preempted``: the process exits with
status 75 (``PREEMPTED_EXIT``); the next run resumes from that checkpoint. The request is polled once
per step and all-reduced (MAX) over the world, so every rank stops after the same step. A second
SIGTERM kills the process at once (the default action). ``NEMO_RESRL_STOP_SIGNALS`` (default
``USR1,TERM``; empty: none) names the signals handled.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
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
STOP_FILE_ENV = "NEMO_RESRL_STOP_FILE"  # a file whose appearance asks the run to stop (slurm/common.sh)
STOP_SIGNALS_ENV = "NEMO_RESRL_STOP_SIGNALS"  # the signals that ask the run to stop (default USR1,TERM)
PREEMPTED_FILE = "preempted.json"  # in the run dir: written when the run stopped early, removed at start
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again to continue
# why a run stops, in increasing priority (the all-reduce keeps the highest)
STOP_REASONS = ("", "stop file", "SIGUSR1", "SIGTERM")


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
        if tensorboard:  # installed: run_training checks require_logging_backends first
            from torch.utils.tensorboard import SummaryWriter

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


class Preempted(SystemExit):
    """The run stopped early on request; the checkpoint of ``step`` is saved. A ``SystemExit`` with
    status 75: ``nemo-resrl train`` exits with it unless the caller catches it."""

    def __init__(self, step: int, reason: str, checkpoint: str | None):
        super().__init__(PREEMPTED_EXIT)
        self.step, self.reason, self.checkpoint = step, reason, checkpoint

    def __str__(self) -> str:
        return f"preempted at step {self.step} ({self.reason}), checkpoint: {self.checkpoint}"


class StopRequest:
    """Stop requests for the step loop: the signals in ``signals`` (handled from ``install`` to
    ``restore``, main thread only) and the appearance of ``stop_file``. ``poll`` is collective."""

    def __init__(self, stop_file: str | None = None, signals: Sequence[str] = ("USR1", "TERM")):
        self.stop_file = Path(stop_file) if stop_file else None
        self.signals = [getattr(signal, f"SIG{name.strip().upper().removeprefix('SIG')}") for name in signals]
        self.reason = ""  # the signal received, if any
        self._previous: dict[int, object] = {}

    @classmethod
    def from_env(cls) -> StopRequest:
        names = os.environ.get(STOP_SIGNALS_ENV, "USR1,TERM")
        return cls(os.environ.get(STOP_FILE_ENV) or None, [n for n in names.split(",") if n.strip()])

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; the stop file still works
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @contextlib.contextmanager
    def ignored_by_new_processes(self):
        """Inside, the signals are ignored, so processes started here inherit SIG_IGN for them (exec keeps
        an ignored disposition). For the first checkpoint save, which spawns megatron's long-lived
        write-results manager: Slurm signals every process of a job step, and a manager killed by
        SIGTERM would fail the very save the stop asked for. A signal that arrives inside is lost (the
        stop file is not)."""
        if not self._previous:
            yield
            return
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            yield
        finally:
            for sig in self._previous:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason == name == "SIGTERM":  # asked twice: die as an unhandled SIGTERM would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        if STOP_REASONS.index(name) > STOP_REASONS.index(self.reason):
            self.reason = name

    def local_reason(self) -> str:
        if self.reason:
            return self.reason
        if self.stop_file is not None and self.stop_file.exists():
            return "stop file"
        return ""

    def poll(self) -> str:
        """The reason to stop now ("" for none), the same on every rank (MAX over the world)."""
        code = STOP_REASONS.index(self.local_reason())
        if dist.is_initialized() and dist.get_world_size() > 1:
            device = "cpu"
            if "nccl" in str(dist.get_backend()).lower():
                device = torch.device("cuda", torch.cuda.current_device())
            t = torch.tensor([code], dtype=torch.int64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            code = int(t.item())
        return STOP_REASONS[code]


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj) + "\n")
    os.replace(tmp, path)


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
    that step's row). A stop request (module docstring) ends the run after the current step with a
    checkpoint of it, and raises ``Preempted``."""
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
    saved: tuple[int, Path] | None = None  # (step, directory) of this run's latest checkpoint
    if latest is not None:
        state = ckpt.load(latest, actor)
        trainer.step, history = int(state["step"]), list(state["history"])
        saved = (trainer.step, latest)
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
    preempted_file = run_dir / PREEMPTED_FILE
    if _rank0():
        preempted_file.unlink(missing_ok=True)  # from an earlier attempt of this run
    progress.write(format_row({}, header=True))
    for m in history:
        progress.write(format_row(m))
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "-1"))
    every_eval = cfg.trainer.eval_every if eval_records else 0
    stop = StopRequest.from_env()
    stop.install()
    reason, checkpoint = "", None
    first_save = True

    def save() -> None:
        nonlocal saved, first_save
        progress.phase("checkpoint")
        with stop.ignored_by_new_processes() if first_save else contextlib.nullcontext():
            path = ckpt.save(trainer.step, actor, {"step": trainer.step, "history": history})
        first_save, saved = False, (trainer.step, path)

    try:
        while trainer.step < cfg.trainer.steps:
            reason = stop.poll()  # once per step, before it: every rank agrees
            if reason:
                break
            step = trainer.step
            m = trainer.train_step(step_records(records, step, per_step, seed))
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
            if step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        if reason and trainer.step > 0:
            if saved is None or saved[0] != trainer.step:  # off the checkpoint.every grid: save it now
                save()
            checkpoint = str(saved[1])
    finally:
        stop.restore()
    progress.close()
    log.close()
    if _rank0() and history:
        png = plot_reward_curve(history, run_dir / "reward_curve.png")
        print_fn(f"reward curve: {png}")
        if (run_dir / "metrics.jsonl").is_file():  # every step of the run so far, resumes included
            from nemo_resrl.plotting import load_run, plot_runs

            plots = plot_runs([load_run(run_dir)], run_dir / "plots")
            print_fn(f"training curves: {run_dir / 'plots'} ({len(plots['written'])} PNG files)")
    if reason:
        stopped = Preempted(trainer.step, reason, checkpoint)
        if _rank0():
            _write_json_atomic(
                preempted_file, {"step": trainer.step, "reason": reason, "checkpoint": checkpoint}
            )
            saved = f"checkpoint saved: {checkpoint}" if checkpoint else "no step finished, nothing to save"
            print_fn(f"preempted at step {trainer.step} ({reason}), {saved}")
            sys.stdout.flush()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()  # rank 0 has written everything before any rank exits (srun --kill-on-bad-exit)
        raise stopped
    return history
