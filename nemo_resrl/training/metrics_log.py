"""What a run writes as it goes: metrics.jsonl (always), TensorBoard and Weights & Biases (when enabled),
the per-step table with a progress bar, and the reward-curve PNG. Rank 0 writes; the others no-op."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nemo_resrl.common import is_rank0

TABLE_COLUMNS = (
    ("step", "step", "{:>4.0f}"),
    ("reward/mean", "reward", "{:>7.3f}"),
    ("reward/accuracy", "acc", "{:>6.3f}"),
    ("response/length_mean", "len", "{:>6.1f}"),
    ("response/truncated_frac", "trunc", "{:>6.3f}"),
    ("train/entropy", "entropy", "{:>7.3f}"),
    ("train/pg_clipfrac", "clipfrac", "{:>8.4f}"),
    ("weights/negative_mean", "resrl_w", "{:>7.3f}"),  # mean ResRL weight of negative tokens (xi..1)
    ("rollout/token_mult_prob_error", "tmpe", "{:>7.4f}"),
    ("lld/seq_logp_delta_mean", "lld+", "{:>7.3f}"),
    ("eval/accuracy", "eval_acc", "{:>8.3f}"),
)

log = logging.getLogger(__name__)


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


def require_logging_backends(tensorboard: bool, wandb: bool) -> None:
    """Fail before any model is built when an enabled logging backend is not installed."""
    for enabled, module in ((tensorboard, "tensorboard"), (wandb, "wandb")):
        if enabled:
            try:
                __import__(module)
            except ImportError:
                raise RuntimeError(
                    f"logging.{module}=true needs the {module} package (pip install {module}), "
                    f"or set logging.{module}=false"
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
        if not is_rank0():
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        # rewrite from the checkpoint's history; the rows past it (steps a killed run or a fallback to an
        # older checkpoint rewinds) are kept in a side file first
        if self.path.is_file():
            rows = [r for r in self.path.read_text(errors="replace").splitlines() if r.strip()]
            if len(rows) > len(history):
                side = run_dir / f"metrics.rewound-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
                side.write_text("\n".join(rows[len(history) :]) + "\n")
                log.warning(
                    "the resume rewinds %d metrics row(s) past step %d; they are kept in %s",
                    len(rows) - len(history),
                    len(history) - 1,
                    side,
                )
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
        if not is_rank0():
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


class Progress:
    """A tqdm bar over the run's steps showing the current phase (rank 0, when enabled and stderr is a
    terminal: in a log file a bar is only noise); table rows are written above it."""

    def __init__(self, enabled: bool, total: int, initial: int, print_fn: Callable[[str], None]):
        self.bar = None
        self.print_fn = print_fn
        if enabled and is_rank0() and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc="steps", unit="step", file=sys.stderr, dynamic_ncols=True
            )

    def phase(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name)

    def write(self, line: str) -> None:
        if not is_rank0():  # every rank runs the loop; one table
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
