"""Write a figure as HTML (always) and as PNG/SVG/PDF through kaleido when a Chromium is
available. kaleido 1.x drives a Chrome/Chromium it finds itself or one named by
``BROWSER_PATH`` (Debian: ``apt-get install chromium``).

HTML figures open offline: each references ``plotly.min.js`` beside it (a relative script tag,
plotly's ``include_plotlyjs="directory"``), and ``write_plotlyjs`` writes that one shared copy
per directory, taken from the installed plotly package, instead of a CDN link or the 4.8 MB
library embedded in every file."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path

import plotly.graph_objects as go

from persona_probe.artifacts import atomic_write
from persona_probe.errors import PersonaProbeError

STATIC = ("png", "svg", "pdf")
PLOTLYJS = "plotly.min.js"   # the name plotly's include_plotlyjs="directory" script tag loads


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


@functools.cache
def plotlyjs_bundle() -> bytes:
    """The plotly.js the installed plotly package bundles (the version its figures expect)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode("utf-8")


def write_plotlyjs(directory: str | Path) -> Path:
    """``directory/plotly.min.js``, the one copy the HTML figures there load: written atomically
    where it is absent or differs from the installed plotly's (an upgrade), else left as is."""
    target = Path(directory) / PLOTLYJS
    bundle = plotlyjs_bundle()
    if not (target.is_file() and target.stat().st_size == len(bundle)
            and target.read_bytes() == bundle):
        atomic_write(target, lambda tmp: tmp.write_bytes(bundle))
    return target


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """``path`` as a full HTML page that loads the shared ``plotly.min.js`` beside it (written
    first, so a page never points at a missing library): opens with no network."""
    path = Path(path)
    page = fig.to_html(include_plotlyjs="directory", full_html=True)
    write_plotlyjs(path.parent)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def _static_formats(formats: tuple[str, ...]) -> list[str]:
    """The static formats asked for, refused when unknown."""
    static = [f for f in formats if f != "html"]
    bad = [f for f in static if f not in STATIC]
    if bad:
        raise FigureExportError(f"unknown figure formats {bad}; use html, {', '.join(STATIC)}")
    return static


def _require_static_export() -> None:
    """kaleido and a Chromium for it (named to kaleido through ``BROWSER_PATH``), or an error
    naming the fix."""
    if importlib.util.find_spec("kaleido") is None:
        raise FigureExportError("static figures need kaleido: pip install 'kaleido>=1'")
    browser = find_browser()
    if browser is None:
        raise FigureExportError("static figures need Chromium for kaleido: install it "
                                "(Debian/Ubuntu: apt-get install chromium) or set BROWSER_PATH "
                                "to a Chrome/Chromium binary; the HTML was written")
    os.environ.setdefault("BROWSER_PATH", browser)


def write_figure(fig: go.Figure, path: str | Path, formats: tuple[str, ...] = ("html",),
                 ) -> list[Path]:
    """``path`` without suffix + ``.html`` (with the shared ``plotly.min.js`` beside it) and
    each static format asked for. A static format with no kaleido or no Chromium raises with the
    fix; HTML is written first either way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    written.append(write_html(fig, path.with_suffix(".html")))
    static = _static_formats(formats)
    if not static:
        return written
    _require_static_export()
    for fmt in static:
        out = path.with_suffix(f".{fmt}")
        atomic_write(out, lambda tmp, fmt=fmt: fig.write_image(str(tmp), format=fmt))
        written.append(out)
    return written


def write_figure_or_html(fig: go.Figure, path: str | Path,
                         formats: tuple[str, ...] = ("html", "png")) -> list[Path]:
    """``write_figure``, falling back to HTML alone (with the reason printed) where kaleido or
    a Chromium is missing, or where the static render itself fails (e.g. a kaleido timeout on a
    loaded machine): what experiment scripts want, so a figure never stops a finished run."""
    html = Path(path).with_suffix(".html")
    try:
        return write_figure(fig, path, formats)
    except FigureExportError as exc:
        print(f"{Path(path).name}: HTML only ({exc})")
        return [html]
    except Exception as exc:       # inside kaleido/Chromium, after the HTML was written
        if not html.is_file():
            raise
        print(f"{Path(path).name}: HTML only (static export failed: {type(exc).__name__}: "
              f"{str(exc)[:200]}; re-draw with --figures-only)")
        return [html]


def _image_size(fig: go.Figure) -> tuple[int | None, int | None]:
    """The width and height ``fig.write_image`` would use: the figure's layout, else its
    template's, else None (plotly's default)."""
    layout = fig.to_dict().get("layout", {})
    tpl = layout.get("template", {}).get("layout", {})
    return layout.get("width") or tpl.get("width"), layout.get("height") or tpl.get("height")


def write_figures_or_html(figs: dict[str, go.Figure], out: str | Path,
                          formats: tuple[str, ...] = ("html", "png")) -> list[Path]:
    """``write_figure_or_html(fig, out / name)`` for every figure, the static images rendered
    in one kaleido browser session (``plotly.io.write_images``) instead of one Chromium start
    per image (~3 s each on 2 cores); the files are the same as figure by figure. Where kaleido
    or a Chromium is missing, or the render fails, HTML alone, with the reason printed once."""
    import tempfile

    import plotly.io as pio

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_figure(fig, out / name, ("html",))[0] for name, fig in figs.items()]
    if not figs:
        return paths
    static = _static_formats(formats)
    if not static:
        return paths
    try:
        _require_static_export()
    except FigureExportError as exc:
        print(f"{', '.join(figs)}: HTML only ({exc})")
        return paths
    jobs = [(fig, out / f"{name}.{fmt}", fmt) for fmt in static for name, fig in figs.items()]
    tmps = []
    try:
        for _, target, _ in jobs:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out)
            os.close(fd)
            tmps.append(Path(tmp))
        sizes = [_image_size(fig) for fig, _, _ in jobs]
        pio.write_images([fig for fig, _, _ in jobs], [str(t) for t in tmps],
                         format=[fmt for _, _, fmt in jobs], width=[w for w, _ in sizes],
                         height=[h for _, h in sizes])
        for tmp, (_, target, _) in zip(tmps, jobs):
            atomic_write(target, lambda t, tmp=tmp: os.replace(tmp, t))
    except Exception as exc:       # inside kaleido/Chromium: the HTML is already written
        print(f"{', '.join(figs)}: HTML only (static export failed: {type(exc).__name__}: "
              f"{str(exc)[:200]}; re-draw with --figures-only)")
        return paths
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    # the order figure by figure writing gives: each figure's HTML, then its static files
    return [p for name, html in zip(figs, paths)
            for p in (html, *(out / f"{name}.{fmt}" for fmt in static))]
