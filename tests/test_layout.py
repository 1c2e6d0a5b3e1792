"""The package's layout is its pipeline: stages import only earlier stages, no cycles, no hidden imports.

Read statically from the source (nothing is imported), so a cycle that Python would tolerate at run time
because an import sits inside a function is still found.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dsaml_utils"

STAGES = [
    ("errors", "metrics", "runtime", "seeding"),  # shared by every stage
    ("io",),
    ("data",),
    ("features",),
    ("encoders",),
    ("models",),
    ("meta",),
    ("training",),
    ("evaluation",),
    ("plots",),
    ("experiments",),
    ("workbook",),
    ("cli", "__main__"),
]
"""Pipeline order: a module may import modules of its own stage or of an earlier one, never a later one."""

LAZY_IMPORTS = {
    ("dsaml_utils.workbook.runner", "papermill"): "papermill loads nbconvert and jupyter machinery; only runs need it",
    ("dsaml_utils.workbook.runner", "papermill.exceptions"): "as above",
    ("dsaml_utils.workbook.runner", "traitlets.config"): "as above",
    ("dsaml_utils.workbook.runner", "jupyter_client.kernelspec"): "as above",
    ("dsaml_utils.encoders.registry", "onnxruntime"): "optional, only to cross-check vibenet",
    # every notebook kernel imports these modules (through plots and workbook.session); measured import times
    ("dsaml_utils.workbook.runner", "nbformat"): "1.2 s (jsonschema builds a URI grammar); only the runner reads notebooks",
    ("dsaml_utils.metrics", "scipy"): "scipy.stats 0.3-0.5 s; only Kendall's tau and the t interval need it",
    ("dsaml_utils.data.synthetic.listeners", "scipy.signal"): "0.8 s; only generating a dataset needs lfilter",
}
"""Imports allowed inside a function: heavy or optional third-party packages, never the package's own."""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def own_imports(mod: str, tree: ast.Module, top_level_only: bool) -> list[tuple[str, int]]:
    """(imported dsaml_utils module, line) for every import of the package's own modules."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = mod if (PACKAGE / Path(*mod.split(".")[1:]) / "__init__.py").exists() else mod.rpartition(".")[0]
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "dsaml_utils"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "dsaml_utils":
                continue
            for a in node.names:  # `from dsaml_utils.meta import maml` imports a module
                sub = f"{base}.{a.name}"
                out.append((sub if (PACKAGE / Path(*sub.split(".")[1:])).with_suffix(".py").exists()
                            or (PACKAGE / Path(*sub.split(".")[1:]) / "__init__.py").exists() else base, node.lineno))
    return out


def stage_of(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) == 1:
        return 0  # dsaml_utils/__init__.py: the package's face, imports nothing of its own
    for i, names in enumerate(STAGES):
        if parts[1] in names:
            return i
    raise AssertionError(f"{mod}: not in any stage of STAGES; add its subpackage there")


MODULES = modules()


def test_every_module_has_a_stage():
    for mod in MODULES:
        stage_of(mod)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_flow_down_the_pipeline(mod):
    for target, line in own_imports(mod, MODULES[mod], top_level_only=False):
        assert stage_of(target) <= stage_of(mod), (
            f"{mod} (stage {STAGES[stage_of(mod)]}) line {line} imports {target} (later stage {STAGES[stage_of(target)]})")


def test_no_import_cycles():
    graph = {m: {t for t, _ in own_imports(m, tree, top_level_only=False) if t in MODULES and t != m}
             for m, tree in MODULES.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_imports_inside_functions(mod):
    tree = MODULES[mod]
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                assert name.split(".")[0] != "dsaml_utils", f"{mod} line {node.lineno}: imports {name} inside a function"
                assert (mod, name) in LAZY_IMPORTS, (
                    f"{mod} line {node.lineno}: imports {name} inside a function; move it to the top or add it "
                    "to LAZY_IMPORTS with the reason")


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check itself fails on a planted cycle (so a passing run means something)."""
    a = ast.parse("from dsaml_utils.data.types import Curve\n")
    b = ast.parse("from dsaml_utils.training.config import RunConfig\n")
    monkeypatch.setitem(MODULES, "dsaml_utils.training.config", a)
    monkeypatch.setitem(MODULES, "dsaml_utils.data.types", b)
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()
    with pytest.raises(AssertionError, match="later stage"):
        test_imports_flow_down_the_pipeline("dsaml_utils.data.types")


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_modules_are_short(mod):
    path = PACKAGE.parent / (mod.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / mod.replace(".", "/") / "__init__.py"
    n = len(path.read_text().splitlines())
    assert n <= 500, f"{path.name}: {n} lines (keep modules readable in one sitting: at most 500)"


def test_argument_parsing_lives_in_cli():
    for mod, tree in MODULES.items():
        if mod.startswith("dsaml_utils.cli"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert "argparse" not in names, f"{mod} line {node.lineno}: argparse belongs in dsaml_utils.cli"
