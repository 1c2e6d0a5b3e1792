"""Notebooks 03-05 open the box: hand-built pieces asserted against the library, exercises with solutions.

The notebooks themselves run in tests/test_notebooks.py (smoke preset), where every assert below them
executes; these tests only read the stored notebooks and the solution files, so they take no time.
"""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# what each notebook builds by hand, and the library call its assert compares against
HAND_BUILT = {
    "03_model": ["band_mask(T_toy, n_l)", "attention_loss(A_l, A_g, None, alpha, beta)",
                 "attention_loss(A_l, A_g, real, alpha, beta)", "out_small[key]"],
    "04_dmer_training": ["dsaml_loss(out[\"pred\"], y, mask)", "maml.default_loss(out, batch)", "trainer.update()",
                         "trainer.model.state_dict()"],
    "05_meta_training": ["maml.adapt(", "maml.meta_loss_loop(", "first_order=first_order", "create_graph=True"],
}


def code_cells(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def solution_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (NOTEBOOKS / "solutions" / f"{name}.md").read_text(), re.S)


def bound_names(tree: ast.AST) -> set[str]:
    """Names a piece of code binds anywhere (assignments, loops, defs, arguments, imports)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
    return out


def used_names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


@pytest.mark.parametrize("name", list(HAND_BUILT))
def test_hand_built_pieces_are_asserted_against_the_library(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = "\n".join(code_cells(nb))
    assert "torch.testing.assert_close" in code
    for piece in HAND_BUILT[name]:
        assert piece in code, f"{name}: no {piece!r}"
    assert any(c.cell_type == "markdown" and "Open the box" in c.source for c in nb.cells)


@pytest.mark.parametrize("name", list(HAND_BUILT))
def test_exercises_end_the_notebook_and_link_their_solutions(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Exercises")
    link = f"solutions/{name}.md"
    assert f"]({link})" in last.source and (NOTEBOOKS / link).is_file()
    exercises = re.findall(r"^(\d+)\. \*\*", last.source, re.M)
    assert 2 <= len(exercises) <= 3
    solutions = (NOTEBOOKS / link).read_text()
    for n in exercises:
        assert re.search(rf"^## {n}\. ", solutions, re.M), f"{link}: no solution to exercise {n}"


@pytest.mark.parametrize("name", list(HAND_BUILT))
def test_solution_code_compiles_and_uses_only_the_notebooks_names(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    defined = set()
    for src in code_cells(nb):
        defined |= bound_names(ast.parse(src))
    blocks = solution_blocks(name)
    assert blocks, f"{name}: the solutions have no code"
    own = set()
    for block in blocks:
        tree = ast.parse(block)  # raises on a syntax error
        own |= bound_names(tree)
        missing = used_names(tree) - own - defined - set(dir(builtins))
        assert not missing, f"solutions/{name}.md uses names the notebook does not define: {sorted(missing)}"
