"""The notebooks in a real browser: JupyterLab on 127.0.0.1, driven through its UI in headless Chromium.

JupyterLab serves temporary copies of ``01_manifold_explorer.ipynb`` and ``02_entropy_and_ambiguity.ipynb``
with smoke parameters baked in. Python playwright drives Debian's ``chromium`` (``executable_path``;
playwright downloads no browser): Run > Run All Cells, wait for the Plotly plots and the widgets, change
the explorer's colour-by control and check that the plot follows. Screenshots go to
``$WORKBENCH_TEST_ARTIFACTS/browser`` (default ``runs/test-artifacts/browser``) and, when
``WORKBENCH_SCREENSHOTS`` names a folder (``docs/screenshots``), there too: the README shows them.
``WORKBENCH_BROWSER_PRESET=full`` runs the notebooks on the full preset instead of the smoke one (minutes, not
seconds, unless ``WORKBENCH_BROWSER_CACHE`` names a cache that holds the full world and models already): the
README's screenshots come from such a run.

Skipped only where no Chromium is installed; ``.ci/run`` installs Debian's package where it can.
"""

from __future__ import annotations

import ipaddress
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
from dataclasses import dataclass
from pathlib import Path

import pytest

from workbench.sweeps import NOTEBOOK_DIR, REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH: the browser test needs Debian's 'chromium' package "
                             "(apt-get install chromium; .ci/run installs it when it runs as root)")

EXPLORER, ENTROPY = "01_manifold_explorer.ipynb", "02_entropy_and_ambiguity.ipynb"
RUN_ALL_TIMEOUT_MS = 600_000  # a cold smoke cache (world + pretraining) and two runs fit easily
VIEWPORT = {"width": 1500, "height": 1900}  # tall enough for the whole explorer in one screenshot


FULL_PRESET = os.environ.get("WORKBENCH_BROWSER_PRESET", "smoke") == "full"


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    # The same path as in tests/test_notebooks.py: one smoke world and model cache per session.
    if FULL_PRESET:
        return os.environ.get("WORKBENCH_BROWSER_CACHE") or str(tmp_path_factory.getbasetemp() / "full-cache")
    return str(tmp_path_factory.getbasetemp() / "smoke-cache")


@pytest.fixture(scope="module")
def artifacts():
    folder = Path(os.environ.get("WORKBENCH_TEST_ARTIFACTS", REPO_ROOT / "runs" / "test-artifacts")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def publish(path: Path) -> None:
    """Copy a screenshot to $WORKBENCH_SCREENSHOTS (relative to the repository root) when set."""
    target = os.environ.get("WORKBENCH_SCREENSHOTS")
    if target:
        folder = Path(target) if Path(target).is_absolute() else REPO_ROOT / target
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)


def screenshot(element, page, artifacts: Path, name: str) -> None:
    """Scroll ``element`` into view, let it settle, save it as ``<artifacts>/<name>`` and publish it."""
    element.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    shot = artifacts / name
    element.screenshot(path=str(shot))
    publish(shot)


# ----------------------------------------------------------------------------- the server
@dataclass
class Lab:
    root: Path  # the server's root_dir
    port: int
    token: str
    process: subprocess.Popen
    log: Path
    cache: str  # the smoke cache the notebooks use

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}{'&' if '?' in path else '?'}token={self.token}"

    def api(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            return json.load(response)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(name: str, root: Path, parameters: dict) -> None:
    """A copy of ``notebooks/<name>`` in ``root``, outputs cleared, ``parameters`` injected after its
    parameters cell."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    notebook = load_notebook_node(str(NOTEBOOK_DIR / name))
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(parameterize_notebook(notebook, parameters), root / name)


def write_settings(folder: Path) -> None:
    """JupyterLab user settings: start the notebook's kernel without asking, fetch no news, keep every
    cell in the page (no windowing), so the test sees the UI a user gets after the first dialogs."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True,
                                                                       "windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
    }
    for relative, values in settings.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(tmp_path_factory, smoke_cache):
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    write_notebook(EXPLORER, root, {"smoke": not FULL_PRESET, "cache_dir": smoke_cache, "device": "cpu",
                                    "run_dir": str(root / "explorer-run"), "overwrite_run_dir": True})
    write_settings(base / "settings")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_DATA_DIR": str(base / "data"),
           "JUPYTER_RUNTIME_DIR": str(base / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces")}
    port, token = free_port(), secrets.token_hex(24)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    log = base / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    server = Lab(root, port, token, process, log, smoke_cache)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                server.api("/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 120 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()  # the server shuts its kernels down
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on ``port``, from /proc/net/tcp and tcp6 (Linux)."""
    found = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))  # host-order words
                found.append(str(ipaddress.ip_address(raw)))
    return found


def test_jupyterlab_listens_on_loopback_only(lab):
    if not Path("/proc/net/tcp").is_file():
        pytest.skip("no /proc/net/tcp to read listening sockets from (not Linux)")
    assert listening_addresses(lab.port) == ["127.0.0.1"], lab.log.read_text()[-2000:]
    outside = set()
    for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            outside.add(info[4][0])
    for address in outside:  # the host's own non-loopback addresses reach nothing on that port
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, lab.port)) != 0, f"JupyterLab answers on {address}"


# ----------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, artifacts, request):
    page = browser.new_page(viewport=VIEWPORT)
    try:
        yield page
    finally:
        page.screenshot(path=str(artifacts / f"last-{request.node.name}.png"))  # what the page showed at the end
        page.close()


def kernel_ready(lab: Lab, notebook: str) -> bool:
    """The notebook's kernel is idle and its browser connection is open (executing before that loses cells)."""
    for session in lab.api("/api/sessions"):
        if Path(session["path"]).name == notebook:
            kernel = lab.api(f"/api/kernels/{session['kernel']['id']}")
            return kernel.get("connections", 0) >= 1 and kernel.get("execution_state") == "idle"
    return False


def open_and_run_all(page, lab: Lab, notebook: str, artifacts: Path) -> float:
    """Open ``notebook`` in JupyterLab, run Run > Run All Cells and wait for the last cell; returns seconds."""
    start = time.perf_counter()
    page.goto(lab.url(f"/lab/tree/{notebook}"))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    deadline = time.monotonic() + 120
    while not kernel_ready(lab, notebook):
        assert time.monotonic() < deadline, f"the kernel of {notebook} did not start:\n{lab.log.read_text()[-2000:]}"
        time.sleep(0.5)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    last_prompt = page.locator(".jp-CodeCell").last.locator(".jp-InputPrompt")
    page.wait_for_function("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                           ".some(p => p.textContent.includes('*'))", timeout=30_000)  # queued or running
    try:  # finished, or stopped at an error: some cell has run and none is queued or running ([*])
        page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                return prompts.some(p => /\\[\\d+\\]/.test(p.textContent))
                    && !prompts.some(p => p.textContent.includes('*'));
            }""", timeout=RUN_ALL_TIMEOUT_MS, polling=1000)
    finally:
        errors = [text for text in page.locator(".jp-OutputArea-output").all_inner_texts()
                  if "Traceback (most recent call last)" in text]
        if errors:
            page.screenshot(path=str(artifacts / f"failed-{notebook}.png"))
    assert not errors, f"{notebook} raised in the browser:\n" + "\n".join(e[-3000:] for e in errors)
    assert re.search(r"\[\d+\]", last_prompt.text_content() or ""), f"the last cell of {notebook} did not run"
    return time.perf_counter() - start


@needs_chromium
def test_explorer_renders_and_follows_the_colour_by_control(page, lab, artifacts):
    from playwright.sync_api import expect

    seconds = open_and_run_all(page, lab, EXPLORER, artifacts)
    explorer = page.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-dropdown")).first
    plot = explorer.locator(".js-plotly-plot").first
    expect(plot).to_be_visible(timeout=60_000)
    for label in ("run", "colour by", "min entropy", "classes (none = all)", "sample"):
        expect(explorer.get_by_text(label, exact=True).first).to_be_visible()
    title = plot.locator(".gtitle").first
    expect(title).to_have_text("KD: coloured by class")
    assert plot.locator(".colorbar").count() == 0  # classes: a categorical key, no colour scale
    explorer.scroll_into_view_if_needed()
    before = plot.screenshot()

    explorer.locator(".widget-dropdown").filter(has_text="colour by").locator("select").select_option("entropy")
    expect(title).to_have_text("KD: coloured by entropy", timeout=30_000)
    expect(plot.locator(".colorbar").first).to_be_attached(timeout=30_000)
    page.wait_for_timeout(1000)  # the WebGL scatter repaints after the layout
    assert plot.screenshot() != before, "the plot looks the same after colouring by entropy"

    explorer.locator(".widget-dropdown").filter(has_text="run").first.locator("select").select_option("KD + AME")
    expect(title).to_have_text("KD + AME: coloured by entropy", timeout=30_000)
    sample = explorer.locator(".widget-text").filter(has_text="sample").locator("input")
    sample.fill("7")
    sample.press("Enter")
    expect(explorer.get_by_text("top 5 classes")).to_be_visible(timeout=30_000)
    expect(explorer.locator("img[src^='data:image/png']").first).to_be_visible()
    comparison = page.locator(".js-plotly-plot").filter(  # Plotly writes spaces as no-break spaces
        has=page.locator(".gtitle", has_text=re.compile(r"KD\s+vs\s+KD\s+\+\s+AME")))
    expect(comparison.first).to_be_visible()

    screenshot(explorer, page, artifacts, "explorer.png")
    print(f"\n{EXPLORER} ran in JupyterLab in {seconds:.0f} s")


@needs_chromium
def test_ambiguity_gallery_renders(page, lab, artifacts):
    from playwright.sync_api import expect

    explorer_run = lab.root / "explorer-run"
    finished = all((explorer_run / f / "metrics.json").is_file() for f in ("kd", "kd_ame"))
    write_notebook(ENTROPY, lab.root, {
        "smoke": not FULL_PRESET, "cache_dir": lab.cache, "device": "cpu",
        "explorer_dir": str(explorer_run) if finished else "",  # else the notebook trains the pair itself
        "run_dir": str(lab.root / "entropy-run"), "overwrite_run_dir": True})
    seconds = open_and_run_all(page, lab, ENTROPY, artifacts)
    # A static figure's output element is itself the Plotly div (jupyterlab-plotly's renderer).
    gallery = page.locator(".js-plotly-plot").filter(
        has=page.locator(".gtitle", has_text=re.compile(r"most\s+ambiguous"))).first
    expect(gallery).to_be_visible(timeout=60_000)
    expect(gallery.locator("image")).to_have_count(12, timeout=30_000)  # the thumbnails
    screenshot(gallery, page, artifacts, "ambiguity_gallery.png")
    print(f"\n{ENTROPY} ran in JupyterLab in {seconds:.0f} s")

