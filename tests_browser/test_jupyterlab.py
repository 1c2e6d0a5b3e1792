"""Every notebook runs in JupyterLab (Run All in a real browser, headless Chromium) without an error, shows
its figures, and its widgets respond; notebook 09's annotate-yourself flow works end to end.

Not part of `make test` (testpaths = ["tests"]); `make test-browser` first runs the smoke workbook
(`dsaml workbook --preset smoke`), then this file. The notebooks' own parameters point at the quick runs
(runs/synthetic-quick), which Run All would train for many minutes; JupyterLab therefore serves copies of
notebooks/ in a temporary folder whose parameters cell is rewritten to the smoke run's values, with the
paths spelled relative to the copies as a user's notebook spells them (see conftest.py). Steps run in
order, one notebook open at a time: Run All, then that notebook's widget checks on the same page.

A notebook fails on: an error output (in the notebook model, or a rendered traceback), stderr output that
is not a progress bar (a warning box is what users complained about; tqdm renders its bars as widgets in
JupyterLab, and its text fallback is the one stderr allowed), an open dialog, a kernel other than "dsaml",
fewer figures than expectations.FIGURES, Run All not finishing. Screenshots go to DSAML_BROWSER_ARTIFACTS.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from expectations import ANNOTATE, DOCS_SCREENSHOT, FIGURES, WIDGETS, WidgetCheck
from labpage import DOM_JS, STATE_JS, output_problems
from labserver import CHROMIUM, NOTEBOOKS_SRC, REPO, browser_requirements

from dsaml_utils.evaluation.curves import read_curve_csv
from dsaml_utils.workbook.runner import list_notebooks


@dataclass(frozen=True)
class Step:
    """One test item: Run All in a notebook, a widget check, or the annotate flow."""

    number: str
    kind: str  # "run", "widget" or "annotate"
    check: WidgetCheck | None = None

    @property
    def id(self) -> str:
        return f"{self.number}-{self.kind if self.check is None else self.check.name}"


def steps() -> list[Step]:
    """Run All for every numbered notebook in notebooks/, each followed by its widget checks."""
    numbers = [p.stem[:2] for p in list_notebooks(NOTEBOOKS_SRC)]
    out = []
    for n in sorted(set(numbers) | set(WIDGETS) | {ANNOTATE.notebook}):
        if n in numbers:
            out.append(Step(n, "run"))
        out += [Step(n, "widget", c) for c in WIDGETS.get(n, [])]
        if n == ANNOTATE.notebook:
            out.append(Step(n, "annotate"))
    return out


NOTEBOOKS = {p.stem[:2]: p.name for p in list_notebooks(NOTEBOOKS_SRC)}
RAN: dict[str, list[str]] = {}  # notebook number -> problems of its Run All in this session


def test_browser_requirements():
    problem = browser_requirements(CHROMIUM)
    if problem:
        pytest.fail(problem, pytrace=False)


def ensure_ran(lab_page, summary, number: str) -> list[str]:
    """Open the notebook and Run All unless that is what the page shows; returns Run All's problems."""
    if number not in NOTEBOOKS:
        pytest.fail(f"notebooks/{number}_*.ipynb does not exist; {number}'s checks need it", pytrace=False)
    name = NOTEBOOKS[number]
    if lab_page.current == name and number in RAN:
        return RAN[number]
    info = lab_page.open(name)
    problems = [] if info["kernel"] == "dsaml" else [f"kernel {info['kernel']!r}, not dsaml"]
    result = lab_page.run_all()
    problems += result.problems
    RAN[number] = problems
    shot = lab_page.screenshot(f"{Path(name).stem}")
    summary[name] = {"seconds": round(result.seconds, 1), "code_cells": result.state["code"],
                     "figures": result.dom["figures"], "widgets": result.dom["widgets"],
                     "stderr": len(result.dom["stderr"]), "problems": problems, "screenshot": str(shot)}
    return problems


@pytest.mark.parametrize("step", steps(), ids=lambda s: s.id)
def test_jupyterlab(lab, lab_page, summary, step):
    if step.kind == "run":
        run_all(lab_page, summary, step.number)
    else:
        problems = ensure_ran(lab_page, summary, step.number)
        assert not any("did not finish" in p for p in problems), problems
        if step.kind == "widget":
            widget_check(lab_page, summary, step)
        else:
            annotate_flow(lab_page, summary, lab.root_dir)


def run_all(lab_page, summary, number: str) -> None:
    problems = ensure_ran(lab_page, summary, number)
    name = NOTEBOOKS[number]
    if problems:
        pytest.fail(f"{name}: Run All in JupyterLab:\n  " + "\n  ".join(problems), pytrace=False)
    if number not in FIGURES:
        pytest.fail(f"{name}: add its figure count to tests_browser/expectations.py FIGURES", pytrace=False)
    shown = summary[name]["figures"]
    assert shown >= FIGURES[number], f"{name}: {shown} figures rendered, expected at least {FIGURES[number]}"


def widget_check(lab_page, summary, step: Step) -> None:
    check, name = step.check, NOTEBOOKS[step.number]
    lab_page.find(check.control)
    for cls in check.watch:  # every watched output must be there before the control moves
        lab_page.find(cls)
    before = lab_page.fingerprint(list(check.watch))
    lab_page.screenshot(f"{Path(name).stem}-{check.name}-before", full=False)
    if check.action == "slide":
        old, new = lab_page.move_slider(check.control)
    else:
        old, new = lab_page.choose_other(check.control)
    assert old != new, f"{name}: could not change .{check.control} (value stays {old!r})"
    after = lab_page.wait_changed(before, list(check.watch))
    lab_page.screenshot(f"{Path(name).stem}-{check.name}-after", full=False)
    changed = [k for k in after if after[k] != before.get(k)]
    summary[f"{name}:{check.name}"] = {"from": old, "to": new, "changed": changed}
    assert after != before, f"{name}: .{check.control} {old!r} -> {new!r} changed none of {check.watch}"
    state, dom = lab_page.page.evaluate(STATE_JS, lab_page.current), lab_page.page.evaluate(DOM_JS, lab_page.current)
    problems = output_problems(state, dom)
    assert problems == [], f"{name}: after moving .{check.control}: {problems}"
    if (step.number, check.name) == DOCS_SCREENSHOT and os.environ.get("DSAML_UPDATE_SCREENSHOT") == "1":
        update_docs_screenshot(lab_page, check)


def resolve(path_text: str, cwd: Path) -> Path:
    """A path a notebook printed: absolute, or relative to the notebook's folder (its kernel's cwd)."""
    path = Path(path_text.strip().strip("`'\"").rstrip(",;"))
    return path if path.is_absolute() else cwd / path


def annotate_flow(lab_page, summary, cwd: Path) -> None:
    f, name = ANNOTATE, NOTEBOOKS[ANNOTATE.notebook]
    stem = Path(name).stem
    for cls in (f.song, f.shift, f.save, f.adapt, f.status):
        lab_page.find(cls)
    started = time.time()
    old, new = lab_page.move_slider(f.shift)
    assert old != new, f"{name}: could not move .{f.shift}"
    lab_page.click(f.save)
    saved = lab_page.wait_text(f.status, f.saved, timeout=60)
    lab_page.screenshot(f"{stem}-annotate-saved", full=False)
    assert saved, f"{name}: after clicking .{f.save}, .{f.status} says {lab_page.text(f.status)!r}"
    curve_path = resolve(saved.group(1), cwd)
    assert curve_path.is_file(), f"{name}: saved curve {curve_path} does not exist"
    assert curve_path.stat().st_mtime >= started - 1, f"{name}: {curve_path} was not written by this save"
    curve = read_curve_csv(curve_path)  # raises on anything that is not a time,arousal,valence curve
    assert len(curve.times) > 1
    lab_page.click(f.adapt)
    adapted = lab_page.wait_text(f.status, f.adapted, timeout=180)
    lab_page.screenshot(f"{stem}-annotate-adapted", full=False)
    assert adapted, f"{name}: after clicking .{f.adapt}, .{f.status} says {lab_page.text(f.status)!r}"
    pred_path = resolve(adapted.group(1), cwd)
    preds = sorted(pred_path.glob("*.csv")) if pred_path.is_dir() else [pred_path]
    assert preds and all(p.is_file() for p in preds), f"{name}: no predictions in {pred_path}"
    for p in preds:  # a file, or a folder of per-song files: each a curve written just now
        assert p.stat().st_mtime >= started - 1, f"{name}: {p} is older than this check"
        read_curve_csv(p)
    summary[f"{name}:annotate"] = {"shift": [old, new], "curve": str(curve_path),
                                   "predictions": [str(p) for p in preds]}


def update_docs_screenshot(lab_page, check: WidgetCheck, limit: int = 300_000) -> None:
    """docs/jupyterlab.png: the notebook 08 view after the check, its widget at the top, < 300 KB."""
    from PIL import Image

    lab_page.find(check.control).evaluate(  # the widget at the top, the end of its code cell above it
        "e => { (e.closest('.jp-OutputArea') || e).scrollIntoView({block: 'start'});"
        " const s = e.closest('.jp-WindowedPanel-outer'); if (s) s.scrollTop -= 140; }")
    lab_page.settle(quiet=0.5, timeout=10)
    shot = lab_page.screenshot("docs-jupyterlab", full=False)
    dest = REPO / "docs" / "jupyterlab.png"
    if shot.stat().st_size <= limit:
        shutil.copyfile(shot, dest)
    else:
        Image.open(shot).convert("RGB").quantize(colors=256).save(dest, optimize=True)
    assert dest.stat().st_size < limit, f"{dest} is {dest.stat().st_size} bytes"
