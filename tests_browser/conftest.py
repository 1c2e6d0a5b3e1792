"""Fixtures of the browser test: a smoke workbook run, JupyterLab on copies of the notebooks, Chromium.

Environment: DSAML_BROWSER_NOTEBOOKS (the notebooks folder under test, default notebooks/),
DSAML_BROWSER_RUN (the `dsaml workbook` run the notebooks read, default runs/browser-smoke),
DSAML_BROWSER_ARTIFACTS (screenshots and a summary, default runs/browser-artifacts), DSAML_CHROMIUM
(default /usr/bin/chromium), DSAML_UPDATE_SCREENSHOT=1 (also write docs/jupyterlab.png).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from labserver import (
    CHROMIUM,
    LabServer,
    browser_requirements,
    copy_notebooks,
    env_path,
    workbook_params,
)


def pytest_collection_modifyitems(config, items):
    """Without chromium or playwright only test_browser_requirements runs (and fails with how to install
    them): one failure line instead of one error per notebook."""
    if browser_requirements(CHROMIUM) is None:
        return
    keep = [i for i in items if i.name == "test_browser_requirements"]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = env_path("DSAML_BROWSER_ARTIFACTS", "runs/browser-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


@pytest.fixture(scope="session")
def workbook_run() -> dict:
    """The parameters of the finished `dsaml workbook` run in DSAML_BROWSER_RUN."""
    run = env_path("DSAML_BROWSER_RUN", "runs/browser-smoke")
    if not (run / "workbook.json").is_file():
        pytest.fail(f"no workbook run in {run}: run `dsaml workbook --preset smoke --out {run}` first "
                    "(`make test-browser` does)", pytrace=False)
    return workbook_params(run)


@pytest.fixture(scope="session")
def lab(tmp_path_factory, workbook_run):
    """JupyterLab serving copies of notebooks/ whose parameters cell points at the workbook run; the copies
    live in a temporary folder inside the run (removed afterwards), so their paths read ../../data/..."""
    run = Path(workbook_run["run_dir"])
    tmp = Path(tempfile.mkdtemp(prefix="browser-lab-", dir=run))  # inside the run: short relative paths
    try:
        copy_notebooks(workbook_run, tmp / "notebooks")
        server = LabServer(tmp / "notebooks", tmp_path_factory.mktemp("jupyter")).start()
        yield server
        server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_page(lab, artifacts):
    """One Chromium page with JupyterLab loaded (the Debian browser, never a downloaded one)."""
    from labpage import CHROMIUM_ARGS, VIEWPORT, LabPage
    from playwright.sync_api import sync_playwright

    console = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        lp = LabPage(page, lab.url, lab.token, artifacts)
        lp.load()
        yield lp
        lp.close()
        (artifacts / "console.log").write_text("\n".join(console) + "\n")
        (artifacts / "jupyterlab.log").write_text(lab.log_tail(200_000))
        context.close()
        browser.close()


@pytest.fixture(scope="session")
def summary(artifacts):
    """Per-notebook timings and counts, written to <artifacts>/summary.json at the end."""
    record: dict = {}
    yield record
    (artifacts / "summary.json").write_text(json.dumps(record, indent=1, default=str))
