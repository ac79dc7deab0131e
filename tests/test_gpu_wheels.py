"""``tools/gpu_wheels.sh`` carries what the loop check's ``nemo-resrl train`` imports to a lent GPU machine
that has only torch, transformers, triton and pytest: reasoning-gym imports every task's dependencies when it
is imported, and a dependency missing from the script's wheels fails the run on that machine only."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

from nemo_resrl.diagnostics.loop_check import SHIMS, write_shims

ROOT = Path(__file__).resolve().parents[1]
MACHINE = ("torch", "transformers", "triton", "pytest")  # what a lent GPU machine has installed
OPTIONAL = {"attrs"}  # imported only when installed (omegaconf._utils: try: import attr)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: tuple[str, ...]) -> set[str]:
    """The distributions ``roots`` need, through their (non-extra) requirements as this venv records them."""
    seen, todo = set(), [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" in r:
                continue
            todo.append(_norm(re.match(r"[A-Za-z0-9_.-]+", r).group(0)))
    return seen


def _carried() -> set[str]:
    """The distributions whose wheels the script downloads or builds."""
    text = (ROOT / "tools" / "gpu_wheels.sh").read_text()
    names = set(re.findall(r'"([A-Za-z0-9_.-]+)(?:==|>=)', text))
    loop = re.search(r"^LOOP_WHEELS=\(([^)]*)\)", text, re.M)
    assert loop, "gpu_wheels.sh names the loop check's wheels in LOOP_WHEELS=(...)"
    return {_norm(n) for n in names | set(loop.group(1).split())}


def test_the_loop_checks_imports_need_only_the_carried_wheels(tmp_path):
    shims = tmp_path / "shims"
    assert write_shims(shims, every=True) == list(SHIMS)
    probe = (
        "import json, sys, importlib.metadata as md\n"
        "import reasoning_gym, hydra, omegaconf, nemo_resrl.launch\n"
        "import reasoning_gym.arithmetic.basic_arithmetic\n"
        "dists = md.packages_distributions()\n"
        "top = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)\n"
        "where = {m: getattr(sys.modules.get(m), '__file__', '') or '' for m in top}\n"
        "shims = {m for m in top if where[m].startswith(sys.argv[1])}\n"
        "print(json.dumps({m: dists.get(m, []) for m in sorted(top - shims)}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe, str(shims)],
        env={"PYTHONPATH": f"{shims}:{ROOT}", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    allowed = _closure(MACHINE) | _carried() | OPTIONAL | {"nemo-resrl"}
    missing = {m: d for m, d in loaded.items() if d and not {_norm(x) for x in d} & allowed}
    assert not missing, f"imported from distributions a lent GPU lacks (add them to gpu_wheels.sh): {missing}"
    # the probe saw the modules it should (the check is not vacuous)
    assert {"reasoning_gym", "tabulate", "dateutil", "hydra"} <= set(loaded)
