"""HTML figures open with no network: each page loads the one ``plotly.min.js`` written beside it
(from the installed plotly package), never a CDN. One figure of every builder, on small inputs
shaped like the experiments' results, is written through the shared export helper, opened in
headless Chromium with the network cut off, and its screenshot checked for a drawn chart; a CDN
page under the same flags stays blank, which shows the network really is cut off and the blank
check can tell."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest


def _est(m: float, w: float = 0.1) -> dict:
    return {"mean": m, "lo": m - w, "hi": m + w}


def _figures() -> dict:
    """One figure per builder in ``persona_probe.figures``."""
    from persona_probe import figures as F

    ranking = [{"latent": i, "delta_mean": 1.0 / (i + 1), "delta_freq": 0.01 * i,
                "delta_mean_control": 0.1 / (i + 1)} for i in range(8)]
    steer = [{"target": t, "kind": k, "condition": "steer", "alpha": a, **_est(s * a, 0.2)}
             for t, k, s in (("persona vector", "vector", 1.0), ("latent #3", "latent", 0.6),
                             ("random-0", "random", 0.05)) for a in (0.0, 2.0, 4.0, 8.0)]
    gaps = [{"target": t, "kind": k, "gap": _est(0.5), "gap_ablated": _est(g),
             "fraction_removed": 1 - g / 0.5}
            for t, k, g in (("latent #3", "latent", 0.1), ("random-0", "random", 0.48))]
    cats = {"violence": "trained", "fraud": "trained", "privacy": "held_out"}
    safety = {m: {"per_category": {c: {"split": s, "refusal_logprob": _est(v)}
                                   for (c, s), v in zip(cats.items(), vals)}}
              for m, vals in {"base": (0.2, 0.3, 0.1), "cai": (0.8, 0.7, 0.5)}.items()}
    dims = ("consequentialism", "deontology", "human_authority", "virtue_ethics")
    profiles = {m: {d: _est(s * (i + 1) / 4) for i, d in enumerate(dims)}
                for m, s in (("base", 0.5), ("cai", 1.0))}
    proj = {f"{c}-{r}": {k: {"projectability": _est(p)}
                         for k, p in (("behavioural", v), ("representational", v / 2))}
            for c in ("deontology", "virtue_ethics") for r, v in (("narrow", 0.4), ("broad", 0.9))}
    events = [{"event": "check", "step": s, "persona/evil@15/projection": -12 + 0.3 * s,
               "persona/evil@15/projection_se": 0.5, "persona/evil@15/threshold": -11.0}
              for s in range(0, 18, 2)] + [{"event": "alarm", "step": 8, "target": "evil@15"}]
    return {
        "latent_shift_bars": F.latent_shift_bars(ranking, n=6, labels=("treatment", "base")),
        "dose_response_curves": F.dose_response_curves(steer, metric="evil would-say"),
        "ablation_bars": F.ablation_bars(gaps, metric="evil would-say gap"),
        "realignment_curve": F.realignment_curve(
            {"treatment → good data": [{"step": s, **_est(1 - s / 20)} for s in (0, 5, 10, 20)]},
            reference={"base": 0.1}),
        "refusal_by_category": F.refusal_by_category(safety),
        "arm_comparison_bars": F.arm_comparison_bars(
            {"would-say": {a: _est(v) for a, v in (("base", 0.1), ("em", 0.8), ("dpo", 0.3))},
             "refusal": {a: _est(v) for a, v in (("base", 0.9), ("em", 0.2), ("dpo", 0.7))}},
            order=["base", "em", "dpo"]),
        "persona_radar": F.persona_radar(profiles),
        "projectability_heatmap": F.projectability_heatmap(
            {"cai": {"violence": _est(0.3), "privacy": _est(0.1)},
             "base": {"violence": _est(0.0), "privacy": _est(-0.05)}}, trained=["violence"]),
        "projectability_bars": F.projectability_bars(proj),
        "early_warning_timeline": F.early_warning_timeline(
            events, behaviour=[(s, s / 20) for s in range(0, 18, 4)], behaviour_threshold=0.5),
    }


def _png_pixels(path: Path) -> np.ndarray:
    """An 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) as ``(h, w, channels)``;
    filters undone along anti-diagonals, whose pixels depend only on earlier ones."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    ch = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * ch)
    ftype, filt = raw[:, 0], raw[:, 1:].reshape(h, w, ch).astype(np.int16)
    out = np.zeros((h + 1, w + 1, ch), np.int16)      # a zero row and column before the image
    for d in range(h + w - 1):
        r = np.arange(max(0, d - w + 1), min(h, d + 1))
        x = d - r
        a, b, c = out[r + 1, x], out[r, x + 1], out[r, x]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        t = ftype[r][:, None]
        pred = np.select([t == 1, t == 2, t == 3, t == 4], [a, b, (a + b) // 2, paeth], 0)
        out[r + 1, x + 1] = (filt[r, x] + pred) % 256
    return out[1:, 1:, :3].astype(np.uint8)


def _screenshot(browser: str, html: Path, tmp: Path) -> np.ndarray:
    """``html`` rendered by headless Chromium with every host unresolvable and no route out."""
    png = tmp / f"{html.stem}.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--proxy-server=http://127.0.0.1:9", f"--user-data-dir={tmp / f'profile-{html.stem}'}",
           f"--screenshot={png}", "--window-size=800,600", "--virtual-time-budget=5000",
           html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert png.is_file(), (f"Chromium wrote no screenshot (rc {proc.returncode}): "
                           f"{proc.stderr[-800:]}")
    return _png_pixels(png)


def _drawn(pixels: np.ndarray) -> float:
    """The share of pixels that are not white."""
    return float((pixels.min(axis=2) < 245).mean())


def test_plotlyjs_is_one_shared_copy_written_only_when_absent_or_different(tmp_path):
    from persona_probe.figures import realignment_curve, write_figure
    from persona_probe.figures.export import PLOTLYJS, plotlyjs_bundle

    fig = realignment_curve({"a": [{"step": 0, "mean": 0, "lo": -1, "hi": 1}]})
    write_figure(fig, tmp_path / "one")
    js = tmp_path / PLOTLYJS
    assert js.read_bytes() == plotlyjs_bundle()
    inode = js.stat().st_ino
    write_figure(fig, tmp_path / "two")
    assert js.stat().st_ino == inode                       # same content: left alone
    js.write_text("stale plotly.js from an older plotly")
    write_figure(fig, tmp_path / "three")
    assert js.read_bytes() == plotlyjs_bundle()            # different: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["one.html", "two.html", "three.html", PLOTLYJS])   # no temporary files left behind
    for page in tmp_path.glob("*.html"):
        text = page.read_text()
        assert "cdn.plot.ly" not in text and len(text) < 200_000   # not embedded either
        assert re.findall(r'<script[^>]*\ssrc="([^"]+)"', text) == [PLOTLYJS]


def test_every_builder_renders_offline_in_headless_chromium(tmp_path):
    from persona_probe.figures import write_figure
    from persona_probe.figures.export import PLOTLYJS, find_browser

    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome on PATH or in BROWSER_PATH (Debian: apt-get install "
                    "chromium); the offline rendering check needs one")
    out = tmp_path / "figs"
    figs = _figures()
    pages = [write_figure(fig, out / name)[0] for name, fig in figs.items()]
    assert len(pages) == len(figs) == 10
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in pages] + [PLOTLYJS])
    for page in pages:
        text = page.read_text()
        assert "cdn.plot.ly" not in text
        assert re.findall(r'<script[^>]*\ssrc="([^"]+)"', text) == [PLOTLYJS]

    # control: the same figure loading plotly.js from the CDN stays blank under these flags
    ctrl = tmp_path / "cdn" / "cdn.html"
    ctrl.parent.mkdir()
    figs["realignment_curve"].write_html(ctrl, include_plotlyjs="cdn", full_html=True)
    blank = _drawn(_screenshot(browser, ctrl, tmp_path))
    assert blank < 0.001, f"a CDN page drew {blank:.2%} of its pixels: is the network cut off?"

    drawn = {p.stem: _drawn(_screenshot(browser, p, tmp_path)) for p in pages}
    assert all(v > 0.01 for v in drawn.values()), f"blank figures offline: {drawn}"

