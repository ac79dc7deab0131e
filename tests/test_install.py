"""The GPU stack of ``tools/constraints-gpu.txt`` resolves for the platform GPU clusters run (Linux x86_64,
CPython 3.12): pip's dry run with a target platform, on this CPU machine, nothing installed. It needs the
package index (CI has it). The project's own GPU requirements (setup.py's gpu extra) are resolved with it,
so a pin that contradicts a dependency fails here rather than on a cluster."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "tools" / "constraints-gpu.txt"
# glibc 2.17 .. 2.35: what GPU clusters run (Ubuntu 22.04 is 2.35); pip takes the platforms as listed
PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in range(35, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^]]*\])?==([^\s#]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def gpu_requirements() -> list[str]:
    """The installed project's requirements: the base ones and the gpu extra's (markers dropped)."""
    out = []
    for req in importlib.metadata.requires("nemo_resrl") or []:
        spec, _, marker = req.partition(";")
        if not marker.strip() or re.search(r"extra\s*==\s*['\"]gpu['\"]", marker):
            out.append(spec.strip())
    return out


def dry_run(requirements: list[str], tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    """pip's resolution for the target platform. A target platform admits wheels only, so a dependency
    published as an sdist alone (a pure-Python one, e.g. hydra-core's antlr4-python3-runtime 4.9) is
    built into a local wheel here first, as pip would on the cluster, and offered with --find-links."""
    wheels = tmp / "wheels"
    wheels.mkdir(exist_ok=True)
    for _ in range(5):
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        cmd += ["--report", str(tmp / "report.json"), "--target", str(tmp / "target")]
        cmd += ["--python-version", "3.12", *[arg for p in PLATFORMS for arg in ("--platform", p)]]
        cmd += ["--only-binary=:all:", "--find-links", str(wheels), *extra, *requirements]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        missing = re.search(r"No matching distribution found for (\S+)", res.stderr)
        if res.returncode == 0 or not missing:
            return res
        build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), missing.group(1)]
        built = subprocess.run(build, capture_output=True, text=True, timeout=600)
        if built.returncode != 0:
            return res
    return res


def test_the_pins_agree_with_setup_py():
    p = pins()
    assert {"torch", "vllm", "megatron-core", "transformers", "megatron-bridge"} <= set(p)
    setup = (ROOT / "setup.py").read_text()
    for name in ("vllm", "megatron-core", "transformers"):
        assert f'"{name}=={p[name]}"' in setup, name


@pytest.mark.slow
def test_the_gpu_stack_resolves_for_linux_cpython_3_12(tmp_path):
    p = pins()
    constraints = tmp_path / "c.txt"
    constraints.write_text(
        "".join(f"{n}=={v}\n" for n, v in p.items() if n not in ("megatron-bridge", "transformer-engine"))
    )
    reqs = [r for r in gpu_requirements() if not r.startswith("torch")] + [f"torch=={p['torch']}"]
    res = dry_run(reqs, tmp_path, "-c", str(constraints))
    assert res.returncode == 0, res.stderr[-4000:]
    got = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    for name in ("torch", "vllm", "megatron-core", "transformers"):
        assert got[name].split("+")[0] == p[name], (name, got[name])
    # megatron-bridge goes in with --no-deps: its wheel must exist for the platform
    res = dry_run([f"megatron-bridge=={p['megatron-bridge']}"], tmp_path, "--no-deps")
    assert res.returncode == 0, res.stderr[-4000:]
