"""Figure builders are pure functions of saved results: built here from the real results files
the experiments committed under figures/, checked for their traces and axis titles, and written
as HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _results(name: str) -> dict:
    return json.loads((ROOT / "figures" / name / "results.json").read_text())


def test_persona_radar_from_the_diagnostic_stances_results(tmp_path):
    from persona_probe.figures import persona_radar, write_figure

    profiles = _results("diagnostic_stances")["results"]["team/would_say"]["profiles"]
    fig = persona_radar(profiles, score="would-say margin")
    assert [t.name for t in fig.data] == list(profiles)
    dims = list(profiles["neutral"])
    assert list(fig.data[0].theta) == dims + dims[:1]
    assert fig.data[0].r[1] == pytest.approx(profiles["neutral"][dims[1]]["mean"])
    assert fig.layout.polar.radialaxis.title.text == "would-say margin"
    (html,) = write_figure(fig, tmp_path / "radar")
    assert "stance:deontology" in html.read_text()


def test_realignment_curve_from_the_em_induction_results(tmp_path):
    from persona_probe.figures import realignment_curve, write_figure

    curve = _results("em_induction")["results"]["realign_curve"]
    fig = realignment_curve({"insecure → secure SFT": curve}, metric="evil would-say")
    line = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(line) == 1 and list(line[0].x) == [p["step"] for p in curve]
    assert fig.layout.xaxis.title.text == "SFT steps on good data"
    assert fig.layout.yaxis.title.text == "evil would-say"
    write_figure(fig, tmp_path / "realign")


def test_static_export_without_kaleido_or_chromium_names_the_fix(tmp_path, monkeypatch):
    import importlib.util

    from persona_probe.figures import realignment_curve, write_figure
    from persona_probe.figures.export import FigureExportError, find_browser

    fig = realignment_curve({"a": [{"step": 0, "mean": 0, "lo": 0, "hi": 0}]})
    if importlib.util.find_spec("kaleido") is not None and find_browser() is not None:
        pytest.skip("kaleido and Chromium are installed here; test_static_export_writes_png "
                    "covers them")
    with pytest.raises(FigureExportError, match="kaleido|Chromium"):
        write_figure(fig, tmp_path / "x", ("html", "png"))
    assert (tmp_path / "x.html").is_file()                 # HTML is written either way
    with pytest.raises(FigureExportError, match="unknown figure formats"):
        write_figure(fig, tmp_path / "y", ("gif",))


def test_static_export_writes_png(tmp_path):
    import importlib.util

    from persona_probe.figures import realignment_curve, write_figure
    from persona_probe.figures.export import find_browser

    if importlib.util.find_spec("kaleido") is None or find_browser() is None:
        pytest.skip("static export needs kaleido and Chromium (pip install kaleido; apt-get "
                    "install chromium); the error path is tested instead")
    fig = realignment_curve({"a": [{"step": 0, "mean": 0, "lo": -1, "hi": 1},
                                   {"step": 10, "mean": 1, "lo": 0, "hi": 2}]})
    html, png = write_figure(fig, tmp_path / "curve", ("html", "png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
