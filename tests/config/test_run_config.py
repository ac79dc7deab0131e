"""The run config: every shipped YAML loads and validates (without the training stack), every bad value
is refused with the key a user types, the algorithm presets equal their specs, ``--config-dir``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_resrl.algorithms.advantages import ADVANTAGE_ESTIMATORS
from nemo_resrl.config import CONF_DIR, AlgorithmConfig, ConfigError, RewardConfig, RunConfig, load_config
from nemo_resrl.config.specs import ALGORITHM_SPECS

ROOT = Path(__file__).resolve().parents[2]
GROUPS = {
    g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in ("algorithm", "model", "precision")
}


def _overrides(group: str, option: str) -> list[str]:
    """What loading ``group=option`` needs besides (GPU presets need a checkpoint path)."""
    out = [f"{group}={option}"]
    gpu = ["actor.hf_path=/ckpt/model", "data.path=/data/math.jsonl"]
    if group == "model" and option != "cpu_smollm2":
        out += gpu
    if group == "precision" and option == "fp8":
        out += ["model=qwen3_8b", *gpu]
    return out


def test_groups_hold_every_algorithm_and_model():
    assert set(GROUPS["algorithm"]) == set(ALGORITHM_SPECS.names())
    assert {"cpu_smollm2", "qwen3_1p7b", "qwen3_4b", "qwen3_8b", "qwen3_14b", "qwen3_32b"} <= set(
        GROUPS["model"]
    )
    every_yaml = {p.relative_to(CONF_DIR).as_posix() for p in Path(CONF_DIR).rglob("*.yaml")}
    listed = {"config.yaml", "eval.yaml"} | {f"{g}/{n}.yaml" for g, names in GROUPS.items() for n in names}
    assert every_yaml == listed  # nothing shipped that these tests do not load


def test_the_configs_are_installed_with_the_package(tmp_path):
    """A wheel of the project holds every shipped YAML (``pip install .`` outside a checkout has them)."""
    import zipfile

    import nemo_resrl

    assert CONF_DIR == Path(nemo_resrl.__file__).parent / "conf"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
    ]
    res = subprocess.run([*cmd, str(ROOT)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = tmp_path.glob("nemo_resrl-*.whl")
    shipped = {f"nemo_resrl/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert shipped and shipped <= set(zipfile.ZipFile(wheel).namelist())


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_yaml_loads_and_validates(group, option):
    cfg = load_config(_overrides(group, option))
    if group == "algorithm":
        assert cfg.algorithm.name == option
    if group == "model" and option.startswith("qwen3"):
        assert cfg.actor.dtype == "bf16" and cfg.rollout.tensor_parallel % cfg.actor.tensor_parallel == 0


def test_loading_every_config_imports_no_training_stack():
    """The schema layer: composing and validating every shipped config (train and eval) imports neither
    megatron, vLLM nor transformers (a fresh interpreter, so nothing else imported them first)."""
    loads = [_overrides(g, o) for g, opts in GROUPS.items() for o in opts]
    code = f"""
import json, sys
from nemo_resrl.config import load_config, load_eval_config
for overrides in {loads!r}:
    load_config(overrides)
load_eval_config(["model=/m", "benchmarks=[a.jsonl]"])
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"megatron", "vllm", "transformers"}})
print(json.dumps(heavy))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_defaults_are_the_spec_ones():
    cfg = load_config()
    r = cfg.algorithm.resrl
    assert (r.max_rows, r.rank, r.alpha, r.beta, r.xi, r.lambda_pos) == (4096, 64, 0.2, 0.8, 0.1, 0.1)
    loss = cfg.algorithm.loss
    assert (loss.clip_low, loss.clip_high, loss.dual_clip_c, loss.agg) == (0.2, 0.2, 3.0, "token-mean")


@pytest.mark.parametrize("name", sorted(ALGORITHM_SPECS.names()))
def test_each_preset_yaml_equals_its_spec(name):
    """conf/algorithm/<name>.yaml and the algorithm's spec agree on every value."""
    cfg = load_config([f"algorithm={name}"])
    assert cfg.algorithm == AlgorithmConfig.preset(name).resolve(cfg.rollout.sampling.max_tokens)
    spec = ALGORITHM_SPECS.get(name)
    assert spec.estimator in ADVANTAGE_ESTIMATORS
    assert spec.group_normalised == (spec.estimator in ("grpo", "dr_grpo", "rloo"))
    assert spec.trains_on in ("all", "correct", "incorrect") and spec.reference
    # the reward the recipe sets, and the grader's reward everywhere else
    assert cfg.reward == dataclasses.replace(RewardConfig(), **spec.reward)


def test_an_algorithm_name_alone_brings_its_recipe():
    loaded = load_config(["algorithm.name=dapo"])
    dapo = loaded.algorithm
    assert dapo == AlgorithmConfig.preset("dapo").resolve(loaded.rollout.sampling.max_tokens)
    assert dapo.loss.clip_high == 0.28 and dapo.dynamic_sampling.enabled and dapo.overlong.enabled
    # and a name switched away from DAPO does not keep DAPO's settings
    grpo = load_config(["algorithm=dapo", "algorithm=grpo"]).algorithm
    assert grpo.loss.clip_high == 0.2 and not grpo.dynamic_sampling.enabled
    assert (
        load_config(["algorithm.name=dapo", "algorithm.loss.clip_high=0.3"]).algorithm.loss.clip_high == 0.3
    )
    with pytest.raises(ConfigError, match="algorithm=grpo and algorithm.name=dapo disagree"):
        load_config(["algorithm=grpo", "algorithm.name=dapo"])


def _sections(cls=RunConfig, prefix: str = "") -> list[str]:
    """Every section path of the schema (``actor``, ``actor.optim``, ...)."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            path = f"{prefix}{f.name}"
            out += [path, *_sections(type(default), path + ".")]
    return out


# one bad value per section: (override, the key the message must start with)
BAD_PER_SECTION = {
    "actor": ("actor.micro_batch_size=0", "actor.micro_batch_size"),
    "actor.optim": ("actor.optim.lr=-1", "actor.optim.lr"),
    "actor.offload": ("actor.offload.params=maybe", "actor.offload.params"),
    "rollout": ("rollout.gpu_memory_utilization=1.5", "rollout.gpu_memory_utilization"),
    "rollout.sampling": ("rollout.sampling.top_p=0", "rollout.sampling.top_p"),
    "algorithm": ("algorithm.name=ppo", "algorithm.name"),
    "algorithm.advantage": ("algorithm.advantage.epsilon=0", "algorithm.advantage.epsilon"),
    "algorithm.loss": ("algorithm.loss.clip_low=1.5", "algorithm.loss.clip_low"),
    "algorithm.resrl": ("algorithm.resrl.alpha=0.9", "algorithm.resrl.alpha"),
    "algorithm.dynamic_sampling": (
        "algorithm.dynamic_sampling.max_rounds=0",
        "algorithm.dynamic_sampling.max_rounds",
    ),
    "algorithm.overlong": ("algorithm.overlong.factor=-1", "algorithm.overlong.factor"),
    "trainer": ("trainer.lld_every=-1", "trainer.lld_every"),
    "data": ("data.on_bad_row=ignore", "data.on_bad_row"),
    "reward": ("reward.workers=0", "reward.workers"),
    "reward.length_scale": ("reward.length_scale.start=0", "reward.length_scale.start"),
    "cluster": ("cluster.mfu=2", "cluster.mfu"),
    "actor.arch": ("actor.arch.num_layers=4", "actor.arch.hidden_size"),
    "actor.moe": ("actor.moe.aux_loss_coeff=0.01", "actor.moe.aux_loss_coeff"),
    "checkpoint": ("checkpoint.keep_last=0", "checkpoint.keep_last"),
    "logging": ("logging.run_dir=''", "logging.run_dir"),
}


def test_the_bad_values_cover_every_section():
    assert set(BAD_PER_SECTION) == set(_sections())


@pytest.mark.parametrize("section", sorted(BAD_PER_SECTION))
def test_a_bad_value_in_every_section_names_the_full_key(section):
    override, key = BAD_PER_SECTION[section]
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert str(e.value).startswith((key + " ", key + ": ")), str(e.value)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["actor.tensor_parallel=2", "rollout.tensor_parallel=3"], "rollout.tensor_parallel"),
        (["rollout.sampling.temperature=0"], "rollout.sampling.temperature"),
        (["rollout.sampling.max_tokens=400"], "data.max_prompt_tokens"),
        (["algorithm.overlong.buffer=500"], "algorithm.overlong.buffer"),
        (["rollout.sampling.n=1"], "rollout.sampling.n"),
        (["data.source=jsonl", "data.path=x.jsonl"], "reward.name"),
        (
            ["data.source=jsonl", "data.path=x.jsonl", "reward.name=math", "trainer.eval_every=2"],
            "trainer.eval_every",
        ),
    ],
)
def test_cross_section_rules_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides)
    assert str(e.value).startswith(key + " "), str(e.value)


def test_rules_that_hold_when_the_values_fit():
    cfg = load_config(["data.source=jsonl", "data.path=x.jsonl", "reward.name=math", "trainer.eval_every=0"])
    assert cfg.data.path == "x.jsonl"
    assert (
        load_config(["algorithm=psr", "rollout.sampling.n=1"]).rollout.sampling.n == 1
    )  # not group-normalised
    with pytest.raises(ConfigError, match="data.eval_path"):
        load_config(["data.source=jsonl", "data.path=x.jsonl", "reward.name=math", "trainer.eval_every=2"])


def test_a_kl_penalty_and_tis_load_and_their_bad_values_name_the_key():
    cfg = load_config(["algorithm.loss.kl_coef=0.1", "algorithm.loss.kl_type=k2", "algorithm.loss.tis_cap=2"])
    loss = cfg.algorithm.loss
    assert (loss.kl_coef, loss.kl_type, loss.tis_cap) == (0.1, "k2", 2)
    for override, key in [
        ("algorithm.loss.kl_coef=-1", "algorithm.loss.kl_coef"),
        ("algorithm.loss.kl_type=k9", "algorithm.loss.kl_type"),
        ("algorithm.loss.tis_cap=0.5", "algorithm.loss.tis_cap"),
        ("algorithm.loss.agg_constant=0", "algorithm.loss.agg_constant"),
        ("algorithm.loss.agg=token-sum", "algorithm.loss.agg"),
        ("algorithm.resrl.positive_set=score", "algorithm.resrl.positive_set"),
        ("algorithm.resrl.deferred_rows_mib=-1", "algorithm.resrl.deferred_rows_mib"),
        ("reward.incorrect=0.5", "reward.incorrect"),
        ("reward.shaping=cosine", "reward.shaping"),
        ("reward.length_scale.max_length=3000", "reward.length_scale.max_length"),
        ("reward.length_scale.end_scale=1.5", "reward.length_scale.end_scale"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config([override])
        assert str(e.value).startswith(key), str(e.value)


def test_the_resrl_preset_is_the_released_recipe_and_baselines_can_share_its_reward():
    cfg = load_config(["algorithm=resrl"])
    assert cfg.algorithm.resrl.positive_set == "correct"
    assert (cfg.reward.incorrect, cfg.reward.shaping) == (-1.0, "length_scaled")
    ls = cfg.reward.length_scale
    assert (ls.start, ls.max_length, ls.end_scale) == (3500, 4096, 0.7)
    grpo = load_config(["algorithm=grpo"])
    assert (grpo.reward.incorrect, grpo.reward.shaping) == (None, "none")
    same = load_config(["algorithm=grpo", "reward.incorrect=-1", "reward.shaping=length_scaled"])
    assert same.reward == cfg.reward


def test_unknown_keys_and_added_keys_are_refused_with_the_section_keys():
    with pytest.raises(
        ConfigError, match=r"^trainer\.stepz: no such key; trainer has: steps, prompts_per_step"
    ):
        load_config(["trainer.stepz=3"])
    with pytest.raises(ConfigError, match=r"^\+trainer\.stepz=3: adding keys with '\+' is not supported"):
        load_config(["+trainer.stepz=3"])
    with pytest.raises(ConfigError, match="actor.tensor_parallel"):
        load_config(["actor.tensor_parallel=two"])
    with pytest.raises(ConfigError, match="ppo"):
        load_config(["algorithm=ppo"])


@pytest.mark.parametrize("model", [m for m in GROUPS["model"] if m.startswith("qwen3")])
def test_gpu_presets_need_a_checkpoint_and_a_training_set(model):
    """The GPU presets do not inherit the CPU default's 8 one-digit sums (every group would have zero
    reward variance on a real model): they ask for a math training set and grade it with math-verify."""
    with pytest.raises(ConfigError, match="hf_path"):
        load_config([f"model={model}", "data.path=/data/math.jsonl"])
    with pytest.raises(ConfigError, match="data.path"):
        load_config([f"model={model}", "actor.hf_path=/ckpt/model"])
    cfg = load_config([f"model={model}", "actor.hf_path=/ckpt/model", "data.path=/data/math.jsonl"])
    assert (cfg.data.source, cfg.reward.name, cfg.rollout.sampling.seed_mode) == ("jsonl", "math", "step")


def test_a_users_config_dir_adds_options_and_replaces_shipped_files(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        "# @package _global_\nactor:\n  hf_path: /my/model\ntrainer:\n  prompts_per_step: 16\n"
    )
    (tmp_path / "algorithm").mkdir()
    (tmp_path / "algorithm" / "grpo.yaml").write_text(
        "# @package _global_\nalgorithm:\n  name: grpo\n  loss:\n    clip_high: 0.25\n"
    )
    cfg = load_config(["model=mine", "algorithm=grpo"], config_dir=tmp_path)
    assert cfg.actor.hf_path == "/my/model" and cfg.trainer.prompts_per_step == 16
    assert cfg.algorithm.loss.clip_high == 0.25  # the user's grpo.yaml replaced the shipped one
    assert load_config(["algorithm=dapo"], config_dir=tmp_path).algorithm.loss.clip_high == 0.28
    short_yaml = "defaults:\n  - run_schema\n  - _self_\n  - algorithm: grpo\n  - model: cpu_smollm2\n"
    (tmp_path / "short.yaml").write_text(
        short_yaml + "trainer:\n  steps: 3\ndata:\n  max_prompt_tokens: 64\n"
    )
    short = load_config([], config_dir=tmp_path, name="short")
    assert short.trainer.steps == 3 and short.algorithm.name == "grpo"
    with pytest.raises(ConfigError, match="is not a directory"):
        load_config([], config_dir=tmp_path / "nope")


def test_the_eval_yaml_loads_and_validates():
    from nemo_resrl.config import load_eval_config

    cfg = load_eval_config(["model=/ckpt/model", "benchmarks=[data/aime24.jsonl]"])
    assert cfg.sampling.n == 8 and cfg.sampling.temperature == 0.6 and cfg.benchmark_names() == ["aime24"]
    assert not cfg.sleep_while_training  # the eval config is the rollout engine's config as it is


def test_qwen3_4b_with_resrl_is_the_released_run():
    """The released ResRL train_command.sh (Qwen3-4B): 256 prompts x 4 samples at T = 1, 4096 response and
    2048 prompt tokens, mini-batches of 64 prompts, lr 1e-6, 10 warm-up steps, weight decay 0.1, grad clip
    1, the length scale reaching 0.7 at the budget."""
    cfg = load_config(["model=qwen3_4b", "actor.hf_path=/m", "data.path=/d.jsonl"])
    s, t, o = cfg.rollout.sampling, cfg.trainer, cfg.actor.optim
    assert (t.prompts_per_step, s.n, s.temperature, s.max_tokens) == (256, 4, 1.0, 4096)
    assert (cfg.data.max_prompt_tokens, t.prompts_per_step // t.mini_batches) == (2048, 64)
    assert (o.lr, o.warmup_steps, o.weight_decay, o.clip_grad) == (1e-6, 10, 0.1, 1.0)
    assert cfg.reward.length_scale.max_length == s.max_tokens and cfg.algorithm.name == "resrl"


def test_expert_tensor_parallel_without_expert_parallel_must_equal_tensor_parallel():
    """Otherwise megatron-core reduces expert gradients over the data-parallel ranks only (silently
    wrong: measured as a different step at TP=2 with expert_tensor_parallel=1)."""
    from nemo_resrl.config import ActorConfig, ConfigError

    bad = ActorConfig(hf_path="x", tensor_parallel=2, expert_tensor_parallel=1)
    with pytest.raises(ConfigError, match="actor.expert_tensor_parallel"):
        bad.validate()
    assert ActorConfig(hf_path="x", tensor_parallel=2).validate().resolved_expert_tensor_parallel == 2
    ep = ActorConfig(hf_path="x", tensor_parallel=2, expert_parallel=4).validate()
    assert ep.resolved_expert_tensor_parallel == 1
    assert ActorConfig(hf_path="x", tensor_parallel=2, expert_parallel=4, expert_tensor_parallel=2).validate()


def test_sequence_parallel_is_on_for_moe_under_tensor_parallel_and_pads_to_tensor_parallel():
    from nemo_resrl.config import ActorConfig

    tp2 = ActorConfig(hf_path="x", tensor_parallel=2).validate()
    assert tp2.uses_sequence_parallel(moe=True) and not tp2.uses_sequence_parallel(moe=False)
    assert tp2.seq_len_multiple(moe=True) == 2 and tp2.seq_len_multiple(moe=False) == 1
    fp8 = ActorConfig(hf_path="x", tensor_parallel=4, sequence_parallel=True, pad_to_multiple=6).validate()
    assert fp8.seq_len_multiple(moe=False) == 12
    assert not ActorConfig(hf_path="x", sequence_parallel=True).validate().uses_sequence_parallel(moe=True)


def test_derived_values_are_filled_once_when_the_config_is_loaded():
    """Dr.GRPO's constant and DAPO's overlong buffer come from the generation budget; a loaded config
    holds them (what the run uses and --print-config shows), and resolving again changes nothing."""
    cfg = load_config(["algorithm=dr_grpo", "rollout.sampling.max_tokens=40"])
    assert cfg.algorithm.loss.agg == "seq-mean-token-sum-norm" and cfg.algorithm.loss.agg_constant == 40.0
    assert cfg.resolve() == cfg
    dapo = load_config(["algorithm=dapo", "rollout.sampling.max_tokens=40"]).algorithm
    assert dapo.overlong.enabled and dapo.overlong.buffer == 8  # a fifth of the budget
    assert load_config(["algorithm=dapo", "rollout.sampling.max_tokens=3"]).algorithm.overlong.buffer == 1
    mine = load_config(["algorithm=dapo", "algorithm.overlong.buffer=5", "algorithm.loss.agg_constant=7"])
    assert mine.algorithm.overlong.buffer == 5 and mine.algorithm.loss.agg_constant == 7.0  # set: kept
    assert load_config([]).algorithm.loss.agg_constant is None  # token-mean needs no constant
