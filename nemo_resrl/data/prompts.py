"""Prompt datasets: rows from local jsonl / parquet (through HF ``datasets``) or an offline reasoning-gym
task, rendered with the tokenizer's chat template and tokenized once, before training.

A row needs a non-empty string prompt (``data.prompt_key``) and an answer (``data.answer_key``; a
number is turned into a string). A row that lacks either, or a jsonl line that is not a JSON object,
is malformed: with ``data.on_bad_row=error`` (the default) loading stops with a ``DatasetError`` naming
the row numbers (1-based, the line number in a jsonl file); with ``skip`` such rows are dropped, logged
and counted. Prompts longer than ``data.max_prompt_tokens`` after the chat template are dropped and
counted (``PromptSet.stats``), never truncated: a truncated problem is a different problem.

Each record is ``{"prompt_ids": list[int], "prompt": str, "answer": str, "row": int}`` plus, for
reasoning-gym, ``task`` and ``entry`` (what its scorer needs).
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nemo_resrl.config.data import DataConfig
from nemo_resrl.data.jsonl import json_object_lines

log = logging.getLogger(__name__)
_SHOWN = 10  # bad rows named in an error message or logged one by one


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message names the file and the rows."""


@dataclass
class PromptSet:
    """The usable records and what was dropped: rows read, malformed rows skipped, over-length prompts."""

    records: list[dict[str, Any]]
    stats: dict[str, int]


def _scan_jsonl(path: Path) -> list[tuple[int, str]]:
    """Lines of a jsonl file that are not JSON objects: [(line number, why)]."""
    return [(n, why) for n, obj, why in json_object_lines(path) if obj is None]


def _read_table(cfg: DataConfig, key: str = "data.path") -> tuple[list[dict[str, Any]], int]:
    """All rows of the jsonl / parquet file(s) through HF datasets, as dicts in file order, and the
    number of unreadable jsonl lines skipped (on_bad_row=skip). ``key``: the config key errors name."""
    path = Path(cfg.path)
    if not any(c in cfg.path for c in "*?[") and not path.exists():
        raise DatasetError(f"{key} {cfg.path!r} does not exist")
    if any(c in cfg.path for c in "*?[") and not glob.glob(cfg.path, recursive=True):
        raise DatasetError(f"{key} {cfg.path!r} matches no file")
    if path.is_file() and (
        path.stat().st_size == 0 or (cfg.source == "jsonl" and not path.read_text().strip())
    ):
        raise DatasetError(f"{key} {cfg.path!r} is empty: no rows to train on")
    if cfg.source == "jsonl" and path.is_file():
        bad = _scan_jsonl(path)  # datasets' json reader fails without saying which line is broken
        if bad and cfg.on_bad_row == "error":  # every kind of bad row at once: the fields of the others too
            fields = _field_problems(cfg, _read_jsonl_skipping(path, bad, log_skipped=False))
            raise DatasetError(_bad_rows_message(cfg.path, sorted(bad + fields)))
        if bad:
            return _read_jsonl_skipping(path, bad), len(bad)
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise DatasetError("reading jsonl / parquet needs the `datasets` package (pip install)") from e
    builder = "json" if cfg.source == "jsonl" else "parquet"
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, data_files=cfg.path, split="train")
    except Exception as e:
        raise DatasetError(f"could not read {cfg.path!r} as {cfg.source}: {type(e).__name__}: {e}") from e
    return ds.to_list(), 0


def _read_jsonl_skipping(
    path: Path, bad: list[tuple[int, str]], log_skipped: bool = True
) -> list[dict[str, Any]]:
    """The object lines of a jsonl file with broken lines (on_bad_row=skip); rows keep their line number."""
    skip = {n for n, _ in bad}
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip() and n not in skip:
                rows.append({**json.loads(line), "__row__": n})
    if log_skipped:
        _log_skipped(str(path), bad)
    return rows


def _bad_rows_message(where: str, bad: list[tuple[int, str]]) -> str:
    shown = "; ".join(f"row {n}: {why}" for n, why in bad[:_SHOWN])
    more = f" (and {len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
    return (
        f"{where}: {len(bad)} malformed row(s): {shown}{more}. Fix them, or set data.on_bad_row=skip "
        "to drop and count them"
    )


def _log_skipped(where: str, bad: list[tuple[int, str]]) -> None:
    for n, why in bad[:_SHOWN]:
        log.warning("%s: skipping row %d: %s", where, n, why)
    if len(bad) > _SHOWN:
        log.warning("%s: skipping %d more malformed rows", where, len(bad) - _SHOWN)


def _as_answer(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _field_problems(cfg: DataConfig, rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """Rows whose prompt or answer field is missing, empty or of the wrong type: [(row number, why)]."""
    bad = []
    for i, r in enumerate(rows):
        n = int(r.get("__row__", i + 1))
        prompt, answer = r.get(cfg.prompt_key), _as_answer(r.get(cfg.answer_key))
        if not isinstance(prompt, str) or not prompt.strip():
            bad.append((n, f"{cfg.prompt_key!r} is missing, empty or not a string ({prompt!r})"))
        elif answer is None:
            bad.append((n, f"{cfg.answer_key!r} is missing or empty ({r.get(cfg.answer_key)!r})"))
    return bad


def _check_rows(cfg: DataConfig, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Rows with a usable prompt and answer, as records without token ids; malformed ones per policy."""
    if rows and all(cfg.prompt_key not in r for r in rows):
        cols = sorted(k for k in rows[0] if k != "__row__")
        raise DatasetError(
            f"{cfg.path}: no row has the prompt field data.prompt_key={cfg.prompt_key!r}; fields: {cols}"
        )
    bad = _field_problems(cfg, rows)
    failed = {n for n, _ in bad}
    good = []
    for i, r in enumerate(rows):
        n = int(r.get("__row__", i + 1))
        if n not in failed:
            good.append({"prompt": r[cfg.prompt_key], "answer": _as_answer(r.get(cfg.answer_key)), "row": n})
    if bad and cfg.on_bad_row == "error":
        raise DatasetError(_bad_rows_message(cfg.path, bad))
    if bad:
        _log_skipped(cfg.path, bad)
    return good, len(bad)


def prompt_ids(tokenizer: Any, text: str, system_prompt: str = "", chat_template: bool = True) -> list[int]:
    """Token ids of a user message: with ``chat_template``, the tokenizer's chat template (optional system
    prompt, assistant turn opened, no special tokens added a second time); else the plain text."""
    if chat_template:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": text})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def render_prompt(cfg: DataConfig, tokenizer: Any, problem: str) -> list[int]:
    """Token ids of one problem: ``data.prompt_template`` through ``prompt_ids``."""
    text = cfg.prompt_template.replace("{prompt}", problem)
    return prompt_ids(tokenizer, text, cfg.system_prompt, cfg.chat_template)


def load_prompts(cfg: DataConfig, tokenizer: Any, key: str = "data.path") -> PromptSet:
    """The prompt records of ``cfg`` tokenized with ``tokenizer``; see the module docstring. ``key``: the
    config key that names the file in errors (``data.eval_path`` for the held-out prompts)."""
    if cfg.chat_template and not getattr(tokenizer, "chat_template", None):
        raise DatasetError(
            "data.chat_template=true but the tokenizer has no chat template; set data.chat_template=false"
        )
    if cfg.source == "reasoning_gym":
        from nemo_resrl.rewards.synthetic import build_synthetic_prompts

        try:
            recs = build_synthetic_prompts(cfg.task, cfg.size, cfg.seed, **cfg.task_kwargs)
        except Exception as e:
            raise DatasetError(
                f"reasoning-gym task {cfg.task!r} with {dict(cfg.task_kwargs)}: {type(e).__name__}: {e}"
            ) from e
        records = [{**r, "answer": str(r["answer"]), "row": i + 1} for i, r in enumerate(recs)]
        n_rows, malformed = len(records), 0
    else:
        rows, unreadable = _read_table(cfg, key)
        if not rows and not unreadable:
            raise DatasetError(f"{key} {cfg.path!r} has no rows")
        records, malformed = _check_rows(cfg, rows)
        n_rows, malformed = len(rows) + unreadable, malformed + unreadable
    kept, overlong = [], 0
    for r in records:
        ids = render_prompt(cfg, tokenizer, r["prompt"])
        if len(ids) > cfg.max_prompt_tokens:
            overlong += 1
            continue
        kept.append({**r, "prompt_ids": ids})
    if overlong:
        log.warning(
            "dropped %d of %d prompts longer than data.max_prompt_tokens=%d",
            overlong,
            len(records),
            cfg.max_prompt_tokens,
        )
    if not kept:
        raise DatasetError(
            f"no usable prompt: {n_rows} rows, {malformed} malformed, {overlong} longer than "
            f"data.max_prompt_tokens={cfg.max_prompt_tokens}"
        )
    stats = {"rows": n_rows, "malformed_skipped": malformed, "overlong_dropped": overlong, "kept": len(kept)}
    return PromptSet(kept, stats)


def load_eval_prompts(cfg: DataConfig, tokenizer: Any, count: int) -> PromptSet:
    """Held-out prompts: reasoning-gym problems from another seed (``count`` of them), or the first
    ``count`` usable rows of ``data.eval_path``."""
    if cfg.source == "reasoning_gym":
        held_out = replace(cfg, size=count, seed=cfg.seed + 1_000_003)
    else:
        held_out = replace(cfg, path=cfg.eval_path)
    out = load_prompts(
        held_out, tokenizer, key="data.eval_path" if cfg.source != "reasoning_gym" else "data.path"
    )
    return PromptSet(out.records[:count], out.stats)
