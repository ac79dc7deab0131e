"""Every shipped YAML loads and validates; bad keys and values are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_resrl.config import CONF_DIR, ConfigError, load_config

GROUPS = {
    g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in ("algorithm", "model", "precision")
}


def test_groups_hold_every_algorithm_and_model():
    assert set(GROUPS["algorithm"]) == {"grpo", "dr_grpo", "psr", "nsr", "w_reinforce", "dapo", "resrl"}
    assert {"cpu_smollm2", "qwen3_1p7b", "qwen3_4b", "qwen3_8b", "qwen3_14b", "qwen3_32b"} <= set(
        GROUPS["model"]
    )
    every_yaml = {p.relative_to(CONF_DIR).as_posix() for p in Path(CONF_DIR).rglob("*.yaml")}
    listed = {"config.yaml", "eval.yaml"} | {f"{g}/{n}.yaml" for g, names in GROUPS.items() for n in names}
    assert every_yaml == listed  # nothing shipped that this test does not load


def test_the_eval_yaml_loads_and_validates():
    from nemo_resrl.evaluation.config import load_eval_config

    cfg = load_eval_config(["model=/ckpt/model", "benchmarks=[data/aime24.jsonl]"])
    assert cfg.sampling.n == 8 and cfg.sampling.temperature == 0.6 and cfg.benchmark_names() == ["aime24"]


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_yaml_loads_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if group == "model" and option != "cpu_smollm2":
        overrides.append("actor.hf_path=/ckpt/model")
    if group == "precision" and option == "fp8":
        overrides += ["model=qwen3_8b", "actor.hf_path=/ckpt/model"]
    cfg = load_config(overrides)
    if group == "algorithm":
        assert cfg.algorithm.name == option
    if group == "model" and option.startswith("qwen3"):
        assert cfg.actor.dtype == "bf16" and cfg.rollout.tensor_parallel == cfg.actor.tensor_parallel


def test_defaults_are_the_spec_ones():
    cfg = load_config()
    r = cfg.algorithm.resrl
    assert (r.max_rows, r.rank, r.alpha, r.beta, r.xi, r.lambda_pos) == (4096, 64, 0.2, 0.8, 0.1, 0.1)
    assert (cfg.algorithm.loss.clip_low, cfg.algorithm.loss.clip_high, cfg.algorithm.loss.dual_clip_c) == (
        0.2,
        0.2,
        3.0,
    )
    assert load_config(["algorithm=dapo"]).algorithm.loss.clip_high == 0.28


@pytest.mark.parametrize(
    "override, needle",
    [
        ("trainer.stepz=3", "stepz"),
        ("actor.tensor_parallel=two", "actor.tensor_parallel"),
        ("algorithm.resrl.alpha=0.9", "resrl.alpha"),
        ("algorithm.name=ppo", "algorithm.name"),
        ("rollout.sampling.top_p=0", "rollout.sampling.top_p"),
        ("rollout.tensor_parallel=2", "rollout.tensor_parallel"),
        ("data.source=csv", "data.source"),
        ("algorithm=ppo", "ppo"),
        ("data.on_bad_row=ignore", "data.on_bad_row"),
        ("data.prompt_template=no_placeholder", "data.prompt_template"),
        ("rollout.sampling.temperature=0", "rollout.sampling.temperature"),
        ("rollout.sampling.max_tokens=400", "data.max_prompt_tokens"),
        ("algorithm.overlong.buffer=500", "algorithm.overlong.buffer"),
        ("algorithm.dynamic_sampling.max_rounds=0", "dynamic_sampling.max_rounds"),
        ("trainer.lld_every=-1", "trainer.lld_every"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config([override])


def test_gpu_presets_need_a_checkpoint_path():
    with pytest.raises(ConfigError, match="hf_path"):
        load_config(["model=qwen3_8b"])


def test_cross_section_rules_name_both_keys():
    with pytest.raises(ConfigError, match="reward.name=reasoning_gym.*data.source=reasoning_gym"):
        load_config(["data.source=jsonl", "data.path=x.jsonl"])
    with pytest.raises(ConfigError, match="data.eval_path"):
        load_config(["data.source=jsonl", "data.path=x.jsonl", "reward.name=math", "trainer.eval_every=2"])
    cfg = load_config(["data.source=jsonl", "data.path=x.jsonl", "reward.name=math", "trainer.eval_every=0"])
    assert cfg.data.path == "x.jsonl"


def test_dapo_preset_turns_on_dynamic_sampling_and_overlong_shaping():
    cfg = load_config(["algorithm=dapo"])
    assert cfg.algorithm.dynamic_sampling.enabled and cfg.algorithm.overlong.enabled
    assert not load_config(["algorithm=grpo"]).algorithm.dynamic_sampling.enabled
