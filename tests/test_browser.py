"""JupyterLab in a real browser: the way the paper's readers open the notebooks.

Starts ``jupyter lab`` on 127.0.0.1 with a random token over a copy of ``notebooks/`` (outputs cleared,
so nothing is written into the repository and every output seen was made by this run), opens
``05_pipeline.ipynb`` in headless Chromium (Debian's ``chromium`` package, driven by Playwright; no
browser download), runs all cells from the *Run* menu, waits for the kernel to go idle with every code
cell numbered, and checks that the last cell shows its output and no cell shows an error, in the page
and in the notebook JupyterLab saves. A screenshot goes to the test's temporary folder. The server
(and its kernel) is stopped at the end whatever happens.

Skips, saying so, only when no Chromium is installed (``apt-get install chromium``; ``.ci/run`` does it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "05_pipeline.ipynb"
# Generous: the CI machine has 2 cores and the notebook trains (smoke preset) for about a minute; on a
# machine shared with heavier jobs every step (even a click or a save) can take far longer than usual.
SERVER_START_S = 180
PAGE_LOAD_S = 180      # also Playwright's timeout for each click and wait
RUN_ALL_S = 1200
SAVE_S = 300
STDERR = "application/vnd.jupyter.stderr"
# An error output as JupyterLab shows it: IPython's traceback header, or the exception line of a SyntaxError.
ERROR = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b", re.M)

pytestmark = pytest.mark.browser


def _chromium() -> str | None:
    found = os.environ.get("PQD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and os.access(found, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_settings(folder: Path) -> None:
    """User settings of the throwaway JupyterLab: every cell in the DOM, the notebook's kernel started
    without asking, no news or update checks."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                       "autoStartDefaultKernel": True},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"checkForUpdates": False,
                                                                            "fetchNews": "false"},
    }
    for name, value in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and the kernels it started (they share its process group)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if server.poll() is not None:
            break
        try:
            os.killpg(server.pid, sig)
            server.wait(wait)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(server.pid, signal.SIGKILL)  # a kernel left behind by a server that ended first
    except ProcessLookupError:
        pass


@pytest.fixture
def chromium() -> str:
    """Chromium's executable; skips (saying why) when there is none, before any server starts."""
    found = _chromium()
    if found is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it), "
                    "so JupyterLab cannot be checked in a browser")
    return found


@pytest.fixture
def lab(tmp_path, chromium):
    """A JupyterLab server over a cleared copy of the notebooks; yields (notebook URL, folder, log tail)."""
    work = tmp_path / "notebooks"
    work.mkdir()
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, work / path.name)
    jupyter = tmp_path / "jupyter"
    _lab_settings(jupyter / "lab-settings")
    port, token = _free_port(), secrets.token_hex(24)
    env = dict(os.environ,
               # The kernel imports this checkout's pqd_lib, wherever the notebooks' copy lies.
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               JUPYTER_CONFIG_DIR=str(jupyter / "config"), JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(jupyter / "lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(jupyter / "workspaces"))
    log_path = tmp_path / "jupyterlab.log"

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--allow-root"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode} before answering:\n{log_tail()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer on 127.0.0.1:{port} within {SERVER_START_S} s:\n"
                                f"{log_tail()}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}", work, log_tail
    finally:
        _stop(server)


# What the page shows: the kernel status, each code cell's prompt, the stderr-typed outputs (JupyterLab
# renders error outputs, i.e. tracebacks, and stderr streams alike), the last code cell's output.
_STATE_JS = """() => {
  const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell'));
  const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
  const stderr = Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output[data-mime-type="%s"]'))
      .map(e => e.textContent.slice(0, 2000));
  const last = cells.length ? cells[cells.length - 1] : null;
  return {
    status: indicator ? indicator.getAttribute('data-status') : null,
    prompts: cells.map(c => ((c.querySelector('.jp-InputArea-prompt') || {}).textContent || '').trim()),
    stderr: stderr,
    lastOutput: last ? Array.from(last.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent).join('\\n') : '',
  };
}""" % STDERR


def _errors(state: dict) -> list[str]:
    return [text for text in state["stderr"] if ERROR.search(text)]


def _saved_with_outputs(path: Path) -> bool:
    """Whether the notebook on disk is the executed one (the copy started with no outputs)."""
    try:
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    except (OSError, ValueError):  # not there or half written
        return False
    return bool(code) and all(c.get("execution_count") for c in code) and bool(code[-1].get("outputs"))


def _menu(page, menu: str, item: str) -> None:
    """Click `menu` in JupyterLab's menu bar, then its enabled item whose label matches `item` (a regex)."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(rf"^{menu}$")).click()
    label = page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^(?:{item})$"))
    page.locator(".lm-Menu .lm-Menu-item:not(.lm-mod-disabled)").filter(has=label).click()


def _run_all(page, screenshot: Path, log_tail) -> dict:
    """Run > Run All Cells; wait until the kernel is idle and every code cell is numbered."""
    _menu(page, "Run", "Run All Cells")
    deadline = time.monotonic() + RUN_ALL_S
    stopped_since = None  # idle with cells left unnumbered: Run All stopped (an error) or has not started
    while True:
        state = page.evaluate(_STATE_JS)
        numbered = all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"])
        if state["status"] == "idle" and numbered:
            return state
        errors = _errors(state)
        stopped_since = (stopped_since or time.monotonic()) if state["status"] == "idle" else None
        if stopped_since and time.monotonic() - stopped_since > (10 if errors else 180):
            page.screenshot(path=str(screenshot))
            pytest.fail(f"Run All stopped with cells left, prompts {state['prompts']} (screenshot {screenshot});"
                        " errors shown:\n" + "\n".join(errors))
        if time.monotonic() > deadline:
            page.screenshot(path=str(screenshot))
            pytest.fail(f"Run All did not finish within {RUN_ALL_S} s: kernel {state['status']}, prompts "
                        f"{state['prompts']} (screenshot {screenshot})\n{log_tail()}")
        page.wait_for_timeout(2000)


def test_jupyterlab_runs_the_pipeline_notebook_in_chromium(chromium, lab, tmp_path):
    from playwright.sync_api import sync_playwright

    url, work, log_tail = lab
    screenshot = tmp_path / "jupyterlab-05_pipeline.png"
    saved_path = work / NOTEBOOK
    start = time.monotonic()
    with sync_playwright() as pw:
        # Nothing leaves the machine: every host name fails to resolve (the Colab badge image is not fetched);
        # the server is reached by its address. Chromium does this itself: a Playwright route would hold every
        # request until this (single-threaded) test next calls into Playwright.
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.set_default_timeout(PAGE_LOAD_S * 1000)
            page.goto(url, timeout=PAGE_LOAD_S * 1000)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=PAGE_LOAD_S * 1000)
            page.wait_for_function("() => document.querySelector('.jp-Toolbar-kernelName')?.textContent"
                                   ".includes('Python')", timeout=PAGE_LOAD_S * 1000)
            page.wait_for_timeout(2000)
            select = page.locator(".jp-Dialog .jp-mod-accept")
            if select.count():  # "Select Kernel": only if the setting above is ignored; take the notebook's own
                select.click()
            page.wait_for_function("() => document.querySelector('.jp-Notebook-ExecutionIndicator')"
                                   "?.getAttribute('data-status') === 'idle'", timeout=PAGE_LOAD_S * 1000)
            before = page.evaluate(_STATE_JS)
            assert before["prompts"] and not any(re.search(r"\d", p) for p in before["prompts"]), before["prompts"]

            state = _run_all(page, screenshot, log_tail)
            ran_s = time.monotonic() - start
            n = len(state["prompts"])
            assert state["prompts"] == [f"[{i}]:" for i in range(1, n + 1)], "a fresh kernel numbers cells 1..n"
            assert not _errors(state), "a cell shows an error:\n" + "\n".join(_errors(state))
            assert "records appended" in state["lastOutput"], f"the last cell's output: {state['lastOutput']!r}"

            page.locator(".jp-Notebook .jp-CodeCell").last.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(screenshot))

            # File > Save Notebook: the saved file must say the same.
            _menu(page, "File", "Save Notebook|Save")
            deadline = time.monotonic() + SAVE_S
            while not _saved_with_outputs(saved_path):
                assert time.monotonic() < deadline, f"JupyterLab did not save the executed notebook within {SAVE_S} s"
                page.wait_for_timeout(1000)  # not time.sleep: Playwright's own waits keep the page's events flowing
        finally:
            browser.close()

    saved = nbformat.read(saved_path, as_version=4)
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert code[-1].outputs, "the saved notebook holds the last cell's output"
    stderr = "".join(f"\n  stderr shown (not an error): {t[:300]}" for t in state["stderr"])
    print(f"\nJupyterLab ran {NOTEBOOK} ({n} code cells) in Chromium in {ran_s:.0f} s; screenshot {screenshot}{stderr}")
