"""The plan ``nemo-resrl train`` checks on a GPU before it allocates anything: for the job's real shape,
refused (``cluster.enforce=error``), warned about (``warn``) or skipped (``off``)."""

from __future__ import annotations

import logging
import types

import pytest

from nemo_resrl.config import ConfigError, load_config
from nemo_resrl.plan.cli import load_plan_config
from nemo_resrl.plan.launch_check import check_plan_at_launch, job_cluster
from nemo_resrl.plan.phases import GIB

H100 = int(79.6 * GIB)


@pytest.fixture(autouse=True)
def transformer_engine_installed(monkeypatch):
    """The launch check plans the layers the job will build: these tests stand on a TE machine."""
    import nemo_resrl.compat.te_stub as te_stub

    monkeypatch.setattr(te_stub, "transformer_engine_available", lambda check_import=False: True)


def test_the_job_shape_replaces_the_cluster_section():
    cfg = load_plan_config(["model=qwen3_32b"])
    job = job_cluster(cfg, world_size=16, gpus_per_node=8, device_bytes=H100).cluster
    assert (job.nodes, job.gpus_per_node, job.gpu_memory_gib) == (2, 8, pytest.approx(79.6))
    job = job_cluster(cfg, world_size=6, gpus_per_node=4, device_bytes=H100).cluster
    assert (job.nodes, job.gpus_per_node) == (1, 6)


def test_a_preset_that_fits_its_job_starts_and_says_so():
    printed: list[str] = []
    cfg = load_plan_config(["model=qwen3_8b"])
    plan = check_plan_at_launch(
        cfg, world_size=8, gpus_per_node=8, device_bytes=H100, print_fn=printed.append
    )
    assert plan.fits and printed[0].startswith("plan (8 GPU(s) of 79.6 GiB): fits: every phase")


def test_a_job_that_cannot_fit_is_refused_naming_the_phase_and_a_fix():
    cfg = load_plan_config(["model=qwen3_8b"])
    with pytest.raises(ConfigError) as e:  # 40 GB GPUs: the same preset does not fit
        check_plan_at_launch(cfg, world_size=8, gpus_per_node=8, device_bytes=40 * GIB)
    msg = str(e.value)
    assert msg.startswith("cluster.enforce=error: the plan for this job (8 GPU(s) of 40.0 GiB) does not fit")
    assert "does not fit: generation" in msg and "cluster.enforce=warn" in msg
    # a job with more GPUs than the preset's cluster section is planned for its real size
    fits = check_plan_at_launch(cfg, world_size=16, gpus_per_node=8, device_bytes=H100, print_fn=lambda s: 0)
    assert fits.layout.dp == 4


def test_without_transformer_engine_auto_is_planned_as_the_local_layers_it_builds(monkeypatch):
    """``layer_spec: auto`` builds megatron-core's local layers where TransformerEngine is missing: the launch
    check plans those (their attention memory), not TransformerEngine's."""
    import nemo_resrl.compat.te_stub as te_stub
    from nemo_resrl.plan.phases import make_plan

    cfg = load_plan_config(["model=qwen3_8b", "actor.attention=unfused"])
    with_te = make_plan(cfg, te_available=True).phase("training").total
    without = make_plan(cfg, te_available=False).phase("training").total
    assert without > with_te
    sdpa = load_plan_config(["model=qwen3_8b", "actor.attention=sdpa"])
    assert with_te < make_plan(sdpa, te_available=False).phase("training").total < without
    monkeypatch.setattr(te_stub, "transformer_engine_available", lambda check_import=False: False)
    # the 8B preset's 8 x 80 GB: the unfused attention scores do not fit in training; the fix is named
    with pytest.raises(ConfigError, match=r"does not fit: training needs .*actor.recompute=full"):
        check_plan_at_launch(cfg, world_size=8, gpus_per_node=8, device_bytes=H100)


def test_warn_goes_on_and_off_skips_the_plan(caplog):
    cfg = load_plan_config(["model=qwen3_8b", "cluster.enforce=warn"])
    with caplog.at_level(logging.WARNING):
        plan = check_plan_at_launch(cfg, world_size=8, gpus_per_node=8, device_bytes=40 * GIB)
    assert not plan.fits and "cluster.enforce=warn: the plan for this job" in caplog.text
    off = load_plan_config(["model=qwen3_8b", "cluster.enforce=off"])
    assert check_plan_at_launch(off, world_size=8, gpus_per_node=8, device_bytes=GIB) is None


def test_train_on_a_cuda_device_checks_the_plan_before_building_the_actor(tmp_path, monkeypatch):
    """With CUDA reported present (1 GiB of device memory) the CPU default run stops at the plan, with
    the message the CLI prints, before the actor or the engine exist."""
    import torch

    import nemo_resrl.launch as launch
    import nemo_resrl.models.actor as actor

    def no_actor(*a, **k):
        raise AssertionError("the actor was built before the plan was checked")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=GIB)
    )
    monkeypatch.setattr(actor, "MegatronActor", no_actor)
    monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = load_config([f"logging.run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"the plan for this job \(1 GPU\(s\) of 1.0 GiB\) does not fit"):
        launch.train(cfg)
