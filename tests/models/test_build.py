"""The actor refuses a model or a layout it cannot run before any process group or model exists."""

from __future__ import annotations

import pytest
import torch

from nemo_resrl.config.actor import ActorConfig, ActorConfigError, MoEConfig
from nemo_resrl.models.actor import MegatronActor
from tests.models.tiny_hf import make_tiny


def test_actor_refuses_before_building(tmp_path):
    """Checkpoint and layout problems surface before any process group or model exists."""
    with pytest.raises(ActorConfigError, match="no config.json"):
        MegatronActor(ActorConfig(hf_path=str(tmp_path / "missing")))
    path = make_tiny(tmp_path / "q", "qwen3")  # 4 heads, 2 kv heads, 2 layers
    with pytest.raises(
        ActorConfigError, match="parallel=3 does not divide the model's num_attention_heads=4"
    ):
        MegatronActor(ActorConfig(hf_path=str(path), tensor_parallel=3))
    with pytest.raises(ActorConfigError, match="tensor_parallel=4 does not divide the model's num_key_value"):
        MegatronActor(ActorConfig(hf_path=str(path), tensor_parallel=4))
    with pytest.raises(ActorConfigError, match="pipeline_parallel=4 does not divide num_hidden_layers=2"):
        MegatronActor(ActorConfig(hf_path=str(path), pipeline_parallel=4))
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_unsupported_architecture_is_named(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ActorConfigError, match="architecture GPT2LMHeadModel is not supported"):
        MegatronActor(ActorConfig(hf_path=str(tmp_path)))


def test_expert_layouts_the_model_cannot_take_are_refused_before_building(tmp_path):
    import json

    import torch.distributed as dist

    moe = make_tiny(tmp_path / "m", "qwen3_moe")  # 8 experts
    with pytest.raises(ActorConfigError, match="expert_parallel=3 does not divide the model's num_experts=8"):
        MegatronActor(ActorConfig(hf_path=str(moe), expert_parallel=3))
    dense = make_tiny(tmp_path / "q", "qwen3")
    with pytest.raises(ActorConfigError, match="expert_parallel=2 needs a mixture-of-experts model"):
        MegatronActor(ActorConfig(hf_path=str(dense), expert_parallel=2))
    cfg = json.loads((moe / "config.json").read_text())
    (moe / "config.json").write_text(json.dumps({**cfg, "mlp_only_layers": [0]}))
    with pytest.raises(ActorConfigError, match="with dense layers"):
        MegatronActor(ActorConfig(hf_path=str(moe)))
    (moe / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ActorConfigError, match="token_dispatcher=alltoall needs a GPU"):
        MegatronActor(ActorConfig(hf_path=str(moe), moe=MoEConfig(token_dispatcher="alltoall")))
    assert not dist.is_initialized()


def test_nccl_is_initialised_bound_to_the_ranks_device(monkeypatch):
    """``init_process_group("nccl", device_id=...)``: communicators are created for this rank's GPU at
    once instead of lazily, group by group, at their first collective."""
    import nemo_resrl.models.parallel as par

    calls = {}
    monkeypatch.setattr(par.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(par, "running_on_cpu", lambda: False)
    monkeypatch.setattr(par.torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(
        par.dist, "init_process_group", lambda backend, **kw: calls.update(backend=backend, **kw)
    )
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    par.init_distributed()
    assert calls["backend"] == "nccl" and calls["set_device"] == 3
    assert calls["device_id"] == torch.device("cuda", 3)


def test_the_local_spec_keeps_the_torch_jit_fusions_on_a_gpu():
    """On CPU every fusion is off (CUDA kernels); on a GPU without TransformerEngine only those that need
    apex or compiled kernels: bias + SwiGLU and bias + dropout + add stay fused."""
    from nemo_resrl.models.build import CPU_OFF_FUSIONS, local_spec_fusions_off

    assert set(local_spec_fusions_off(cuda=False)) == set(CPU_OFF_FUSIONS)
    gpu = set(local_spec_fusions_off(cuda=True))
    assert {"bias_activation_fusion", "bias_dropout_fusion"} & gpu == set()
    assert {"masked_softmax_fusion", "gradient_accumulation_fusion", "apply_rope_fusion"} <= gpu
