"""Driving one JupyterLab page with Playwright: open a notebook, Run All, read its outputs, use widgets."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1280, "height": 900}

# A stderr output is allowed only when every line of it is a progress bar (tqdm's text fallback:
# "desc:  40%|████      | 2/5 [00:01<00:01, 2.0it/s]"); anything else (a warning, a log line) fails.
PROGRESS_LINE = re.compile(r"^[^\n]*\d+%\|[^|\n]*\|\s*\d+(?:\.\d+)?[kMG]?/\d+(?:\.\d+)?[kMG]?\s*\[[^\]\n]*\]\s*$")


def is_progress_bar(text: str) -> bool:
    """True when stderr text holds only progress-bar lines (the last state after carriage returns)."""
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in text.replace("\r\n", "\n").split("\n")]
    lines = [ln for ln in lines if ln]
    return bool(lines) and all(PROGRESS_LINE.match(ln) for ln in lines)


# The page keeps the opened notebook panels in window.__dsaml so later calls can find them by path.
OPEN_JS = """async (path) => {
  const app = window.jupyterapp;
  window.__dsaml = window.__dsaml || {};
  const w = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await w.context.ready;
  await w.sessionContext.ready;
  app.shell.activateById(w.id);
  window.__dsaml[path] = w;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  return {id: w.id, kernel: kernel ? kernel.name : null};
}"""

RUN_ALL_JS = """async (path) => {
  const app = window.jupyterapp, w = window.__dsaml[path];
  app.shell.activateById(w.id);
  await app.commands.execute('notebook:run-all-cells');
  return true;
}"""

# Kernel status, code cells without an execution count, cells still showing [*], and every output in the
# notebook model (type, mime types, stderr text, error name/value).
STATE_JS = """(path) => {
  const w = window.__dsaml[path];
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.model.cells, out = {status: kernel ? kernel.status : 'none', pending: [], busy: 0,
                                              outputs: [], code: 0, dialogs: []};
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    const src = c.sharedModel.getSource().trim();
    if (!src) continue;
    out.code += 1;
    if (c.executionCount === null || c.executionCount === undefined) out.pending.push(i);
    for (let k = 0; k < c.outputs.length; k++) {
      const o = c.outputs.get(k).toJSON();
      const text = Array.isArray(o.text) ? o.text.join('') : (o.text || '');
      out.outputs.push({cell: i, type: o.output_type, name: o.name || null, text: text.slice(0, 2000),
                        ename: o.ename || null, evalue: o.evalue ? String(o.evalue).slice(0, 500) : null,
                        mimes: o.data ? Object.keys(o.data) : []});
    }
  }
  const node = document.getElementById(w.id);
  node.querySelectorAll('.jp-InputPrompt').forEach(p => { if (p.textContent.includes('*')) out.busy += 1; });
  document.querySelectorAll('.jp-Dialog').forEach(d => out.dialogs.push(d.innerText.slice(0, 300)));
  return out;
}"""

# What the DOM shows: rendered error and stderr outputs, tracebacks, and the figures (loaded images,
# ipympl figures, other canvases) inside output areas.
DOM_JS = """(path) => {
  const node = document.getElementById(window.__dsaml[path].id);
  const q = s => Array.from(node.querySelectorAll(s));
  const outs = q('.jp-OutputArea-output');
  const imgs = q('.jp-OutputArea-output img').filter(i => i.complete && i.naturalWidth > 0);
  const mpl = q('.jp-OutputArea-output .jupyter-matplotlib-figure');
  const canvases = q('.jp-OutputArea-output canvas').filter(c => !c.closest('.jupyter-matplotlib-figure'));
  return {
    errors: q('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
      .map(e => e.innerText.slice(0, 1500)),
    stderr: q('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
      .map(e => e.innerText.slice(0, 1500)),
    tracebacks: outs.filter(o => /Traceback \\(most recent call last\\)/.test(o.innerText)).length,
    images: imgs.length, mpl_figures: mpl.length, canvases: canvases.length,
    figures: imgs.length + mpl.length + canvases.length,
    widgets: q('.jupyter-widgets').length,
  };
}"""

CLOSE_JS = """async (path) => {
  const w = window.__dsaml[path];
  if (!w) return false;
  try { await w.sessionContext.shutdown(); } catch (e) {}
  w.dispose();
  delete window.__dsaml[path];
  return true;
}"""

# A fingerprint of what a widget shows: its text, image sources, audio/video sources, canvas pixels.
FINGERPRINT_JS = """(el) => {
  const parts = [el.innerText];
  el.querySelectorAll('img').forEach(i => parts.push('img:' + i.src.length + ':' + i.src.slice(-200)));
  el.querySelectorAll('audio, video, source').forEach(a =>
    parts.push('media:' + (a.src || '').length + ':' + (a.src || '').slice(-200)));
  el.querySelectorAll('canvas').forEach(c => { try { parts.push('canvas:' + c.toDataURL().slice(-400)); }
                                               catch (e) { parts.push('canvas:?'); } });
  return parts.join('\\n');
}"""


# Scroll the notebook to its first cell; returns the page height that shows every cell (the notebook's top
# on the page, plus its cells, plus the status bar).
SCROLL_TOP_JS = """(id) => {
  const n = document.getElementById(id), s = n.querySelector('.jp-WindowedPanel-outer') || n;
  s.scrollTop = 0;
  const cells = n.querySelectorAll('.jp-Cell');
  if (!cells.length) return window.innerHeight;
  const top = cells[0].getBoundingClientRect().top, bottom = cells[cells.length - 1].getBoundingClientRect().bottom;
  return Math.ceil(top + (bottom - top) + (window.innerHeight - s.getBoundingClientRect().bottom) + 40);
}"""


@dataclass
class RunResult:
    """What Run All left in one notebook."""

    seconds: float
    state: dict
    dom: dict
    problems: list[str] = field(default_factory=list)


class LabPage:
    """One browser page on a JupyterLab server; at most one notebook open at a time."""

    def __init__(self, page, url: str, token: str, artifacts: Path):
        self.page, self.url, self.token, self.artifacts = page, url, token, artifacts
        self.current: str | None = None
        self.panel_id: str | None = None

    def load(self, timeout: float = 120.0) -> None:
        """Open JupyterLab and wait until its app object is there and started."""
        self.page.goto(f"{self.url}/lab?token={self.token}", timeout=timeout * 1000)
        self.page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell "
                                    "&& window.jupyterapp.commands.hasCommand('notebook:run-all-cells')",
                                    timeout=timeout * 1000)
        self.page.evaluate("() => window.jupyterapp.restored")

    def open(self, path: str) -> dict:
        """Open a notebook (closing the one open before, its kernel shut down); returns id and kernel."""
        if self.current and self.current != path:
            self.close()
        info = self.page.evaluate(OPEN_JS, path)
        self.current, self.panel_id = path, info["id"]
        return info

    def close(self) -> None:
        if self.current:
            self.page.evaluate(CLOSE_JS, self.current)
        self.current = self.panel_id = None

    def panel(self):
        return self.page.locator(f"[id='{self.panel_id}']")

    def run_all(self, timeout: float = 300.0) -> RunResult:
        """Run All Cells and wait until the kernel is idle and every code cell has an execution count (or
        an error stopped the run); returns the model's and the DOM's view of the outputs."""
        t0 = time.monotonic()
        self.page.evaluate(RUN_ALL_JS, self.current)
        stable, state = 0, {}
        while time.monotonic() - t0 < timeout:
            state = self.page.evaluate(STATE_JS, self.current)
            errored = any(o["type"] == "error" for o in state["outputs"])
            done = state["status"] == "idle" and state["busy"] == 0 and (not state["pending"] or errored)
            stable = stable + 1 if done or state["dialogs"] else 0
            if stable >= 3:
                break
            time.sleep(0.5)
        seconds = time.monotonic() - t0
        self.settle()
        state = self.page.evaluate(STATE_JS, self.current)
        result = RunResult(seconds, state, self.page.evaluate(DOM_JS, self.current))
        if stable < 3:
            result.problems.append(f"Run All did not finish within {timeout:.0f} s (kernel {state['status']}, "
                                   f"cells without execution count: {state['pending']})")
        result.problems += output_problems(state, result.dom)
        return result

    def settle(self, quiet: float = 1.0, timeout: float = 20.0) -> None:
        """Wait until the notebook's DOM stops changing for `quiet` seconds (widgets and images render
        after the kernel went idle)."""
        t0, last, since = time.monotonic(), None, time.monotonic()
        while time.monotonic() - t0 < timeout:
            size = self.page.evaluate(
                "(id) => { const n = document.getElementById(id); return n.innerHTML.length + ':' + "
                "Array.from(n.querySelectorAll('img')).filter(i => i.complete).length; }", self.panel_id)
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.25)

    def screenshot(self, name: str, full: bool = True) -> Path:
        """Screenshot into the artifacts folder: the whole notebook (viewport stretched to its length,
        at most 12000 px) or just the current view."""
        path = self.artifacts / f"{name}.png"
        if not full:
            self.page.screenshot(path=str(path))
            return path
        height = self.page.evaluate(SCROLL_TOP_JS, self.panel_id)
        self.page.set_viewport_size({"width": VIEWPORT["width"], "height": int(min(max(height, 900), 12000))})
        try:
            self.settle(quiet=0.5, timeout=5)
            self.page.evaluate(SCROLL_TOP_JS, self.panel_id)
            self.page.screenshot(path=str(path))
        finally:
            self.page.set_viewport_size(VIEWPORT)
        return path

    # ---- widgets -------------------------------------------------------------------------------------

    def find(self, css_class: str, timeout: float = 30.0):
        """The first element with this CSS class in the open notebook (waits for it to render)."""
        loc = self.panel().locator(f".{css_class}").first
        loc.wait_for(state="attached", timeout=timeout * 1000)
        loc.scroll_into_view_if_needed(timeout=timeout * 1000)
        return loc

    def fingerprint(self, css_classes: list[str]) -> dict:
        """For each class present in the notebook, a fingerprint of the first element's content."""
        out = {}
        for cls in css_classes:
            loc = self.panel().locator(f".{cls}")
            if loc.count():
                out[cls] = loc.first.evaluate(FINGERPRINT_JS)
        return out

    def wait_changed(self, before: dict, css_classes: list[str], timeout: float = 60.0) -> dict:
        """Wait until some watched element shows something else than `before`; returns the new fingerprints."""
        t0, now = time.monotonic(), before
        while time.monotonic() - t0 < timeout:
            now = self.fingerprint(css_classes)
            if any(now.get(k) != v for k, v in before.items()) or set(now) - set(before):
                self.settle(quiet=0.5, timeout=10)
                return self.fingerprint(css_classes)
            time.sleep(0.25)
        return now

    def move_slider(self, css_class: str) -> tuple[str, str]:
        """Move the first slider with this class (drag its handle across, keyboard as a fallback);
        returns its readout before and after."""
        slider = self.find(css_class)
        readout = slider.locator(".widget-readout").first
        before = readout.inner_text() if readout.count() else ""
        handle = slider.locator(".noUi-handle").first
        track = slider.locator(".noUi-base, .noUi-target").first
        hb, tb = handle.bounding_box(), track.bounding_box()
        if hb and tb:
            x0, y0 = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
            frac = (x0 - tb["x"]) / max(tb["width"], 1)
            target = tb["x"] + tb["width"] * (0.2 if frac > 0.5 else 0.8)
            self.page.mouse.move(x0, y0)
            self.page.mouse.down()
            self.page.mouse.move(target, y0, steps=8)
            self.page.mouse.up()
        after = readout.inner_text() if readout.count() else ""
        if after == before:
            handle.focus()
            for _ in range(5):
                handle.press("PageUp")
            after = readout.inner_text() if readout.count() else ""
        return before, after

    def choose_other(self, css_class: str) -> tuple[str, str]:
        """Pick another value in the first picker with this class (dropdown, list, radio or toggle
        buttons); returns the value before and after."""
        picker = self.find(css_class)
        select = picker.locator("select").first if picker.evaluate("e => e.tagName") != "SELECT" else picker
        if select.count():
            before = select.evaluate("s => s.value")
            options = select.evaluate("s => Array.from(s.options).map(o => o.value)")
            other = next((o for o in options if o != before), None)
            if other is None:
                return before, before
            select.select_option(other)
            return before, select.evaluate("s => s.value")
        radios = picker.locator("input[type=radio]")
        if radios.count():
            before = picker.locator("input[type=radio]:checked").first.evaluate("r => r.value")
            for i in range(radios.count()):
                if radios.nth(i).evaluate("r => !r.checked"):
                    radios.nth(i).check()
                    break
            return before, picker.locator("input[type=radio]:checked").first.evaluate("r => r.value")
        buttons = picker.locator("button")
        before = picker.locator("button.mod-active").first.inner_text() if buttons.count() else ""
        for i in range(buttons.count()):
            if "mod-active" not in (buttons.nth(i).get_attribute("class") or ""):
                buttons.nth(i).click()
                break
        after = picker.locator("button.mod-active").first.inner_text() if buttons.count() else ""
        return before, after

    def click(self, css_class: str) -> None:
        """Click the button with this class (the element itself or a button inside it)."""
        el = self.find(css_class)
        target = el if el.evaluate("e => e.tagName") == "BUTTON" else el.locator("button").first
        target.click()

    def text(self, css_class: str) -> str:
        loc = self.panel().locator(f".{css_class}")
        return loc.first.inner_text() if loc.count() else ""

    def wait_text(self, css_class: str, pattern: re.Pattern, timeout: float = 120.0) -> re.Match | None:
        """Wait until the element's text matches `pattern` (search); returns the match or None."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            m = pattern.search(self.text(css_class))
            if m:
                return m
            time.sleep(0.25)
        return None


def output_problems(state: dict, dom: dict) -> list[str]:
    """Error outputs, stderr that is not a progress bar, open dialogs: one line each. The notebook model
    is read first; the DOM (JupyterLab renders an error as a stderr-typed output with a traceback) is the
    fallback for anything the model check did not see."""
    problems = []
    for o in state["outputs"]:
        if o["type"] == "error":
            problems.append(f"cell {o['cell']}: {o['ename']}: {o['evalue']}")
        elif o["type"] == "stream" and o["name"] == "stderr" and not is_progress_bar(o["text"]):
            problems.append(f"cell {o['cell']}: stderr output: {o['text'].strip()[:300]!r}")
    if not problems:
        problems += [f"error output shown: {t.strip()[:300]!r}" for t in dom["errors"]]
        problems += [f"stderr shown: {t.strip()[:300]!r}" for t in dom["stderr"] if not is_progress_bar(t)]
        if dom["tracebacks"] and not problems:
            problems.append(f"{dom['tracebacks']} output(s) show a traceback")
    problems += [f"dialog open: {d!r}" for d in state["dialogs"]]
    return problems
