"""``nemo-resrl plot``: curves of one run, a comparison of three, and bad input (torn lines, NaN,
repeated steps after a resume, missing files)."""

from __future__ import annotations

import json
import math

from nemo_resrl.cli import main
from nemo_resrl.plotting import DPI, FIGSIZE, PANELS, load_run, plot_runs, smooth


def _row(step: int, scale: float = 1.0, weights: bool = True) -> dict:
    row = {
        "step": step,
        "reward/mean": 0.1 * step * scale,
        "reward/accuracy": 0.1 * step * scale,
        "response/length_mean": 50.0 + step,
        "train/entropy": 1.0 - 0.05 * step,
        "train/ppo_kl": 0.01,
        "train/pg_clipfrac": 0.02,
        "train/grad_norm": 0.5,
        "rollout/token_mult_prob_error": 1.0,
        "time/generate_s": 3.0,
    }
    if weights:
        row.update({f"weights/negative_p{q}": 0.1 + q / 200 for q in (10, 25, 50, 75, 90)})
        row["weights/negative_mean"] = 0.4
    if step % 2 == 0:
        row["eval/accuracy"] = 0.05 * step
    return row


def _write(path, rows, extra_lines=()) -> None:
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _size(png) -> tuple[int, int]:
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img[..., :3].std() > 0.01  # something was drawn
    return img.shape[1], img.shape[0]


def test_one_run_writes_every_panel_at_the_set_size(tmp_path, capsys):
    _write(tmp_path / "run", [_row(s) for s in range(6)])
    assert main(["plot", str(tmp_path / "run")]) == 0
    out = tmp_path / "run" / "plots"
    summary = json.loads((out / "plots.json").read_text())
    assert set(summary["written"]) == set(PANELS) and summary["skipped_no_data"] == []
    for png in summary["written"].values():
        assert _size(png) == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    assert str(out / "reward.png") in capsys.readouterr().out


def test_three_runs_compare_with_labels_and_smoothing(tmp_path):
    for i, name in enumerate(("g", "n", "r")):
        _write(tmp_path / name, [_row(s, scale=1 + i, weights=(name == "r")) for s in range(5)])
    runs = [str(tmp_path / n) for n in ("g", "n", "r")]
    assert (
        main(["plot", *runs, "--labels", "grpo,nsr,resrl", "--out", str(tmp_path / "cmp"), "--smooth", "3"])
        == 0
    )
    summary = json.loads((tmp_path / "cmp" / "plots.json").read_text())
    assert list(summary["runs"]) == ["grpo", "nsr", "resrl"]
    assert "resrl_weights" in summary["written"]  # only the resrl run has weights: still drawn
    assert main(["plot", *runs, "--out", str(tmp_path / "x"), "--metrics", "time/*,nothing/here"]) == 0
    summary = json.loads((tmp_path / "x" / "plots.json").read_text())
    assert (
        "metric_time_generate_s" in summary["written"] and "metric_nothing_here" in summary["skipped_no_data"]
    )


def test_torn_lines_nan_and_repeated_steps(tmp_path):
    rows = [_row(s) for s in range(4)]
    rows[1]["reward/mean"] = float("nan")
    resumed = [dict(_row(2), **{"reward/mean": 9.0}), _row(3), _row(4)]  # steps 2-3 ran again
    _write(tmp_path / "run", rows + resumed, extra_lines=["not json", '{"step": 5, "reward/me'])
    run = load_run(tmp_path / "run")
    assert run.bad_lines == 2 and run.repeated_steps == 2 and run.non_finite == 1
    xs, ys = run.series["reward/mean"]
    assert xs == [0, 2, 3, 4]  # NaN at step 1 not drawn
    assert ys[1] == 9.0  # the last row of step 2 (after the resume) wins
    assert run.series["eval/accuracy"][0] == [0, 2, 4]


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    _write(tmp_path / "empty", [], extra_lines=["garbage"])
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "no metric rows" in capsys.readouterr().err
    _write(tmp_path / "a", [_row(0)])
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "a")]) == 2  # several runs need --out
    assert main(["plot", str(tmp_path / "a"), "--labels", "x,y"]) == 2


def test_moving_average():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([2.0], 5) == [2.0] and smooth([1.0, 2.0], 1) == [1.0, 2.0]
    assert all(math.isfinite(v) for v in smooth([0.1] * 50, 7))


def test_plot_runs_skips_panels_without_data(tmp_path):
    _write(tmp_path / "run", [{"step": 0, "reward/mean": 0.5}])
    summary = plot_runs([load_run(tmp_path / "run")], tmp_path / "out")
    assert list(summary["written"]) == ["reward"]
    assert set(summary["skipped_no_data"]) == set(PANELS) - {"reward"}
