"""JupyterLab for the browser test: notebook copies pointed at a workbook run, and a private server."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat

from dsaml_utils.workbook.runner import PARAMETER_NAMES, list_notebooks, parameters_cell

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("DSAML_CHROMIUM", "/usr/bin/chromium")


def env_path(name: str, default: str) -> Path:
    """An environment variable's path (relative ones against the repository), else the default."""
    path = Path(os.environ.get(name) or default)
    return (path if path.is_absolute() else REPO / path).resolve()


# The notebooks under test (DSAML_BROWSER_NOTEBOOKS: another folder, e.g. a deliberately broken copy).
NOTEBOOKS_SRC = env_path("DSAML_BROWSER_NOTEBOOKS", "notebooks")
PATH_PARAMETERS = ("root", "run_dir", "figures_dir", "tables_dir")

# JupyterLab user settings written into the server's private settings directory: every cell stays in the
# DOM (the test counts figures and finds widgets anywhere in a notebook), no blank space after the last
# cell (full-length screenshots), no news or update questions,
# no extension manager (it would ask PyPI).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "scrollPastEnd": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
}


def workbook_params(run: Path) -> dict:
    """The notebook parameters a `dsaml workbook` run recorded in <run>/workbook.json."""
    record = json.loads((run / "workbook.json").read_text())
    params = record.get("params", record)
    missing = [n for n in PARAMETER_NAMES if n not in params]
    if missing:
        raise ValueError(f"{run / 'workbook.json'}: no parameters {missing}")
    return {n: params[n] for n in PARAMETER_NAMES}


def rewrite_parameters(source: str, values: dict) -> str:
    """The parameters cell with each `name = value` replaced (trailing comments kept)."""
    for name, value in values.items():
        pattern = re.compile(rf"^{name} = .*?(?=\s+#|$)", re.MULTILINE)
        if not pattern.search(source):
            raise ValueError(f"parameters cell has no line `{name} = ...`")
        source = pattern.sub(lambda _m, n=name, v=value: f"{n} = {v!r}", source, count=1)
    return source


def copy_notebooks(params: dict, dest: Path, src: Path = NOTEBOOKS_SRC) -> list[Path]:
    """Copy the notebooks folder to `dest`, each numbered notebook's parameters cell pointed at `params`:
    paths relative to `dest` (the spelling a user's notebook has, not the runner's absolute one); the
    originals stay as they are. Returns the notebook copies in order."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"),
                    dirs_exist_ok=True)
    values = {n: params[n] for n in PARAMETER_NAMES}
    for n in PATH_PARAMETERS:
        values[n] = os.path.relpath(Path(values[n]).resolve(), dest.resolve())
    copies = []
    for path in list_notebooks(src):
        nb = nbformat.read(path, as_version=4)
        if parameters_cell(nb) is None:
            raise ValueError(f"{path}: no cell tagged 'parameters'")
        cell = nb.cells[parameters_cell(nb)]
        cell.source = rewrite_parameters(cell.source, values)
        nbformat.write(nb, dest / path.name)
        copies.append(dest / path.name)
    return copies


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """`jupyter lab` on 127.0.0.1 with a free port, a random token and private Jupyter directories."""

    def __init__(self, root_dir: Path, home: Path, kernel: str = "dsaml"):
        self.root_dir, self.home, self.kernel = Path(root_dir), Path(home), kernel
        self.port, self.token = free_port(), secrets.token_hex(24)
        self.log_path = self.home / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict:
        """The server's environment: private config/data/runtime/settings dirs, interactive notebooks."""
        env = dict(os.environ)
        for key in ("DSAML_WORKBOOK_BATCH", "MPLBACKEND", "JUPYTER_PATH", "JUPYTER_CONFIG_PATH"):
            env.pop(key, None)  # the kernels must see JupyterLab, not the batch runner
        dirs = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data", "JUPYTER_RUNTIME_DIR": "runtime",
                "JUPYTERLAB_SETTINGS_DIR": "settings", "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
                "IPYTHONDIR": "ipython"}
        for key, name in dirs.items():
            (self.home / name).mkdir(parents=True, exist_ok=True)
            env[key] = str(self.home / name)
        return env

    def write_settings(self, settings_dir: Path) -> None:
        for plugin, values in LAB_SETTINGS.items():
            package, name = plugin.rsplit("/", 1)
            path = settings_dir / package / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))

    def command(self) -> list[str]:
        cmd = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser",
               "--ServerApp.open_browser=False", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root_dir}", "--LabApp.expose_app_in_browser=True",
               f"--MappingKernelManager.default_kernel_name={self.kernel}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        return cmd

    def start(self, timeout: float = 90.0) -> LabServer:
        env = self.env()
        self.write_settings(Path(env["JUPYTERLAB_SETTINGS_DIR"]))
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.command(), cwd=self.root_dir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.is_file() else ""

    def stop(self) -> None:
        """Stop the server (its kernels with it): SIGTERM to its process group, SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def browser_requirements(chromium: str) -> str | None:
    """None when playwright and chromium are usable, else one line saying how to install what is missing."""
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the Python package playwright is missing (`make venv` installs it from requirements.txt)")
    if not (Path(chromium).is_file() and os.access(chromium, os.X_OK)):
        problems.append(f"{chromium} is missing (Debian: `apt-get install -y --no-install-recommends chromium`)")
    return "browser test cannot run: " + "; ".join(problems) if problems else None

