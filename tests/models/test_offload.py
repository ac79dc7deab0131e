"""``actor.offload``: storages really leave while offloaded and come back bit-identical (``offload.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemo_resrl.models.offload import StorageOffload
from tests.launch import run_module
from tests.models.tiny_hf import make_tiny


def test_offload_frees_shared_storages_once_and_restores_every_view():
    buf = torch.arange(12, dtype=torch.float32)
    a, b = buf[:6].view(2, 3), buf[6:]  # two views of one storage, as megatron's buffers are
    other = torch.ones(4)
    off = StorageOffload([a, b, other])
    assert len(off.storages) == 2 and off.nbytes == 12 * 4 + 4 * 4
    off.offload()
    assert off.resident_bytes() == 0 and buf.untyped_storage().nbytes() == 0
    off.onload()
    assert torch.equal(buf, torch.arange(12, dtype=torch.float32)) and torch.equal(other, torch.ones(4))
    assert torch.equal(a, torch.arange(6, dtype=torch.float32).view(2, 3))  # the views see it again
    b.add_(1)  # and still alias the storage
    assert buf[6] == 7.0


def test_buffers_not_kept_come_back_zeroed_and_excluded_storages_stay():
    grads, params = torch.full((5,), 3.0), torch.full((3,), 2.0)
    kept = StorageOffload([params])
    off = StorageOffload([grads, params], keep=False, exclude=kept.keys())
    assert len(off.storages) == 1
    off.offload()
    assert params.untyped_storage().nbytes() == 12  # excluded: untouched
    off.onload()
    assert torch.equal(grads, torch.zeros(5))


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("offload")
    make_tiny(work / "qwen3", "qwen3")
    res = run_module("tests.models.offload_probe", work / "qwen3", work / "ckpt", timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads(res.stdout.split("RESULT ")[-1].splitlines()[0])
    r["ckpt"] = str(work / "ckpt")
    return r


@pytest.mark.distributed
@pytest.mark.slow
def test_the_offloaded_actor_frees_its_memory_and_trains_bit_identically(probe):
    """Optimizer state, gradient buffers and parameters offloaded between steps (in the trainer's order):
    nothing of them is resident while offloaded, and three steps equal those of an actor that never
    offloads, bit for bit; a checkpoint save brings everything back first."""
    r = probe
    assert r["optimizer_bytes"] > 0 and r["grad_bytes"] > 0 and r["param_bytes"] > 0
    for s in range(3):
        assert r[f"step{s}_optimizer_resident"] == r[f"step{s}_grads_resident"] == 0
        assert r[f"step{s}_params_resident"] == 0
        assert r[f"step{s}_equal"]
    assert r["saved_while_offloaded"] and (Path(r["ckpt"]) / "metadata.json").exists()


@pytest.mark.distributed
@pytest.mark.slow
def test_padding_micro_batches_for_fp8_changes_no_log_prob_or_loss(probe):
    """pad_to_multiple=16 (what FP8 GEMMs need): the 12-token batch runs as 16 tokens per row; padding is
    causal-masked away from every real token, so log-probs and the loss equal the unpadded actor's (float
    noise), also after a step."""
    assert probe["pad_seq_len"] == 16
    assert probe["pad_logp_diff"] < 1e-5 and probe["pad_loss_diff"] < 1e-6
    assert probe["pad_logp_diff_after_step"] < 1e-3
