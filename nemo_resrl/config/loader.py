"""Loading configs: the shipped Hydra configs (``nemo_resrl/conf``, installed with the package), a
user's own directory laid over them, command-line overrides, then the one validation pass.

``load_config(overrides)`` composes ``conf/config.yaml`` (groups ``algorithm``, ``model``,
``precision``) with Hydra overrides (``algorithm=grpo trainer.steps=20``), merges the result into the
``RunConfig`` schema (unknown keys and wrong types are refused by OmegaConf's structured configs) and
validates it. ``config_dir``: a directory of the user's whose files replace the shipped files of the
same name and add new options (``<dir>/model/my_model.yaml`` is ``model=my_model``); ``name`` picks
the top-level file (``config``).

``algorithm.name=<name>`` alone loads that algorithm's preset, as ``algorithm=<name>`` does: the name
of an algorithm brings its recipe (DAPO's clip-higher, dynamic sampling and overlong shaping), never
the previous algorithm's settings under a new name.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_resrl.config.eval import EvalConfig
from nemo_resrl.config.keys import ConfigError
from nemo_resrl.config.run import RunConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
_GROUP = re.compile(r"^algorithm=(.*)$")
_NAME = re.compile(r"^algorithm\.name=(.*)$")


def _omegaconf_error(e: OmegaConfBaseException) -> ConfigError:
    key = getattr(e, "full_key", None)
    msg = (e.msg if hasattr(e, "msg") else str(e)).strip().splitlines()[0]  # not OmegaConf's type dump
    return ConfigError(f"{key}: {msg}" if key else msg)


def algorithm_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` with ``algorithm=<name>`` added where only ``algorithm.name=<name>`` is given (so the
    name brings its preset); an ``algorithm=`` group and an ``algorithm.name=`` that disagree are refused."""
    groups = [m.group(1) for o in overrides if (m := _GROUP.match(o))]
    names = [m.group(1) for o in overrides if (m := _NAME.match(o))]
    if not names:
        return list(overrides)
    name = names[-1]
    from nemo_resrl.config.specs import ALGORITHM_SPECS

    if name not in ALGORITHM_SPECS:
        return list(overrides)  # validation names algorithm.name and the known ones
    if groups and groups[-1] != name:
        raise ConfigError(
            f"algorithm={groups[-1]} and algorithm.name={name} disagree: algorithm=<name> loads that "
            "algorithm's preset (its name included); give one of them"
        )
    return list(overrides) if groups else [f"algorithm={name}", *overrides]


def _schema_fields(key: str) -> list[str] | None:
    """The fields of the schema section that would hold ``key`` (``trainer.stepz`` -> TrainerConfig's)."""
    import dataclasses

    node: object = RunConfig
    for part in key.split(".")[:-1]:
        sub = (
            {f.name: f for f in dataclasses.fields(node)}.get(part)
            if dataclasses.is_dataclass(node)
            else None
        )
        if sub is None:
            return None
        node = sub.default_factory() if sub.default_factory is not dataclasses.MISSING else sub.default
        node = type(node)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else None


def check_override_syntax(overrides: list[str]) -> None:
    """Refuse ``+key=value`` / ``++key=value``: every key already exists in the schema, so adding one can
    only mean a typo, which Hydra would otherwise add and the run would ignore."""
    for o in overrides:
        if o.startswith("+"):
            key = o.lstrip("+").split("=", 1)[0]
            known = _schema_fields(key)
            hint = f"; {key.rpartition('.')[0] or 'the top level'} has: {', '.join(known)}" if known else ""
            raise ConfigError(f"{o}: adding keys with '+' is not supported (every key exists already){hint}")


def _hydra_error(e: Exception) -> ConfigError:
    """A Hydra composition error, with an unknown key named as the user typed it and its section's keys."""
    msg = str(e)
    m = re.search(r"Could not override '([^']+)'", msg)
    if m:
        key = m.group(1)
        known = _schema_fields(key)
        if known is not None and key.rpartition(".")[2] not in known:
            where = key.rpartition(".")[0] or "the top level"
            return ConfigError(f"{key}: no such key; {where} has: {', '.join(known)}")
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return _omegaconf_error(cause)  # e.g. a wrong type: name the key and what it needs
    return ConfigError(msg)


def _layered_conf_dir(user_dir: str | Path, into: Path) -> Path:
    """A copy of the shipped configs with ``user_dir``'s files laid over them."""
    user = Path(user_dir)
    if not user.is_dir():
        raise ConfigError(f"--config-dir {str(user)!r} is not a directory")
    shutil.copytree(CONF_DIR, into, dirs_exist_ok=True)
    shutil.copytree(user, into, dirs_exist_ok=True)
    return into


def compose_run_config(
    overrides: list[str] | None = None, config_dir: str | Path | None = None, name: str = "config"
):
    """The composed (not yet validated) ``RunConfig`` of the shipped / user configs with ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    check_override_syntax(overrides)
    overrides = algorithm_overrides(overrides)
    # the schema is the first default of config.yaml: every key exists (overridable without '+') and
    # Hydra refuses unknown keys and wrong types while composing
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    GlobalHydra.instance().clear()
    with tempfile.TemporaryDirectory(prefix="nemo_resrl_conf_") as tmp:
        root = CONF_DIR if config_dir is None else _layered_conf_dir(config_dir, Path(tmp) / "conf")
        try:
            with initialize_config_dir(config_dir=str(root), version_base=None):
                composed = compose(config_name=name, overrides=overrides)
            merged = OmegaConf.merge(OmegaConf.structured(RunConfig), composed)
            return OmegaConf.to_object(merged)
        except OmegaConfBaseException as e:
            raise _omegaconf_error(e) from None
        except Exception as e:  # hydra's override parser / missing config group option
            if type(e).__module__.startswith("hydra"):
                raise _hydra_error(e) from None
            raise
        finally:
            GlobalHydra.instance().clear()


def load_config(
    overrides: list[str] | None = None, config_dir: str | Path | None = None, name: str = "config"
) -> RunConfig:
    """Compose, merge into the schema, validate (module docstring; ``ConfigError`` names the key), then
    fill the derived values (``RunConfig.resolve``)."""
    cfg: RunConfig = compose_run_config(overrides, config_dir, name)
    return cfg.validate().resolve()


def load_eval_config(overrides: list[str] | None = None, path: str | Path | None = None) -> EvalConfig:
    """``conf/eval.yaml`` (or ``path``) with dotlist ``overrides`` merged into the schema, validated."""
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(EvalConfig),
            OmegaConf.load(CONF_DIR / "eval.yaml" if path is None else path),
            OmegaConf.from_dotlist(list(overrides or [])),
        )
        cfg: EvalConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e) from None
    return cfg.validate()
