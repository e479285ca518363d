"""Write a figure as HTML (always) and as PNG/SVG/PDF through kaleido when a Chromium is
available. kaleido 1.x drives a Chrome/Chromium it finds itself or one named by
``BROWSER_PATH`` (Debian: ``apt-get install chromium``)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import plotly.graph_objects as go

from persona_probe.artifacts import atomic_write
from persona_probe.errors import PersonaProbeError

STATIC = ("png", "svg", "pdf")


class FigureExportError(PersonaProbeError):
    pass


def find_browser() -> str | None:
    """A Chromium/Chrome binary for kaleido: ``$BROWSER_PATH`` or one on ``PATH``."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                 "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_figure(fig: go.Figure, path: str | Path, formats: tuple[str, ...] = ("html",),
                 ) -> list[Path]:
    """``path`` without suffix + ``.html`` and each static format asked for. A static format
    with no kaleido or no Chromium raises with the fix; HTML is written first either way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    html = path.with_suffix(".html")
    atomic_write(html, lambda tmp: fig.write_html(tmp, include_plotlyjs="cdn", full_html=True))
    written.append(html)
    static = [f for f in formats if f != "html"]
    bad = [f for f in static if f not in STATIC]
    if bad:
        raise FigureExportError(f"unknown figure formats {bad}; use html, {', '.join(STATIC)}")
    if not static:
        return written
    if importlib.util.find_spec("kaleido") is None:
        raise FigureExportError("static figures need kaleido: pip install 'kaleido>=1'")
    browser = find_browser()
    if browser is None:
        raise FigureExportError("static figures need Chromium for kaleido: install it "
                                "(Debian/Ubuntu: apt-get install chromium) or set BROWSER_PATH "
                                "to a Chrome/Chromium binary; the HTML was written")
    os.environ.setdefault("BROWSER_PATH", browser)
    for fmt in static:
        out = path.with_suffix(f".{fmt}")
        atomic_write(out, lambda tmp, fmt=fmt: fig.write_image(str(tmp), format=fmt))
        written.append(out)
    return written


def write_figure_or_html(fig: go.Figure, path: str | Path,
                         formats: tuple[str, ...] = ("html", "png")) -> list[Path]:
    """``write_figure``, falling back to HTML alone (with the fix printed) where kaleido or a
    Chromium is missing: what experiment scripts want, so a figure never stops a run."""
    try:
        return write_figure(fig, path, formats)
    except FigureExportError as exc:
        print(f"{Path(path).name}: HTML only ({exc})")
        return [Path(path).with_suffix(".html")]
