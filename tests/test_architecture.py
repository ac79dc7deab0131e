"""The package's floors: every import between subpackages of ``nemo_resrl`` goes DOWN (docs/architecture.md).

The graph is read from the source (every ``import`` statement, those inside functions included), so a
lazy import that goes up or closes a cycle fails here as a top-level one would.
"""

import ast
import collections
import sys
from pathlib import Path

import pytest

import nemo_resrl

ROOT = Path(nemo_resrl.__file__).parent
# lower number = lower floor; a package may import only from packages on a LOWER floor
FLOORS = {
    "common": 0,
    "compat": 1,
    "config": 1,
    "algorithms": 2,
    "rewards": 2,
    "data": 3,
    "plotting": 4,
    "models": 5,
    "rollout": 6,
    "runs": 7,
    "training": 8,
    "convert": 9,
    "plan": 9,
    "evaluation": 10,
    "diagnostics": 10,
    "launch": 11,
    "cli": 12,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every nemo_resrl module (or module.name) ``path`` imports, relative imports resolved."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.update(f"{target}.{a.name}" for a in node.names)
    return {t for t in out if t.startswith("nemo_resrl.")}


def _package(module: str) -> str:
    return module.split(".")[1]


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the files with such an import."""
    edges = collections.defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        if path.parent == ROOT and path.name == "__init__.py":
            continue
        src = _package(_module_name(path))
        for target in _imports(path):
            dst = _package(target)
            if dst != src:
                edges[(src, dst)].append(str(path.relative_to(ROOT.parent)))
    return edges


def test_every_package_has_a_floor():
    packages = {d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file()}
    packages |= {f.stem for f in ROOT.glob("*.py") if f.name != "__init__.py"}
    assert packages == set(FLOORS), f"give these a floor (or drop them): {sorted(packages ^ set(FLOORS))}"


def test_imports_only_go_down():
    upward = {(a, b): files for (a, b), files in import_edges().items() if FLOORS[b] >= FLOORS[a]}
    assert not upward, "imports that do not go down a floor:\n" + "\n".join(
        f"  {a} (floor {FLOORS[a]}) -> {b} (floor {FLOORS[b]}): {sorted(set(f))}"
        for (a, b), f in upward.items()
    )


@pytest.mark.parametrize(
    "forbidden", ["nemo_resrl.algorithms.losses", "nemo_resrl.training", "nemo_resrl.rollout"]
)
def test_the_actor_does_not_know_the_loss_the_trainer_or_the_engine(forbidden):
    found = [
        str(p.relative_to(ROOT.parent))
        for p in (ROOT / "models").rglob("*.py")
        if any(t == forbidden or t.startswith(forbidden + ".") for t in _imports(p))
    ]
    assert not found, f"models/ imports {forbidden}: {found}"


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The graph reader itself: a lazy import inside a function counts."""
    pkg = tmp_path / "nemo_resrl"
    (pkg / "common").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "common" / "__init__.py").write_text("def f():\n    from nemo_resrl.training import loop\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    assert ("common", "training") in import_edges()
