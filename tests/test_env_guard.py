"""Each rule's stage imports under an import guard built from the rule's conda env.

For every env of envs/*.yaml, a fresh interpreter installs a guard on ``sys.meta_path`` that refuses any
top-level module not provided by the env's packages or their dependency closure (pip metadata of the
installed distributions, ``importlib.metadata``), then, for each stage its rules run, imports the entry
point, builds its parser and runs every import statement of the stage's function (``proseflow.stages.run``),
so everything the stage imports when it runs is imported for real, with the imports of those modules.
This is the dynamic half of tests/test_env_coverage.py (which reads the source statically): it sees what
the interpreter actually loads, e.g. a parser that imports matplotlib while the md env has none.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import inspect
import json
import re
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from test_env_coverage import ENVS, ROOT, parse_rules

# conda-forge package name -> PyPI distribution name (where they differ); None: not a Python package
CONDA_TO_PYPI = {"pytables": "tables", "matplotlib-base": "matplotlib", "pytorch": "torch", "pytorch-gpu": "torch",
                 "pytorch-cpu": "torch", "python": None, "pip": None}


def env_distributions(env: Path) -> list[str]:
    """PyPI names of the env's conda and pip packages."""
    spec = yaml.safe_load(env.read_text())
    names = []
    for dep in spec.get("dependencies", []):
        entries = dep.get("pip", []) if isinstance(dep, dict) else [dep]
        for entry in entries:
            name = re.match(r"\s*(?:[\w\-]+::)?([A-Za-z0-9_.\-]+)", str(entry)).group(1).lower()
            pypi = CONDA_TO_PYPI.get(name, name)
            if pypi is not None:
                names.append(pypi)
    return names


def _dist(name: str):
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def top_level_modules(dist) -> set[str]:
    """Top-level import names a distribution installs (top_level.txt and its file list)."""
    names = set((dist.read_text("top_level.txt") or "").split())
    for f in dist.files or []:
        first = f.parts[0]
        if first.endswith((".dist-info", ".egg-info", ".data")) or first in ("..", "__pycache__"):
            continue
        if len(f.parts) == 1:
            if first.endswith((".py", ".so", ".pyd")):
                names.add(first.split(".")[0])
        else:
            names.add(first)
    return {n for n in names if n.isidentifier()}


@cache
def allowed_modules(env: Path) -> frozenset[str]:
    """Top-level modules of the env's distributions and of their (non-extra) requirements, transitively."""
    todo = env_distributions(env)
    seen: set[str] = set()
    modules: set[str] = set()
    missing = []
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        dist = _dist(name)
        if dist is None:
            missing.append(name)
            continue
        modules |= top_level_modules(dist)
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return frozenset(modules)


GUARD = textwrap.dedent('''
    import ast, importlib.abc, importlib.machinery, inspect, json, sys, sysconfig
    ENV, ALLOWED, STAGES = sys.argv[1], set(json.loads(sys.argv[2])), json.loads(sys.argv[3])
    STDLIB = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")})

    def in_stdlib(name, path):  # private stdlib modules (_sysconfigdata_*) are not in stdlib_module_names
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        return spec is not None and spec.origin is not None and spec.origin.startswith(STDLIB) \
            and "site-packages" not in spec.origin

    class EnvGuard(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in ALLOWED or top in sys.stdlib_module_names or top == "proseflow" or in_stdlib(name, path):
                return None
            raise ModuleNotFoundError(f"import guard: module {top!r} is not provided by {ENV} "
                                      f"(nor by its packages' dependencies)", name=top)

    sys.meta_path.insert(0, EnvGuard())
    result = {}
    for stage in STAGES:
        try:
            from proseflow import cli
            cli.build_parser()
            from proseflow.stages import run as stages
            runner = stages.STAGES[stage][1]
            tree = ast.parse(inspect.cleandoc("\\n" + inspect.getsource(runner)))
            called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
            if "_device" in called:  # the helper resolving device "auto" imports torch
                nodes += [n for n in ast.walk(ast.parse(inspect.getsource(inspect.getmodule(runner)._device)))
                          if isinstance(n, (ast.Import, ast.ImportFrom))]
            for node in nodes:
                exec(compile(ast.Module([node], []), f"<{stage} imports>", "exec"), {})
            result[stage] = "ok"
        except ImportError as e:
            result[stage] = f"{type(e).__name__}: {e}"
    print("RESULT " + json.dumps(result))
''')


def run_guarded(env: Path, stages: list[str], src: Path = ROOT / "src") -> dict[str, str]:
    """Import ``stages`` under the guard of ``env``; stage -> "ok" or the refused import."""
    proc = subprocess.run([sys.executable, "-c", GUARD, env.name, json.dumps(sorted(allowed_modules(env))),
                           json.dumps(stages)], capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def rules_by_env() -> dict[Path, dict[str, list[str]]]:
    """env file -> stage -> the rules that run it there."""
    out: dict[Path, dict[str, list[str]]] = {}
    for name, rule in parse_rules().items():
        if rule["conda"] is None:
            continue
        for stage in rule["subcommands"]:
            out.setdefault(rule["conda"], {}).setdefault(stage, []).append(name)
    return out


def test_every_rule_that_runs_code_is_covered():
    covered = {r for stages in rules_by_env().values() for rules in stages.values() for r in rules}
    runs = {n for n, r in parse_rules().items() if r["runs_code"]}
    assert runs and runs == covered, f"rules not checked under an env guard: {sorted(runs - covered)}"


def test_guard_refuses_what_the_env_lacks():
    """The guard is not vacuous: the md env provides openmm and its closure numpy, but not torch,
    matplotlib or deeptime; the flow env has torch."""
    md_env, flow = allowed_modules(ENVS / "md.yaml"), allowed_modules(ENVS / "flow.yaml")
    assert {"openmm", "mdtraj", "numpy", "tables", "yaml", "Bio", "PeptideBuilder"} <= md_env
    assert not {"torch", "matplotlib", "deeptime", "ot", "zarr"} & md_env
    assert "torch" in flow and "zarr" in flow
    script = "import matplotlib"
    proc = subprocess.run([sys.executable, "-c", GUARD.replace("result = {}", script + "\nresult = {}"),
                           "md.yaml", json.dumps(sorted(md_env)), "[]"], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "import guard: module 'matplotlib'" in proc.stderr


@pytest.mark.parametrize("env", sorted(rules_by_env()), ids=lambda p: p.name)
def test_each_stage_imports_under_its_env_guard(env):
    stages = rules_by_env()[env]
    result = run_guarded(env, sorted(stages))
    bad = {f"{stage} (rules {', '.join(stages[stage])})": msg for stage, msg in result.items() if msg != "ok"}
    assert not bad, f"{env.name}: {bad}"
    assert set(result) == set(stages)


def test_import_guard_runs_the_real_function_source():
    """The guard script executes the stage's own import statements: the md stage imports proseflow.physics.md."""
    from proseflow.stages import run as stages
    tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(stages.STAGES["md"][1])))
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "proseflow.physics.md" in modules
