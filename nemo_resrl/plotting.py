"""``nemo-resrl plot``: training curves of a run, or a comparison of several runs, as PNG files.

    nemo-resrl plot runs/resrl                                   # -> runs/resrl/plots/*.png
    nemo-resrl plot runs/grpo runs/nsr runs/resrl --labels grpo,nsr,resrl --out plots/cmp --smooth 3

Input: a run dir (its ``metrics.jsonl``) or a ``metrics.jsonl`` path. A resumed run may have logged a
step twice (the steps after its last checkpoint ran again): the LAST row of a step is kept. Malformed
lines (not a JSON object, a line torn by a kill) are skipped and counted, as are non-finite values (not
drawn). A panel whose metrics no run has is skipped and listed. ``<out>/plots.json`` lists the files
written and the counts. Panels (``PANELS``): reward and accuracy, eval accuracy, response length,
entropy, the ResRL weight distribution of negative tokens (bands: p10-p90, p25-p75; lines: median,
mean), policy-update diagnostics, rollout / actor consistency, and time per phase; ``--metrics`` adds
panels for other keys (names or globs).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nemo_resrl.data.jsonl import json_object_lines

FIGSIZE, DPI = (7.0, 4.0), 100  # every PNG is 700 x 400 pixels

# file stem -> (title, y label, metric keys); the weights panel is drawn as quantile bands
PANELS: dict[str, tuple[str, str, list[str]]] = {
    "reward": ("reward and accuracy (training samples)", "value", ["reward/mean", "reward/accuracy"]),
    "eval": ("held-out accuracy (greedy)", "accuracy", ["eval/accuracy"]),
    "response_length": ("response length", "tokens", ["response/length_mean"]),
    "entropy": ("policy entropy", "nats / token", ["train/entropy"]),
    "resrl_weights": (
        "ResRL weights of negative tokens",
        "weight",
        [
            "weights/negative_p10",
            "weights/negative_p25",
            "weights/negative_p50",
            "weights/negative_p75",
            "weights/negative_p90",
            "weights/negative_mean",
        ],
    ),
    "update": ("policy update", "value", ["train/ppo_kl", "train/pg_clipfrac", "train/grad_norm"]),
    "consistency": ("vLLM vs actor (token_mult_prob_error)", "ratio", ["rollout/token_mult_prob_error"]),
    "time": (
        "time per phase",
        "s",
        ["time/generate_s", "time/old_logprobs_s", "time/train_s", "time/refit_s"],
    ),
}


class PlotError(ValueError):
    """Input that cannot be plotted (missing file, no rows); the message names it."""


@dataclass
class RunMetrics:
    """One run's metrics: key -> (steps, values), finite values only, last row of each step kept."""

    label: str
    path: Path
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    bad_lines: int = 0
    non_finite: int = 0
    repeated_steps: int = 0


def metrics_file(path: str | Path) -> Path:
    p = Path(path)
    f = p / "metrics.jsonl" if p.is_dir() else p
    if not f.is_file():
        raise PlotError(f"{p}: no metrics.jsonl (give a run dir or a metrics.jsonl file)")
    return f


def load_run(path: str | Path, label: str | None = None) -> RunMetrics:
    f = metrics_file(path)
    run = RunMetrics(label or (f.parent.name if f.name == "metrics.jsonl" else f.stem), f)
    rows: dict[int, dict] = {}
    for _, row, _ in json_object_lines(f):
        if row is None or not isinstance(row.get("step"), int | float):
            run.bad_lines += 1
            continue
        step = int(row["step"])
        run.repeated_steps += step in rows
        rows[step] = row  # the last row of a step wins (a resumed run re-ran it)
    if not rows:
        raise PlotError(f"{f}: no metric rows")
    for step in sorted(rows):
        for key, value in rows[step].items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                run.non_finite += 1
                continue
            xs, ys = run.series.setdefault(key, ([], []))
            xs.append(step)
            ys.append(float(value))
    return run


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (the first points average what exists)."""
    if window <= 1:
        return list(values)
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_weights(ax, run: RunMetrics, color, label: str, single: bool) -> bool:
    s = run.series
    drawn = False
    for lo, hi, alpha in (("p10", "p90", 0.15), ("p25", "p75", 0.3)):
        a, b = s.get(f"weights/negative_{lo}"), s.get(f"weights/negative_{hi}")
        if a and b and a[0] == b[0]:
            ax.fill_between(
                a[0],
                a[1],
                b[1],
                color=color,
                alpha=alpha,
                lw=0,
                label=f"{label} {lo}-{hi}" if single else None,
            )
            drawn = True
    lines = [("p50", "-"), ("mean", "--")]
    if not single:  # one line per run: the median, or the mean for runs that logged no median
        lines = [("p50", "-")] if "weights/negative_p50" in s else [("mean", "-")]
    for key, style in lines:
        xs_ys = s.get(f"weights/negative_{key}")
        if xs_ys:
            ax.plot(*xs_ys, style, color=color, marker=".", label=f"{label} {key}")
            drawn = True
    return drawn


def plot_panel(
    runs: list[RunMetrics], stem: str, title: str, ylabel: str, keys: list[str], window: int, out: Path
) -> Path | None:
    """One PNG: ``keys`` of every run (one colour per run when several); None if nothing to draw."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    single = len(runs) == 1
    drawn = False
    for r_i, run in enumerate(runs):
        if stem == "resrl_weights":
            drawn |= _draw_weights(ax, run, colors[r_i % len(colors)], run.label, single)
            continue
        for k_i, key in enumerate(keys):
            if key not in run.series:
                continue
            xs, ys = run.series[key]
            color = colors[(k_i if single else r_i) % len(colors)]
            label = key if single else (run.label if len(keys) == 1 else f"{run.label}: {key}")
            style = "-" if single or k_i == 0 else ["--", ":", "-."][(k_i - 1) % 3]
            if window > 1:
                ax.plot(xs, ys, style, color=color, alpha=0.25, lw=1)
                ax.plot(xs, smooth(ys, window), style, color=color, marker=".", label=label)
            else:
                ax.plot(xs, ys, style, color=color, marker=".", label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_title(title + (f" (moving average of {window})" if window > 1 else ""))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": every file is FIGSIZE * DPI pixels
    plt.close(fig)
    return path


def extra_panels(runs: list[RunMetrics], patterns: list[str]) -> dict[str, tuple[str, str, list[str]]]:
    """A panel per ``--metrics`` name or glob match."""
    keys = sorted({k for r in runs for k in r.series})
    out = {}
    for pat in patterns:
        for key in [k for k in keys if fnmatch.fnmatchcase(k, pat)] or [pat]:
            out["metric_" + key.replace("/", "_")] = (key, "value", [key])
    return out


def plot_runs(runs: list[RunMetrics], out: Path, window: int = 1, extra: list[str] | None = None) -> dict:
    """Every panel for ``runs``; returns the summary written to ``<out>/plots.json``."""
    out.mkdir(parents=True, exist_ok=True)
    panels = {**PANELS, **extra_panels(runs, extra or [])}
    written, skipped = {}, []
    for stem, (title, ylabel, keys) in panels.items():
        path = plot_panel(runs, stem, title, ylabel, keys, window, out)
        if path is None:
            skipped.append(stem)
        else:
            written[stem] = str(path)
    summary = {
        "runs": {
            r.label: {
                "metrics": str(r.path),
                "steps": len(set().union(*(set(x) for x, _ in r.series.values()))),
                "bad_lines": r.bad_lines,
                "non_finite_values": r.non_finite,
                "repeated_steps": r.repeated_steps,
            }
            for r in runs
        },
        "written": written,
        "skipped_no_data": skipped,
    }
    (out / "plots.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nemo-resrl plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run dirs or metrics.jsonl files")
    ap.add_argument("--labels", default=None, help="comma-separated, one per run (default: dir names)")
    ap.add_argument("--out", default=None, help="output dir (default for one run: <run>/plots)")
    ap.add_argument("--smooth", type=int, default=1, help="moving-average window (raw drawn faintly)")
    ap.add_argument("--metrics", default="", help="extra metric keys or globs, comma-separated")
    args = ap.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [None] * len(args.runs)
    try:
        if len(labels) != len(args.runs):
            raise PlotError(f"--labels has {len(labels)} labels for {len(args.runs)} runs")
        if args.smooth < 1:
            raise PlotError(f"--smooth must be >= 1, got {args.smooth}")
        if len(args.runs) > 1 and args.out is None:
            raise PlotError("several runs: give --out DIR")
        runs = [load_run(p, lab) for p, lab in zip(args.runs, labels, strict=True)]
        if len({r.label for r in runs}) != len(runs):
            raise PlotError(f"run labels must differ: {[r.label for r in runs]} (use --labels)")
    except PlotError as e:
        print(f"nemo-resrl plot: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else runs[0].path.parent / "plots"
    extra = [m for m in args.metrics.split(",") if m]
    summary = plot_runs(runs, out, args.smooth, extra)
    for r in runs:
        if r.bad_lines or r.non_finite or r.repeated_steps:
            print(
                f"{r.label}: skipped {r.bad_lines} malformed lines, {r.non_finite} non-finite values; "
                f"{r.repeated_steps} steps logged twice (last kept)"
            )
    for path in summary["written"].values():
        print(path)
    if summary["skipped_no_data"]:
        print(f"no data for: {', '.join(summary['skipped_no_data'])}")
    return 0
