"""The actor section: values and the machine are checked before anything is built, with errors that
name the key."""

from __future__ import annotations

import pytest

from nemo_resrl.config import ActorConfig, ActorConfigError, ConfigError, OffloadConfig, OptimConfig


def _env(cfg, te=False, cuda=False, cap=None):
    return cfg.check_environment(te_available=te, cuda=cuda, capability=cap)


def test_defaults_validate_and_resolve_to_local_on_cpu():
    cfg = ActorConfig(hf_path="x").validate()
    assert _env(cfg) == "local"
    assert _env(cfg, te=True, cuda=True, cap=(9, 0)) == "te"


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"tensor_parallel": 0}, "actor.tensor_parallel"),
        ({"dtype": "fp16"}, "actor.dtype"),
        ({"layer_spec": "apex"}, "actor.layer_spec"),
        ({"fp8": "e5m2"}, "actor.fp8"),
        ({"fp8_recipe": "nvfp4"}, "actor.fp8_recipe"),
        ({"fp8": "hybrid", "layer_spec": "local", "dtype": "bf16"}, "actor.fp8"),
        ({"fp8": "hybrid", "dtype": "fp32"}, "actor.fp8"),
        ({"optim": OptimConfig(lr=0.0)}, "optim.lr"),
        ({"optim": OptimConfig(decay_style="step")}, "optim.decay_style"),
        ({"hf_path": ""}, "actor.hf_path"),
    ],
)
def test_bad_values_name_the_key(kw, key):
    cfg = ActorConfig(**{"hf_path": "x", **kw})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg.validate()


def test_fp8_needs_transformer_engine_and_a_recent_gpu():
    cfg = ActorConfig(hf_path="x", fp8="hybrid", dtype="bf16").validate()
    with pytest.raises(ActorConfigError, match="needs TransformerEngine"):
        _env(cfg, te=False, cuda=True, cap=(9, 0))
    with pytest.raises(ActorConfigError, match="needs a CUDA GPU"):
        _env(cfg, te=True, cuda=False)
    with pytest.raises(ActorConfigError, match=r"compute capability >= 8\.9.*this GPU is 8\.0"):
        _env(cfg, te=True, cuda=True, cap=(8, 0))
    assert _env(cfg, te=True, cuda=True, cap=(9, 0)) == "te"
    mx = ActorConfig(hf_path="x", fp8="e4m3", fp8_recipe="mxfp8", dtype="bf16").validate()
    with pytest.raises(ActorConfigError, match=r"mxfp8 needs a GPU of compute capability >= 10\.0"):
        _env(mx, te=True, cuda=True, cap=(9, 0))


def test_te_spec_without_te_and_packing_with_te_are_refused():
    with pytest.raises(ActorConfigError, match="layer_spec te needs TransformerEngine"):
        _env(ActorConfig(hf_path="x", layer_spec="te").validate())
    with pytest.raises(ActorConfigError, match="pack_sequences"):
        _env(ActorConfig(hf_path="x", pack_sequences=True).validate(), te=True, cuda=True, cap=(9, 0))


def test_auto_layer_spec_on_a_gpu_without_transformer_engine_takes_the_local_one_with_a_warning(caplog):
    """The GPU machines this project can borrow have no TransformerEngine: auto builds the local layers
    there and says so (the plan at launch counts their memory)."""
    with caplog.at_level("WARNING"):
        assert _env(ActorConfig(hf_path="x"), te=False, cuda=True, cap=(9, 0)) == "local"
    assert "TransformerEngine is not installed" in caplog.text and "layer_spec local" in caplog.text
    caplog.clear()
    assert _env(ActorConfig(hf_path="x", layer_spec="local"), te=False, cuda=True, cap=(9, 0)) == "local"
    assert _env(ActorConfig(hf_path="x"), te=False, cuda=False) == "local"  # CPU: local is the only choice
    assert not caplog.text


def test_gradient_accumulation_fusion_is_explicit_and_needs_the_te_spec():
    assert ActorConfig().gradient_accumulation_fusion is False
    cfg = ActorConfig(hf_path="x", gradient_accumulation_fusion=True)
    with pytest.raises(ActorConfigError, match="gradient_accumulation_fusion needs the TransformerEngine"):
        _env(cfg, te=False, cuda=False)
    assert _env(cfg, te=True, cuda=True, cap=(9, 0)) == "te"


@pytest.mark.parametrize(
    "kw, multiple",
    [
        ({}, 1),
        ({"fp8": "hybrid", "dtype": "bf16"}, 16),
        ({"fp8": "e4m3", "fp8_recipe": "blockwise", "dtype": "bf16"}, 128),
        ({"fp8": "e4m3", "fp8_recipe": "mxfp8", "dtype": "bf16"}, 128),
        ({"pad_to_multiple": 8}, 8),
    ],
)
def test_micro_batches_are_padded_to_what_the_fp8_recipe_needs(kw, multiple):
    assert ActorConfig(hf_path="x", **kw).validate().token_multiple == multiple


def test_offload_switches_are_part_of_the_actor_section():
    cfg = ActorConfig(hf_path="x", offload=OffloadConfig(optimizer=True, grads=True, params=True)).validate()
    assert cfg.offload.params and cfg.offload.grads and cfg.offload.optimizer
