"""How the schema reports a bad value: a ``ConfigError`` whose message starts with the full key path a
user types (``algorithm.loss.clip_low must be in [0, 1), got 1.5``).

Every section of the schema is a dataclass with a ``check(keys)`` method that tests its own values
through ``keys.require(ok, field, message)``; ``keys`` knows where the section sits in the run config
(``Keys("algorithm.loss.")``), so the same section reports the right path wherever it is used (the
eval config reuses the rollout section at the top level, with the prefix ``""``). ``validate()`` is
the section's own entry point with its run-config path as default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class ConfigError(ValueError):
    """A configuration key or value that cannot run; the message names the key."""


@dataclass(frozen=True)
class Keys:
    """The key path of one config section (``"algorithm.loss."``; ``""`` at the top level)."""

    prefix: str = ""

    def key(self, name: str) -> str:
        """The full key of field ``name`` of this section."""
        return f"{self.prefix}{name}"

    def sub(self, name: str) -> Keys:
        """The keys of sub-section ``name``."""
        return Keys(f"{self.prefix}{name}.")

    def require(self, ok: bool, name: str, message: str) -> None:
        """Raise ``ConfigError("<full key of name> <message>")`` unless ``ok``."""
        if not ok:
            raise ConfigError(f"{self.key(name)} {message}")

    def one_of(self, value: object, name: str, choices) -> None:
        self.require(value in choices, name, f"must be one of {tuple(choices)}, got {value!r}")

    def at_least(self, value, name: str, low) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= low
        self.require(ok, name, f"must be >= {low}, got {value!r}")

    def in_unit(self, value: float, name: str, *, open_low: bool = False, open_high: bool = False) -> None:
        """``value`` in [0, 1], with the ends excluded as asked."""
        lo_ok = value > 0 if open_low else value >= 0
        hi_ok = value < 1 if open_high else value <= 1
        interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        self.require(lo_ok and hi_ok, name, f"must be in {interval}, got {value}")


class Section:
    """Base of every schema section: ``KEY`` is its path in the run config, ``check`` tests its values."""

    KEY: ClassVar[str] = ""

    def check(self, keys: Keys) -> None:  # pragma: no cover - every section overrides it
        raise NotImplementedError

    def validate(self, prefix: str | None = None):
        """Check this section alone (errors name ``prefix`` + the field; default: its run-config path);
        returns ``self``."""
        self.check(Keys(self.KEY if prefix is None else prefix))
        return self
