"""Figures as files: self-contained HTML, and PNG through a local Chromium (no browser download)."""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path


def save_html(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a standalone HTML page with plotly.js inlined (works without a network)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    os.replace(tmp, path)
    return path


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome for PNG export: ``$BROWSER_PATH``, else the first on ``PATH``."""
    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def save_png(fig, path: str | os.PathLike, scale: float = 2.0) -> Path:
    """Write ``fig`` as a PNG with kaleido (>= 1), which renders it in a headless Chromium.

    The browser is ``$BROWSER_PATH`` or the first ``chromium`` / ``google-chrome`` on ``PATH``
    (on Debian: ``apt-get install chromium``). Raises ``ImportError`` without kaleido >= 1 and
    ``RuntimeError`` without a browser; :func:`save_html` needs neither.
    """
    try:
        import kaleido  # noqa: F401
        major = int(metadata.version("kaleido").split(".")[0])
    except ImportError as err:
        raise ImportError("save_png needs the package 'kaleido' (>= 1) and a Chromium: pip install 'kaleido>=1' "
                          "and install Debian's chromium (save_html works without either)") from err
    if major < 1:
        raise ImportError(f"save_png needs kaleido >= 1 (which uses a system Chromium); found "
                          f"{metadata.version('kaleido')}: pip install -U 'kaleido>=1'")
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("save_png found no Chromium: install Debian's chromium (apt-get install chromium) "
                           "or set BROWSER_PATH to a Chrome/Chromium executable")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    previous = os.environ.get("BROWSER_PATH")
    os.environ["BROWSER_PATH"] = browser
    try:
        for attempt in range(2):
            try:
                fig.write_image(str(tmp), format="png", scale=scale)
                break
            except Exception:  # noqa: BLE001
                # Seen once (a CI run while another Chromium was busy on the machine): kaleido evaluated its
                # script before its page had loaded ("kaleido_scopes is not defined"); so one more try.
                if attempt:
                    raise
    finally:
        if previous is None:
            os.environ.pop("BROWSER_PATH", None)
    os.replace(tmp, path)
    return path
