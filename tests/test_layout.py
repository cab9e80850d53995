"""The package layout mirrors the pipeline and every dependency points one way:
stages -> report -> evaluation -> samplers -> flow -> data -> physics (and everything may use artefacts)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "proseflow"
ORDER = ["stages", "report", "evaluation", "samplers", "flow", "data", "physics"]  # each uses only those after it
TOP = {"cli", "verify", "plan", "__main__"}  # entry points (commands): may use anything
BASE = {"artefacts", "typed", "__version__"}  # file helpers, typed config values, the version: anyone may use them


def proseflow_imports(path: Path) -> set[str]:
    """Top-level proseflow names (subpackage or module) that ``path`` imports, also inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "proseflow":
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("proseflow.")}
    return out


def layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_module_sits_in_a_stage_subpackage():
    flat = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    assert flat <= TOP | BASE, f"modules outside the stage subpackages: {sorted(flat - TOP - BASE)}"
    assert {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(ORDER)


def test_dependencies_point_one_way():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        layer = layer_of(path)
        if layer in TOP:
            continue
        allowed = BASE | {layer} | (set(ORDER[ORDER.index(layer) + 1:]) if layer in ORDER else set())
        for target in proseflow_imports(path) - allowed:
            bad.append(f"{path.relative_to(SRC)} imports proseflow.{target}")
    assert not bad, "\n".join(bad)


def test_subpackage_inits_import_nothing_heavy():
    """`from proseflow.stages import settings` must not pull the scientific stack in through a package __init__."""
    for name in ("stages", "physics", "samplers", "evaluation", "data", "report"):
        tree = ast.parse((SRC / name / "__init__.py").read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], name
