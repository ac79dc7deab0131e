"""Run directories that cannot be lost (``runs/run_dir.py``, ``runs/checkpoints.py``): the lock, no
overwrite by default, verified checkpoints with fallback, a full disk, a stop during start-up. The loop runs
the fakes of ``fakes.py`` (the same ``run_training`` as the real stack)."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import threading
import time

import pytest

from nemo_resrl.runs.checkpoints import CheckpointError, CheckpointManager
from nemo_resrl.runs.run_dir import RunDirError, RunDirLock, lock_holder
from nemo_resrl.training.stop import Preempted, StopRequest
from tests.training.fakes import BigramPolicy, even_first_token, fake_run, without_times


def _rows(run_dir) -> list[int]:
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _ckpts(run_dir) -> list[int]:
    return [s for s, _ in CheckpointManager(run_dir / "checkpoints").complete()]


def test_resume_false_in_a_run_dir_that_holds_a_run_is_refused_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    fake_run(run, 3)
    before = (run / "metrics.jsonl").read_text(), _ckpts(run)
    with pytest.raises(RunDirError, match=r"already holds a run \(3 metrics rows, 2 checkpoints.*start_over"):
        fake_run(run, 2, resume=False)
    assert ((run / "metrics.jsonl").read_text(), _ckpts(run)) == before
    assert lock_holder(run) is None  # released after the refusal


def test_start_over_moves_the_old_run_aside_and_starts_fresh(tmp_path):
    run = tmp_path / "run"
    fake_run(run, 3)
    old_metrics = (run / "metrics.jsonl").read_text()
    history = fake_run(run, 2, resume=False, start_over=True)
    assert [m["step"] for m in history] == [0, 1] and _rows(run) == [0, 1] and _ckpts(run) == [1, 2]
    (previous,) = run.glob("previous-*")
    assert (previous / "metrics.jsonl").read_text() == old_metrics  # nothing was deleted
    assert [s for s, _ in CheckpointManager(previous / "checkpoints").complete()] == [2, 3]


def test_a_second_trainer_on_the_same_run_dir_is_refused_while_the_first_completes(tmp_path):
    run = tmp_path / "run"
    started = threading.Event()

    def slow_reward(rollout, records):
        started.set()
        time.sleep(0.2)
        return even_first_token(rollout, records)

    result: dict = {}
    first = threading.Thread(target=lambda: result.update(h=fake_run(run, 4, reward=slow_reward)))
    first.start()
    assert started.wait(30)
    with pytest.raises(RunDirError, match=rf"in use by another trainer: host \S+ pid {os.getpid()}"):
        fake_run(run, 4)
    first.join(60)
    assert [m["step"] for m in result["h"]] == [0, 1, 2, 3] and _rows(run) == [0, 1, 2, 3]
    assert lock_holder(run) is None


def test_a_stale_lock_of_a_dead_trainer_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"host": "gone", "pid": 999999, "since": "yesterday"}))
    with caplog.at_level(logging.INFO, logger="nemo_resrl.runs.run_dir"):
        assert [m["step"] for m in fake_run(run, 1)] == [0]
    assert "took over the lock" in caplog.text and "999999" in caplog.text


def test_convert_refuses_to_write_into_a_locked_run_dir(tmp_path):
    from nemo_resrl.runs.run_dir import locked_run_dir_of

    with RunDirLock(tmp_path / "run"):
        found = locked_run_dir_of(tmp_path / "run" / "hf_out")
        assert (
            found is not None and found[0] == (tmp_path / "run").resolve() and found[1]["pid"] == os.getpid()
        )
    assert locked_run_dir_of(tmp_path / "run" / "hf_out") is None


def test_a_damaged_latest_checkpoint_falls_back_and_reproduces_the_uninterrupted_run(tmp_path, caplog):
    whole = fake_run(tmp_path / "whole", 6)
    run = tmp_path / "run"
    fake_run(run, 4, keep_last=3)
    shard = run / "checkpoints" / "step_000004" / "actor" / "policy.pt"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        resumed = fake_run(run, 6, keep_last=3)
    assert "step_000004: actor/policy.pt has 100 bytes" in caplog.text  # named, and skipped
    assert without_times(resumed) == without_times(whole)  # resumed from step 3, repeated 3 and 4
    assert _rows(run) == [0, 1, 2, 3, 4, 5]


def test_with_no_intact_checkpoint_the_error_lists_each_and_its_defect(tmp_path):
    run = tmp_path / "run"
    fake_run(run, 2)
    for step in (1, 2):
        (run / "checkpoints" / f"step_{step:06d}" / "actor" / "policy.pt").unlink()
    (run / "checkpoints" / "step_000002" / "trainer.json").unlink()
    with pytest.raises(CheckpointError) as e:
        fake_run(run, 4)
    msg = str(e.value)
    assert "no intact checkpoint" in msg and "step_000002: " in msg and "step_000001: " in msg
    assert "actor/policy.pt is missing" in msg and "trainer.json is missing" in msg


def test_missing_rng_states_are_a_named_defect(tmp_path):
    run = tmp_path / "run"
    fake_run(run, 1)
    (run / "checkpoints" / "step_000001" / "rng_rank0.pt").unlink()
    (info,) = CheckpointManager(run / "checkpoints").inspect()
    assert any("RNG states of ranks [0]" in d or "rng_rank0.pt is missing" in d for d in info.defects)


class _FullDisk(BigramPolicy):
    def __init__(self, fail_at_save: int) -> None:
        super().__init__(seed=0)
        self.saves, self.fail_at = 0, fail_at_save

    def save_checkpoint(self, path) -> None:
        self.saves += 1
        super().save_checkpoint(path)
        if self.saves == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_is_named_with_the_bytes_needed_and_leaves_no_partial(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"no space left .* step 2: it needs about [0-9.]+ GiB") as e:
        fake_run(run, 4, policy=_FullDisk(fail_at_save=2))
    assert "checkpoint.keep_last + 1 = 3 checkpoints" in str(e.value)
    assert not list((run / "checkpoints").glob(".partial-*")) and _ckpts(run) == [1]
    assert CheckpointManager(run / "checkpoints").latest_intact()[0].name == "step_000001"


def test_a_stop_during_start_up_ends_before_the_first_step_with_status_75(tmp_path):
    stop = StopRequest(None, ["USR1", "TERM"])
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # while the model would be building
        from nemo_resrl.training.data_parallel import SingleProcess
        from nemo_resrl.training.loop import run_training
        from tests.training.fakes import BigramEngine, fake_run_config, prompts

        policy = BigramPolicy(seed=0)
        cfg = fake_run_config(tmp_path / "run", 3)
        with pytest.raises(Preempted) as e:
            run_training(cfg, policy, BigramEngine(policy), even_first_token, prompts(6), dp=SingleProcess(),
                         print_fn=lambda s: None, stop=stop)  # fmt: skip
    finally:
        stop.restore()
    assert e.value.code == 75 and e.value.step == 0 and e.value.checkpoint is None
    pre = json.loads((tmp_path / "run" / "preempted.json").read_text())
    assert pre == {"step": 0, "reason": "SIGUSR1", "checkpoint": None}
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_fallback_sets_the_damaged_checkpoint_aside_keeps_the_good_one_and_the_rewound_rows(
    tmp_path, caplog
):
    """Before: the damaged newest checkpoint stayed among the kept ones, so keep_last pruned the intact
    one the run had fallen back to, and the metrics rows past it were dropped without a word."""
    run = tmp_path / "run"
    fake_run(run, 6, keep_last=2)  # checkpoints 5 and 6
    shard = run / "checkpoints" / "step_000006" / "actor" / "policy.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        fake_run(run, 7, keep_last=2)  # falls back to 5, redoes 5 and 6, saves 6 and 7
    assert _ckpts(run) == [6, 7] and _rows(run) == [0, 1, 2, 3, 4, 5, 6]
    damaged = list((run / "checkpoints").glob("damaged-step_000006-*"))
    assert len(damaged) == 1 and (damaged[0] / "actor" / "policy.pt").stat().st_size == 100
    (side,) = run.glob("metrics.rewound-*.jsonl")
    assert [json.loads(x)["step"] for x in side.read_text().splitlines()] == [5]
    assert "moved aside" in caplog.text and str(side) in caplog.text


def test_a_resume_with_another_algorithm_or_model_is_refused_naming_the_keys(tmp_path, caplog):
    """Each checkpoint records its run's config; a resume whose algorithm, model, data or batch shape
    differs would mix two runs in one metrics file and one checkpoint lineage."""
    from nemo_resrl.config import AlgorithmConfig
    from nemo_resrl.config.keys import ConfigError

    run = tmp_path / "run"
    fake_run(run, 2)
    rows = (run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"algorithm.name: 'resrl' -> 'grpo'.*allow_config_change"):
        fake_run(run, 3, algorithm=AlgorithmConfig.preset("grpo"))
    assert (run / "metrics.jsonl").read_text() == rows and _ckpts(run) == [1, 2]
    with caplog.at_level(logging.WARNING):  # intended: allowed, warned, logged in the metrics
        history = fake_run(run, 3, algorithm=AlgorithmConfig.preset("grpo"), allow_config_change=True)
    assert history[2]["checkpoint/config_changed"] >= 1 and "config changed" in caplog.text
    assert "checkpoint/config_changed" not in history[1]


def test_a_dir_with_metrics_rows_and_no_checkpoint_is_moved_aside_not_dropped(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "reward/mean": 0.5}\n{"step": 1, "reward/mean": 0.6}\n')
    with caplog.at_level(logging.WARNING):
        fake_run(run, 1)
    (prev,) = run.glob("previous-*")
    assert (prev / "metrics.jsonl").read_text().count("step") == 2
    assert _rows(run) == [0] and "no checkpoint to resume from" in caplog.text


class _CheckpointException(BaseException):
    """The shape of torch's ``torch.distributed.checkpoint.api.CheckpointException``: a BaseException."""


class _FullDiskTorch(BigramPolicy):
    def save_checkpoint(self, path) -> None:
        super().save_checkpoint(path)
        raise _CheckpointException(
            "CheckpointException ranks:dict_keys([0]) Worker failure: unexpected pos 2048"
        )


def test_torchs_base_exception_on_a_full_disk_is_named_like_an_os_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"no space left .* step 1"):
        fake_run(run, 2, policy=_FullDiskTorch(seed=0))
    assert not list((run / "checkpoints").glob(".partial-*"))


class _OtherModel(BigramPolicy):
    def load_checkpoint(self, path) -> None:
        raise _CheckpointException(
            "CheckpointingException: Global shape mismatch for loaded (torch.Size([256, 64])) and expected "
            "(torch.Size([256, 128])) tensor for key embedding.word_embeddings.weight"
        )


def test_a_checkpoint_of_another_model_names_the_checkpoint_and_the_tensor(tmp_path):
    run = tmp_path / "run"
    fake_run(run, 1)
    with pytest.raises(CheckpointError) as e:
        fake_run(run, 2, policy=_OtherModel(seed=0))
    msg = str(e.value)
    assert (
        "step_000001" in msg
        and "does not fit this model" in msg
        and "embedding.word_embeddings.weight" in msg
    )
    assert "(torch.Size([256, 64]))" in msg and "(torch.Size([256, 128]))" in msg


def test_a_run_dir_that_is_a_file_or_read_only_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=r"run_dir .*file cannot hold a run: a file is in the way"):
        fake_run(tmp_path / "file", 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode: nothing to test here
            pytest.skip("this user can write to a read-only directory")
        with pytest.raises(RunDirError, match=r"cannot hold a run: Permission denied"):
            fake_run(ro / "run", 1)
    finally:
        ro.chmod(0o700)


def test_a_missing_trainer_json_is_named_once(tmp_path, caplog):
    run = tmp_path / "run"
    fake_run(run, 2)
    (run / "checkpoints" / "step_000002" / "trainer.json").unlink()
    with caplog.at_level(logging.WARNING):
        fake_run(run, 3)
    assert caplog.text.count("trainer.json is missing") == 1
