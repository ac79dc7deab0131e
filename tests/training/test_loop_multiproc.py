"""The training run (``run_training``) in a 2-rank torchrun job on CPU: tensor parallel 2, and data
parallel 2 (TP=1, one vLLM engine per rank), each against a 1-process run of the same probe.

``run_probe.py --record`` makes every rank write RUN/rank{R}.json: its layout, the history it returned
and, per step, the prompts it generated from with the responses and rewards. Per-prompt sampling is
seeded from the prompt's index (``RolloutEngine.generate``), so a layout that splits the step's prompts
correctly and computes the same math reproduces the 1-process samples and metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nemo_resrl.runs.checkpoints import CheckpointManager
from tests.launch import run_module
from tests.models.tiny_hf import make_tiny

STEPS = 4
PROMPTS_PER_STEP = 4  # run_probe's trainer.prompts_per_step
N = 4  # run_probe's rollout.sampling.n


def _run(work: Path, name: str, nproc: int, tp: int) -> dict:
    """Run the probe (under torchrun when nproc > 1) in its own session; afterwards kill whatever it left
    behind (dist-checkpoint saving spawns a multiprocessing manager). Returns the run's outputs."""
    run_dir = work / name
    args = ["--work", work, "--run-dir", run_dir, "--steps", STEPS, "--tp", tp, "--record"]
    res = run_module("tests.training.run_probe", *args, nproc=nproc, timeout=600, log=work / f"{name}.log")
    rc, text = res.returncode, res.stdout
    assert rc == 0, text[-6000:]
    dp = nproc // tp
    for r in range(nproc):
        assert f"PROBE OK rank={r} world={nproc} tp={tp} dp={dp}" in text, text[-6000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(nproc)]
    return {"dir": run_dir, "metrics": metrics, "ranks": ranks}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("multiproc")
    make_tiny(w / "qwen3", "qwen3")
    return w


@pytest.fixture(scope="module")
def single(work) -> dict:
    return _run(work, "single", nproc=1, tp=1)


@pytest.fixture(scope="module")
def dp2(work) -> dict:
    return _run(work, "dp2", nproc=2, tp=1)


def _check_run(run: dict, nproc: int, tp: int) -> None:
    """What every layout must give: the steps, finite metrics, checkpoints, ranks that agree."""
    m = run["metrics"]
    assert [int(x["step"]) for x in m] == list(range(STEPS))
    for x in m:
        for k in ("reward/mean", "train/loss", "train/pg_loss", "train/grad_norm"):
            assert math.isfinite(x[k]), (int(x["step"]), k, x[k])
    assert len({x["train/loss"] for x in m}) > 1  # the loss is not a constant
    ckpt = CheckpointManager(run["dir"] / "checkpoints")
    assert [s for s, _ in ckpt.complete()] == [STEPS - 1, STEPS]  # checkpoint.keep_last=2
    last = ckpt.latest()
    assert sorted(p.name for p in last.glob("rng_rank*.pt")) == [f"rng_rank{r}.pt" for r in range(nproc)]
    assert (last / "actor" / "metadata.json").is_file()
    for r, rank in enumerate(run["ranks"]):
        lay = rank["layout"]
        assert (lay["world_size"], lay["tp"], lay["dp"]) == (nproc, tp, nproc // tp)
        assert lay["dp_rank"] == r // tp and lay["tp_rank"] == r % tp
        assert len(rank["steps"]) == STEPS
    # train/ and resrl/ metrics are global: every rank returns the same; rank 0 wrote metrics.jsonl
    for rank in run["ranks"]:
        for mine, logged in zip(rank["history"], m):
            same = {k: v for k, v in logged.items() if k.startswith(("train/", "resrl/"))}
            assert same and {k: mine[k] for k in same} == same


@pytest.mark.distributed
@pytest.mark.slow
def test_tensor_parallel_2_run_equals_the_one_process_run(work, single):
    run = _run(work, "tp2", nproc=2, tp=2)
    _check_run(run, nproc=2, tp=2)
    ref = single["ranks"][0]["steps"]
    for r, rank in enumerate(run["ranks"]):
        for s, (step, one) in enumerate(zip(rank["steps"], ref)):
            # both tensor-parallel ranks generate every prompt of the step, with the same samples
            for k in ("prompts", "prompt_index", "responses", "rewards"):
                assert step[k] == one[k], (r, s, k)
    for a, b in zip(run["metrics"], single["metrics"]):
        step = int(a["step"])
        for k in ("reward/mean", "reward/accuracy", "response/length_mean", "resrl/groups_active"):
            assert a[k] == b[k], (step, k)
        for k in ("train/loss", "train/pg_loss", "train/entropy", "train/grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (step, k)  # TP=2 sums in another order


@pytest.mark.distributed
@pytest.mark.slow
def test_data_parallel_2_run_splits_the_step_over_ranks(single, dp2):
    _check_run(dp2, nproc=2, tp=1)
    ref = single["ranks"][0]["steps"]
    r0, r1 = (rank["steps"] for rank in dp2["ranks"])
    for s in range(STEPS):
        a, b, one = r0[s], r1[s], ref[s]
        # Trainer._share: rank 0 the first half of the step's prompts, rank 1 the second half
        assert len(a["prompts"]) == len(b["prompts"]) == PROMPTS_PER_STEP // 2, s
        assert a["prompts"] + b["prompts"] == one["prompts"], s
        assert len(a["responses"]) == len(b["responses"]) == PROMPTS_PER_STEP // 2 * N, s
        # the logged step reward is the mean over ALL the step's responses, not one rank's
        rewards = a["rewards"] + b["rewards"]
        shaped = [x if x > 0 else -1.0 for x in rewards]  # the resrl preset's reward.incorrect = -1
        assert dp2["metrics"][s]["reward/mean"] == pytest.approx(sum(shaped) / len(shaped), abs=1e-12), s
        correct = [float(x > 0) for x in rewards]  # even_first_token: reward 1 exactly when correct
        assert dp2["metrics"][s]["reward/accuracy"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)
    assert len({x["reward/mean"] for x in dp2["metrics"]}) > 1  # not a constant
    # step 0 starts from the HF weights in both runs; rank 0's prompts are prompts 0 and 1 of the step in
    # both, so they are sampled from the same seeded streams: same responses, batch split or not
    # (responses are in (prompt, sample) order)
    mine = r0[0]["responses"]
    assert mine and mine == ref[0]["responses"][: len(mine)]


@pytest.mark.distributed
@pytest.mark.slow
def test_data_parallel_2_run_equals_the_one_process_run(single, dp2):
    ref = single["ranks"][0]["steps"]
    for s in range(STEPS):  # a step's prompts can repeat (an epoch ends within it): compare in order
        got = [resp for rank in dp2["ranks"] for resp in rank["steps"][s]["responses"]]
        assert got == ref[s]["responses"], s
    for a, b in zip(dp2["metrics"], single["metrics"]):
        step = int(a["step"])
        for k in ("reward/mean", "reward/accuracy", "response/length_mean", "resrl/groups_active"):
            assert a[k] == b[k], (step, k)
        for k in ("train/loss", "train/pg_loss", "train/entropy", "train/grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (step, k)


@pytest.mark.distributed
@pytest.mark.slow
def test_data_parallel_2_reward_counts_cover_the_whole_step(single, dp2):
    # even_first_token counts every response it scored as "ok"
    for a, b in zip(dp2["metrics"], single["metrics"]):
        scored = sum(len(rank["steps"][int(a["step"])]["rewards"]) for rank in dp2["ranks"])
        assert a["reward/count/ok"] == scored == PROMPTS_PER_STEP * N == b["reward/count/ok"]
