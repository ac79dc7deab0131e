"""ResRL inside the old-log-prob pass, groups spread over ranks, against a single-process computation.

Each layout runs ``resrl_probe.py`` once (tiny Qwen3 actor, 7 groups of 4 responses; data-parallel
rank r takes responses r, r + dp, ...: every group is split over the data-parallel ranks). Inside the
job the reference is ``compute_resrl_weights`` on the same hidden states with whole groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nemo_resrl.algorithms.resrl import (
    SKIP_FEW_POSITIVE_TOKENS,
    SKIP_NO_NEGATIVE,
    SKIP_NO_POSITIVE,
    ResRLConfig,
    group_sample_seed,
    sample_row_indices,
)
from nemo_resrl.models.resrl_pass import plan_groups
from tests.launch import run_module
from tests.models.tiny_hf import make_tiny

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = {"tp1pp1dp1": (1, 1, 1), "tp1pp1dp2": (1, 1, 2), "tp2pp1dp1": (2, 1, 2), "tp1pp2dp1": (1, 2, 2)}
SLOW = {"tp2pp1dp1", "tp1pp2dp1"}  # in the slow tier only (the development loop keeps DP=2 vs one process)
SLOW_LAYOUTS = {"tp2pp1dp2": (2, 1, 4)}
TOL = 1e-5


def _run(work: Path, tp: int, pp: int, nproc: int, ep: int = 1, model: str = "qwen3") -> dict:
    args = ["--work", work, "--tp", tp, "--pp", pp, "--ep", ep, "--model", model]
    res = run_module("tests.models.resrl_probe", *args, nproc=nproc, timeout=600)
    name = f"tp{tp}pp{pp}dp{nproc // (tp * pp)}" + (f"ep{ep}" if ep > 1 else "")
    assert res.returncode == 0 and f"PROBE OK {name}" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    return json.loads((work / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("resrl")
    make_tiny(w / "qwen3", "qwen3")
    return w


class _Runs(dict):
    """Each layout's job, run when a test first needs it."""

    def __init__(self, work: Path):
        super().__init__()
        self.work = work

    def __missing__(self, name: str) -> dict:
        self[name] = _run(self.work, *LAYOUTS[name])
        return self[name]


@pytest.fixture(scope="module")
def runs(work) -> dict[str, dict]:
    return _Runs(work)


LABELS = ("default", "m_below_k", "positive_set", "two_phase", "packed", "packed_two_phase")


def _check(result: dict) -> None:
    for label in LABELS:
        e = result[label]
        assert e["max_diff_vs_single_process"] < TOL, (label, e["max_diff_vs_single_process"])
        assert e["stats"] == e["ref_stats"], label
        assert e["ranks_agree"], label  # every tensor / pipeline / data rank holds the same weights
        assert e["logp_vs_plain"] < TOL  # either layout still returns the plain old log-probs
        # the tiny batch's negative rows fit the default budget: GRPO's layout, the residuals deferred;
        # deferred_rows_mib=0 takes the two-phase layout
        assert e["deferred"] is (not label.endswith("two_phase")), label
        if label.startswith("packed"):  # several sequences share a row
            assert e["rows_per_sequence"] < 0.5, (label, e["rows_per_sequence"])


@pytest.mark.distributed
@pytest.mark.parametrize(
    "layout", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in LAYOUTS]
)
def test_weights_equal_single_process_computation(runs, layout):
    _check(runs[layout])


@pytest.mark.distributed
@pytest.mark.slow
def test_tp2_x_dp2_equals_single_process(work):
    _check(_run(work, *SLOW_LAYOUTS["tp2pp1dp2"]))


@pytest.mark.distributed
@pytest.mark.slow
def test_moe_at_ep2_x_dp2_equals_single_process(tmp_path):
    """Layer L-2's output of a mixture-of-experts model is still a dense [tokens, d] state: the ResRL
    weights at expert parallel 2 x data parallel 2 equal the in-job single-process computation and the
    weights of a one-process run of the same model."""
    make_tiny(tmp_path / "qwen3_moe", "qwen3_moe")
    one = _run(tmp_path, 1, 1, 1, model="qwen3_moe")
    ep2 = _run(tmp_path, 1, 1, 2, ep=2, model="qwen3_moe")
    for result in (one, ep2):
        _check(result)
    for label in LABELS:
        a = torch.load(tmp_path / f"tp1pp1dp1_{label}.pt")
        b = torch.load(tmp_path / f"tp1pp1dp2ep2_{label}.pt")
        mask = a["mask"]
        assert (a["weights"][mask] < 1).any(), label  # some negative tokens really are down-weighted
        torch.testing.assert_close(b["weights"][mask], a["weights"][mask], atol=TOL, rtol=0, msg=label)


@pytest.mark.distributed
def test_every_negative_of_a_mixed_group_is_weighted_from_its_whole_group(runs, work):
    runs["tp1pp1dp2"]  # the data-parallel run wrote the tensors
    t = torch.load(work / "tp1pp1dp2_default.pt")
    w, mask, adv, gids = t["weights"], t["mask"], t["adv"], t["group_ids"]
    stats = runs["tp1pp1dp2"]["default"]["stats"]
    xi = ResRLConfig().xi
    for g in gids.unique().tolist():
        rows = gids == g
        neg = rows & (adv < 0)
        pos = rows & (adv > 0)
        tok = w[neg][mask[neg]]
        if g in (0, 1, 2, 6):  # mixed groups with enough positive tokens: all negatives weighted
            assert ((tok >= xi - 1e-6) & (tok <= 1 + 1e-6)).all()
            assert tok.min() < 0.5 < tok.max()  # a real spread: light and full penalties both occur
        else:  # skipped groups keep weight 1
            assert (tok == 1).all()
        assert (w[pos][mask[pos]] == 1).all()  # positives are never gated
    # negatives of groups 0, 1, 2, 6 over all negative tokens: exactly what the stats report
    mixed = torch.isin(gids, torch.tensor([0, 1, 2, 6])) & (adv < 0)
    frac = float(mask[mixed].sum() / mask[adv < 0].sum())
    assert stats["resrl/frac_negative_tokens_weighted"] == pytest.approx(frac)


@pytest.mark.distributed
def test_degenerate_groups_are_skipped_and_counted(runs):
    s = runs["tp1pp1dp2"]["default"]["stats"]
    # group 3 all correct (GRPO advantages all 0, so no positive), group 4 all wrong, group 5 one
    # correct response of 3 tokens (< 4)
    assert s[f"resrl/groups_skipped/{SKIP_NO_POSITIVE}"] == 2
    assert s[f"resrl/groups_skipped/{SKIP_FEW_POSITIVE_TOKENS}"] == 1
    assert s["resrl/groups_active"] == 4
    # M < k: k is cut to M - 1 (or the numerical rank), never above it
    ranks = runs["tp1pp1dp2"]["m_below_k"]["subspace_ranks"]
    assert all(1 <= k <= 15 for k in ranks) and max(ranks) > 4


def _table(rows, holder=0):
    return np.array([[*r, holder] for r in rows], dtype=np.int64)


def test_plan_pools_positives_in_response_id_order_and_spreads_owners():
    # (group, response id, valid tokens, positive, penalised)
    table = _table(
        [
            [7, 30, 5, 1, 0],
            [7, 10, 6, 1, 0],
            [7, 20, 4, 0, 1],
            [9, 11, 8, 1, 0],
            [9, 12, 3, 0, 1],
            [4, 1, 9, 1, 0],
            [4, 2, 9, 1, 0],
            [5, 3, 2, 1, 0],
            [5, 5, 7, 0, 1],
            [8, 6, 7, 0, 1],
        ]
    )
    cfg = ResRLConfig(max_rows=8)
    plans = {g.gid: g for g in plan_groups(table, 64, cfg, step=3, slots=2)}
    assert plans[7].pool_offset == {10: 0, 30: 6}  # by response id, not by table order
    assert plans[7].n_pos_tokens == 11 and plans[7].n_neg_tokens == 4
    assert plans[4].reason == SKIP_NO_NEGATIVE
    assert plans[5].reason == SKIP_FEW_POSITIVE_TOKENS
    assert plans[8].reason == SKIP_NO_POSITIVE
    active = sorted((g for g in plans.values() if g.reason is None), key=lambda g: g.active)
    assert [g.gid for g in active] == [7, 9] and [g.slot for g in active] == [0, 1]
    expected = sample_row_indices(11, 8, group_sample_seed(cfg.seed, 3, 7))
    assert np.array_equal(plans[7].sample, expected.numpy()) and plans[7].sample.size == 8


def test_plan_rejects_duplicate_response_ids():
    with pytest.raises(ValueError, match="response_ids must be unique"):
        plan_groups(_table([[1, 5, 3, 1, 0], [1, 5, 3, 0, 1]]), 64, ResRLConfig(), step=0, slots=1)


def test_slots_take_the_largest_groups_first_and_balance_rows():
    from nemo_resrl.models.resrl_pass import assign_slots

    # largest first to the least-loaded slot: 9 -> 0, 7 -> 1, 5 -> 2, the first 4 -> 2 (load 5), the
    # second 4 -> 1 (load 7), then 1 -> 0 (loads 9, 11, 9: the lowest slot wins the tie)
    assert assign_slots([4, 9, 1, 7, 5, 4], 3) == [2, 0, 0, 1, 2, 1]
    loads = [0, 0, 0, 0]
    sizes = [4096] * 10 + [100] * 7
    for size, s in zip(sizes, assign_slots(sizes, 4)):
        loads[s] += size
    assert max(loads) - min(loads) <= 4096


@pytest.mark.distributed
def test_the_deferred_and_the_two_phase_layouts_give_the_same_weights(runs, work):
    """The deferred layout (GRPO's micro-batches, the negatives' rows kept and projected after the fits)
    and the two-phase one (positives first, each negative projected as it comes) are two schedules of the
    same computation: same plan, same samples, same subspaces."""
    runs["tp1pp1dp2"]
    a = torch.load(work / "tp1pp1dp2_default.pt")
    b = torch.load(work / "tp1pp1dp2_two_phase.pt")
    mask = a["mask"]
    assert (a["weights"][mask] < 0.5).any()  # gated tokens, not only weight 1
    torch.testing.assert_close(b["weights"][mask], a["weights"][mask], atol=TOL, rtol=0)


def test_the_deferred_layout_is_taken_when_the_largest_ranks_negative_rows_fit_the_budget():
    from nemo_resrl.models.resrl_pass import defers_negatives, most_negatives

    # two mixed groups; rank 0 holds 6 + 4 negative tokens, rank 1 holds 9 (columns: one, tensor parallel 1)
    table = np.concatenate(
        [
            _table([[1, 0, 8, 1, 0], [1, 1, 6, 0, 1], [2, 2, 8, 1, 0], [2, 3, 4, 0, 1]], holder=0),
            _table([[1, 4, 9, 0, 1], [2, 5, 8, 1, 0]], holder=1),
        ]
    )
    active = [g for g in plan_groups(table, 64, ResRLConfig(max_rows=8), step=0, slots=2) if g.reason is None]
    assert most_negatives(active, dp=2, tp=1) == 10
    row_bytes = 64 * 2  # d = 64 in bf16
    fits = 10 * row_bytes / 2**20  # the budget in MiB that just holds rank 0's rows
    assert defers_negatives(active, 2, 1, 64, 2, fits)
    assert not defers_negatives(active, 2, 1, 64, 2, fits * 0.99)
    assert not defers_negatives(active, 2, 1, 64, 2, 0)  # 0: always two-phase
    assert not defers_negatives(active, 2, 1, 64, 4, fits)  # float32 rows take twice the bytes
    # one replica at tensor parallel 2: each column projects its own group's negatives (15 and 4)
    table[:, 5] = 0
    active = [g for g in plan_groups(table, 64, ResRLConfig(max_rows=8), step=0, slots=2) if g.reason is None]
    assert sorted(g.slot for g in active) == [0, 1]
    assert most_negatives(active, dp=1, tp=2) == 15
    assert most_negatives(active, dp=1, tp=1) == 19
