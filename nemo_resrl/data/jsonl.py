"""Reading jsonl files line by line without ever raising on a bad line (prompts, benchmarks, metrics)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def json_object_lines(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, the JSON object or None, why not an object or None) for each non-blank line.

    A torn or malformed line (not JSON, or JSON that is not an object) gives ``None`` and the reason; the
    caller decides whether that is an error, a skip or a counted zero."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"not valid JSON ({e.msg} at column {e.colno})"
                continue
            if isinstance(obj, dict):
                yield n, obj, None
            else:
                yield n, None, f"a JSON {type(obj).__name__}, not an object"
