"""Every third-party import of src/proseflow is a declared dependency, in pyproject.toml and in the
conda environments (envs/*.yaml) of the rules that run it.

* every third-party import anywhere in src/proseflow is in pyproject.toml and in at least one env;
* for each rule of workflow/rules/*.smk that runs proseflow (shell `... run <stage>` or a
  `script:`), its `conda:` env holds every third-party import reachable from that code: the
  stage's function in stages/run.py (and the entry point cli.py), then, transitively, every proseflow
  module it imports (all of a module's imports count, also those inside functions). This is the
  static half; tests/test_env_guard.py imports each stage under an import guard built from the env;
* env pins are exact (`name=version`) and satisfy pyproject's lower bounds; the envs are valid YAML
  with conda-forge as channel.

Import names differ from package names: IMPORT_TO_DIST maps them (PyPI name, conda-forge names).
A new third-party import fails here until it is added there, to pyproject.toml and to the envs.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "proseflow"
ENVS = ROOT / "envs"
RULES = ROOT / "workflow" / "rules"

# import name -> (PyPI distribution, conda-forge package names that provide it)
IMPORT_TO_DIST: dict[str, tuple[str, set[str]]] = {
    "numpy": ("numpy", {"numpy"}),
    "scipy": ("scipy", {"scipy"}),
    "pandas": ("pandas", {"pandas"}),
    "yaml": ("pyyaml", {"pyyaml"}),
    "jsonschema": ("jsonschema", {"jsonschema"}),
    "tqdm": ("tqdm", {"tqdm"}),
    "openmm": ("openmm", {"openmm"}),
    "simtk": ("openmm", {"openmm"}),
    "pdbfixer": ("pdbfixer", {"pdbfixer"}),
    "PeptideBuilder": ("peptidebuilder", {"peptidebuilder"}),
    "Bio": ("biopython", {"biopython"}),
    "mdtraj": ("mdtraj", {"mdtraj"}),
    "tables": ("tables", {"pytables"}),
    "h5py": ("h5py", {"h5py"}),
    "zarr": ("zarr", {"zarr"}),
    "numcodecs": ("numcodecs", {"numcodecs"}),
    "torch": ("torch", {"pytorch", "pytorch-gpu", "pytorch-cpu"}),
    "deeptime": ("deeptime", {"deeptime"}),
    "ot": ("pot", {"pot"}),
    "matplotlib": ("matplotlib", {"matplotlib", "matplotlib-base"}),
    "sklearn": ("scikit-learn", {"scikit-learn"}),
    "networkx": ("networkx", {"networkx"}),
}
# Needed at run time by the import of another package, not imported by proseflow itself:
# MDTraj's HDF5 trajectory format (used by proseflow.physics.trajectory_io) needs PyTables.
IMPLIED = {"mdtraj": {"tables"}}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- imports ------------------------------------------------------------------------------------
def imports_of(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(third-party top-level names, proseflow module names) imported anywhere in ``tree``."""
    third, own = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside proseflow
                base = node.module or ""
                own.add(base.split(".")[0] if base else "")
                continue
            names = [node.module or ""]
            if node.module == "proseflow":
                own.update(a.name for a in node.names)
                continue
            if names[0].startswith("proseflow."):  # `from proseflow.pkg import module` imports a submodule
                own.update(f"{names[0][len('proseflow.'):]}.{a.name}" for a in node.names)
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            if top == "proseflow":
                parts = n.split(".")
                own.add(".".join(parts[1:]) if len(parts) > 1 else "")
            elif top and top != "__future__" and top not in sys.stdlib_module_names:
                third.add(top)
    own.discard("")
    return third, own


def module_path(mod: str) -> Path | None:
    base = SRC.joinpath(*mod.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None  # an attribute imported from the package (from proseflow import __version__)


@cache
def module_imports(mod: str) -> tuple[frozenset[str], frozenset[str]]:
    p = module_path(mod)
    if p is None:
        return frozenset(), frozenset()
    third, own = imports_of(ast.parse(p.read_text(), str(p)))
    # a submodule import also runs its parent packages' __init__
    parents = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}
    return frozenset(third), frozenset(own | parents)


def closure(third: set[str], own: set[str]) -> set[str]:
    """Third-party imports of ``third`` plus those reachable through the proseflow modules ``own``."""
    seen: set[str] = set()
    todo = set(own) | {"__init__"}
    out = set(third)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        t, o = module_imports(m) if m != "__init__" else imports_of(ast.parse((SRC / "__init__.py").read_text()))
        out |= set(t)
        todo |= set(o) - seen
    for name in list(out):
        out |= IMPLIED.get(name, set())
    return out


def all_src_imports() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in sorted(SRC.rglob("*.py")):
        third, _ = imports_of(ast.parse(p.read_text(), str(p)))
        for t in third:
            found.setdefault(t, []).append(str(p.relative_to(ROOT)))
    return found


# --- pyproject and envs -------------------------------------------------------------------------
def pyproject_deps() -> dict[str, str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover (python < 3.11)
        import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", d)
        out[norm(m.group(1))] = m.group(2).strip()
    return out


def env_files() -> list[Path]:
    return sorted(ENVS.glob("*.yaml"))


@cache
def env_packages(path: Path) -> dict[str, str | None]:
    """conda and pip packages of an env file: normalised name -> pinned version (or None)."""
    spec = yaml.safe_load(path.read_text())
    out: dict[str, str | None] = {}
    for dep in spec.get("dependencies", []):
        if isinstance(dep, dict):
            for p in dep.get("pip", []):
                m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:==\s*([^\s;#]+))?", p)
                out[norm(m.group(1))] = m.group(2)
        else:
            m = re.match(r"\s*(?:[\w\-]+::)?([A-Za-z0-9_.\-]+)\s*(?:=?=\s*([^\s=]+))?", str(dep))
            out[norm(m.group(1))] = m.group(2)
    return out


def env_provides(path: Path, import_name: str) -> bool:
    pypi, conda = IMPORT_TO_DIST[import_name]
    names = {norm(n) for n in conda | {pypi}}
    return bool(names & set(env_packages(path)))


# --- rules --------------------------------------------------------------------------------------
RULE_RE = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.M)


def parse_rules() -> dict[str, dict]:
    """rule name -> {file, conda, subcommands, scripts} from workflow/rules/*.smk (text level)."""
    rules = {}
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        heads = list(RULE_RE.finditer(text))
        for i, h in enumerate(heads):
            body = text[h.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            # stop at the next top-level statement
            m = re.search(r"^\S", body, re.M)
            body = body[: m.start()] if m else body
            conda = re.search(r"^\s+conda:\s*\n?\s*[\"']([^\"']+)[\"']", body, re.M)
            rules[h.group(1)] = {
                "file": smk,
                "conda": (smk.parent / conda.group(1)).resolve() if conda else None,
                "subcommands": re.findall(r"\bstage\(\"(\w+)\"", body),
                "scripts": [(smk.parent / s).resolve()
                            for s in re.findall(r"^\s+script:\s*\n?\s*[\"']([^\"']+)[\"']", body, re.M)],
                "runs_code": bool(re.search(r"^\s+(shell|script|run|notebook|wrapper):", body, re.M)),
            }
    return rules


@cache
def subcommand_functions() -> dict[str, object]:
    """stage name -> its runner (the `run <stage>` of the rules)."""
    sys.path.insert(0, str(ROOT / "src"))
    from proseflow.stages.run import STAGES

    return {name: runner for name, (_, runner) in STAGES.items()}


def _module_level_imports(module) -> tuple[set[str], set[str]]:
    third, own = set(), set()
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            t, o = imports_of(node)
            third |= t
            own |= o
    return third, own


def subcommand_imports(name: str) -> set[str]:
    from proseflow import cli
    from proseflow.stages import run as stages

    func = subcommand_functions()[name]
    tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(func)))
    third, own = imports_of(tree)
    # the entry point's, stages/run.py's and the stage module's module-level imports run too, and the helpers
    # the runner calls (_device, _system_viewer)
    from proseflow.stages import _files

    home = inspect.getmodule(func)
    for module in (cli, stages, home):
        t, o = _module_level_imports(module)
        third |= t
        own |= o
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    for module in (home, _files):
        for node in ast.parse(inspect.getsource(module)).body:
            if isinstance(node, ast.FunctionDef) and node.name in called and node.name.startswith("_"):
                t, o = imports_of(node)
                third |= t
                own |= o
    return closure(third, own)


def rule_imports(rule: dict) -> set[str]:
    needed: set[str] = set()
    for sub in rule["subcommands"]:
        needed |= subcommand_imports(sub)
    for script in rule["scripts"]:
        if script.suffix == ".py" and script.is_file():
            third, own = imports_of(ast.parse(script.read_text()))
            third.discard("snakemake")  # the `snakemake` object is injected by Snakemake
            needed |= closure(third, own)
    return needed


# --- tests --------------------------------------------------------------------------------------
def test_every_import_is_mapped():
    unknown = {t: f for t, f in all_src_imports().items() if t not in IMPORT_TO_DIST}
    assert not unknown, (f"third-party imports without a distribution mapping: {unknown}; add them to "
                         "IMPORT_TO_DIST in tests/test_env_coverage.py, pyproject.toml and envs/*.yaml")


def test_every_import_in_pyproject():
    deps = pyproject_deps()
    missing = {t: f for t, f in all_src_imports().items()
               if t in IMPORT_TO_DIST and norm(IMPORT_TO_DIST[t][0]) not in deps}
    assert not missing, f"imported but not in pyproject.toml [project.dependencies]: {missing}"


def test_every_import_in_some_env():
    envs = env_files()
    assert envs, "no envs/*.yaml"
    missing = {t: f for t, f in all_src_imports().items()
               if t in IMPORT_TO_DIST and not any(env_provides(e, t) for e in envs)}
    assert not missing, f"imported but in no envs/*.yaml: {missing}"


@pytest.mark.parametrize("env", env_files(), ids=lambda p: p.name)
def test_env_file_is_pinned_and_in_step_with_pyproject(env):
    spec = yaml.safe_load(env.read_text())
    assert "conda-forge" in spec.get("channels", []), f"{env.name}: conda-forge must be a channel"
    packages = env_packages(env)
    assert "python" in packages, f"{env.name}: pin python"
    unpinned = [n for n, v in packages.items() if v is None and n != "pip"]
    assert not unpinned, f"{env.name}: unpinned packages {unpinned}"
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    deps = pyproject_deps()
    conda_to_pypi = {norm(c): norm(p) for p, cs in IMPORT_TO_DIST.values() for c in cs}
    bad = []
    for name, version in packages.items():
        pypi = conda_to_pypi.get(name, name)
        if pypi in deps and deps[pypi] and version:
            if Version(version) not in SpecifierSet(deps[pypi]):
                bad.append(f"{name}={version} vs pyproject {pypi}{deps[pypi]}")
    assert not bad, f"{env.name}: pins outside pyproject.toml's ranges: {bad}"


def test_rules_that_run_code_name_an_existing_env():
    problems = []
    for name, r in parse_rules().items():
        if not (r["subcommands"] or r["scripts"]):
            continue
        if r["conda"] is None:
            problems.append(f"{name} ({r['file'].name}): no conda: directive")
        elif not r["conda"].is_file():
            problems.append(f"{name}: conda env {r['conda']} does not exist")
    assert not problems, "; ".join(problems)


def test_rule_subcommands_exist():
    known = subcommand_functions()
    unknown = {n: r["subcommands"] for n, r in parse_rules().items()
               if any(s not in known for s in r["subcommands"])}
    assert not unknown, f"rules call unknown stages (`python -m proseflow run <stage>`): {unknown}"


def test_each_rule_env_covers_its_imports():
    problems = []
    checked = 0
    known = subcommand_functions()
    for name, r in parse_rules().items():
        if r["conda"] is None or not r["conda"].is_file():
            continue
        if any(s not in known for s in r["subcommands"]):
            continue  # reported by test_rule_subcommands_exist
        needed = rule_imports(r)
        checked += 1
        missing = sorted(t for t in needed if t in IMPORT_TO_DIST and not env_provides(r["conda"], t))
        if missing:
            problems.append(f"rule {name} (env {r['conda'].name}) imports {missing}, not in the env")
    assert checked, "no rule with a conda env was checked: did the parsing of workflow/rules break?"
    assert not problems, "; ".join(problems)


def test_parser_sees_the_md_rules():
    """Guard against silently checking nothing: the MD rules run stage `md` in md.yaml, and every rule that
    runs code runs a known stage (also those the old regex missed: evaluation rules and train_model)."""
    rules = parse_rules()
    assert rules["simulate_batch"]["subcommands"] == ["md"]
    for name in ("evaluate_system", "evaluate_variant", "train_model"):
        assert len(rules[name]["subcommands"]) == 1, name
    assert all(r["subcommands"] for r in rules.values() if r["runs_code"]), \
        [n for n, r in rules.items() if r["runs_code"] and not r["subcommands"]]
    assert rules["simulate_batch"]["conda"] == (ENVS / "md.yaml").resolve()
    assert {"openmm", "mdtraj", "h5py", "tables"} <= rule_imports(rules["simulate_batch"])


def test_no_import_cycles_between_proseflow_modules():
    """Dependencies point one way: no proseflow module reaches itself through its imports (those inside
    functions count), e.g. energy <-> energy_torch."""
    modules = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
               for p in SRC.rglob("*.py")}
    # a submodule's edge to its own package (run by the import machinery) is not a design dependency
    graph = {m: {o for o in module_imports(m)[1] if o in modules and o != m and not m.startswith(o + ".")}
             for m in modules}
    cycles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen and nxt > start:  # report each cycle once, from its smallest module
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, f"import cycles: {cycles}"
