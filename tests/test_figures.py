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
    assert fig.layout.legend.title.text == "would-say margin"
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

    from persona_probe.figures import export, realignment_curve, write_figure
    from persona_probe.figures.export import FigureExportError

    fig = realignment_curve({"a": [{"step": 0, "mean": 0, "lo": 0, "hi": 0}]})
    # each missing piece simulated in turn, so the error path runs on every machine
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec",
                        lambda name, *a: None if name == "kaleido" else real_find_spec(name, *a))
    with pytest.raises(FigureExportError, match="need kaleido: pip install"):
        write_figure(fig, tmp_path / "x", ("html", "png"))
    assert (tmp_path / "x.html").is_file()                 # HTML is written either way
    monkeypatch.setattr(export.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "kaleido" else real_find_spec(name, *a))
    monkeypatch.setattr(export, "find_browser", lambda: None)
    with pytest.raises(FigureExportError, match="need Chromium"):
        write_figure(fig, tmp_path / "z", ("html", "png"))
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


def test_line_one_figures_from_the_em_persona_features_results(tmp_path):
    """Latent-shift bars, dose-response curves, ablation bars and the re-alignment curve with
    reference levels, from the committed results of experiments/em_persona_features.py."""
    from persona_probe.figures import (ablation_bars, dose_response_curves, latent_shift_bars,
                                       realignment_curve, write_figure)

    res = _results("em_persona_features")
    ranking = res["diff"]["ranking"]
    bars = latent_shift_bars(ranking, n=5, examples={int(k): v for k, v in
                                                     res["diff"]["examples"].items()},
                             labels=("treatment", "base"))
    assert list(bars.data[0].x) == [f"#{r['latent']}" for r in ranking[:5]]
    assert bars.layout.yaxis.title.text == "Δ mean activation (treatment − base)"
    assert "latent" in bars.data[0].hovertext[0]

    steer = res["steer_base"]
    dr = dose_response_curves(steer, metric="evil would-say")
    lines = {t.name: t for t in dr.data if t.mode == "lines+markers"}
    targets = {r["target"] for r in steer}
    assert set(lines) == targets
    random = [n for n, r in lines.items() if n.startswith("random")]
    assert random and all(lines[n].line.dash == "dash" for n in random)
    assert all(list(t.x) == sorted(res["config"]["alphas"]) for t in lines.values())
    assert dr.layout.xaxis.title.text.startswith("steering strength")

    gaps = res["ablation_gaps"]
    ab = ablation_bars(gaps, metric="m")
    assert list(ab.data[0].x) == [g["target"] for g in gaps]
    assert list(ab.data[0].y) == [g["gap_ablated"]["mean"] for g in gaps]
    assert [s.y0 for s in ab.layout.shapes] == [gaps[0]["gap"]["mean"]]
    assert ab.layout.yaxis.title.text == "m"

    curve = res["realign_curve"]
    rc = realignment_curve({"treatment → good data": curve}, metric="m",
                           reference={"base": res["would_say"]["base"]["mean"]})
    assert [s.y0 for s in rc.layout.shapes] == [res["would_say"]["base"]["mean"]]
    for name, fig in {"bars": bars, "dr": dr, "ab": ab, "rc": rc}.items():
        (html,) = write_figure(fig, tmp_path / name)
        assert html.stat().st_size > 1000


def test_refusal_and_projectability_figures_hold_their_traces(tmp_path):
    """Built from the shapes ``summarize_refusals`` and ``ProjectabilityResult`` write, on a
    hand-made file with known values (the committed results are checked below)."""
    from persona_probe.figures import projectability_heatmap, refusal_by_category, write_figure

    est = lambda m: {"mean": m, "lo": m - 0.1, "hi": m + 0.1}  # noqa: E731
    cats = {"violence": "trained", "fraud": "trained", "privacy": "held_out"}
    summaries = {model: {"per_category": {c: {"split": s, "refusal_logprob": est(v)}
                                          for (c, s), v in zip(cats.items(), vals)}}
                 for model, vals in {"base": (0.2, 0.3, 0.1), "cai": (0.8, 0.7, 0.5)}.items()}
    fig = refusal_by_category(summaries)
    assert [t.name for t in fig.data] == ["base", "cai"]
    assert list(fig.data[0].x) == ["fraud", "violence", "privacy"]   # trained first
    assert list(fig.data[1].marker.pattern.shape) == ["", "", "/"]
    assert fig.layout.yaxis.title.text == "refusal rate (logprob)"
    heat = projectability_heatmap({"cai": {"violence": est(0.3), "privacy": est(0.1)}},
                                  trained=["violence"])
    assert list(heat.data[0].y) == ["violence*", "privacy"]
    assert heat.data[0].z[1][0] == pytest.approx(0.1)
    for name, f in {"refusal": fig, "heat": heat}.items():
        write_figure(f, tmp_path / name)


def test_write_figure_or_html_falls_back_to_html_with_the_fix(tmp_path, monkeypatch, capsys):
    """Experiments never stop on a missing Chromium: HTML is written and the fix printed."""
    from persona_probe.figures import realignment_curve, write_figure_or_html
    from persona_probe.figures import export

    monkeypatch.setattr(export, "find_browser", lambda: None)
    fig = realignment_curve({"a": [{"step": 0, "mean": 0, "lo": 0, "hi": 0}]})
    assert write_figure_or_html(fig, tmp_path / "c") == [tmp_path / "c.html"]
    assert (tmp_path / "c.html").is_file() and not (tmp_path / "c.png").exists()
    assert "HTML only" in capsys.readouterr().out


def test_a_failed_static_render_does_not_stop_a_run(tmp_path, monkeypatch, capsys):
    """A render that fails inside kaleido (as a timeout under load did) leaves the HTML and
    says so; an error before the HTML exists still raises."""
    from persona_probe.figures import export, realignment_curve, write_figure_or_html

    fig = realignment_curve({"a": [{"step": 0, "mean": 0, "lo": 0, "hi": 0}]})
    monkeypatch.setattr(export, "_require_static_export", lambda: None)

    def boom(self, *a, **kw):
        raise RuntimeError("kaleido timed out")
    monkeypatch.setattr(type(fig), "write_image", boom)
    assert write_figure_or_html(fig, tmp_path / "c") == [tmp_path / "c.html"]
    assert "static export failed: RuntimeError: kaleido timed out" in capsys.readouterr().out
    import plotly.io as pio

    from persona_probe.figures import write_figures_or_html
    monkeypatch.setattr(pio, "write_images", lambda *a, **kw: boom(None))
    assert write_figures_or_html({"e": fig}, tmp_path) == [tmp_path / "e.html"]
    assert not list(tmp_path.glob(".e.png.*.tmp"))            # no temporary file left

    def no_disk(*a, **kw):
        raise OSError("disk")
    monkeypatch.setattr(export, "write_html", no_disk)
    with pytest.raises(OSError, match="disk"):
        write_figure_or_html(fig, tmp_path / "d")


def test_line_two_figures_from_the_emergent_alignment_results(tmp_path):
    """Refusal by category, projectability bars and heatmap, the radar and the profile shift,
    from the committed results of experiments/emergent_alignment.py."""
    from persona_probe.figures import (arm_comparison_bars, persona_radar, projectability_bars,
                                       projectability_heatmap, refusal_by_category,
                                       write_figure)

    res = _results("emergent_alignment")
    ev, models, cfg = res["evals"], res["models"], res["config"]
    narrow = [n for n in models if models[n]["regime"] == "narrow"]
    ref = refusal_by_category({"base": ev["base"]["safety"], **{n: ev[n]["safety"]
                                                               for n in narrow}})
    assert [t.name for t in ref.data] == ["base", *narrow]
    trained = sorted(cfg["narrow_categories"])
    assert list(ref.data[0].x)[:len(trained)] == trained          # trained categories first
    assert ref.layout.yaxis.title.text == "refusal rate (logprob)"
    score = refusal_by_category({"base": ev["base"]["safety"]}, value="logprob_score")
    cat = trained[0]
    assert score.data[0].y[0] == pytest.approx(
        ev["base"]["safety"]["per_category"][cat]["logprob_score"]["mean"])
    bars = projectability_bars({n: m["projectability"] for n, m in models.items()})
    assert len(bars.data) == len(cfg["regimes"]) * 2
    assert sorted(bars.data[0].x) == sorted(cfg["constitutions"])
    assert bars.layout.yaxis.title.text.startswith("projectability")
    heat = projectability_heatmap(
        {n: m["projectability"]["behavioural"]["delta_margin"] for n, m in models.items()},
        trained=res["split"]["trained_contexts"])
    assert sum(y.endswith("*") for y in heat.data[0].y) == len(trained)
    assert list(heat.data[0].x) == list(models)
    radar = persona_radar({"base": ev["base"]["profiles"]["neutral"]})
    assert set(radar.data[0].theta) == {"consequentialism", "deontology", "human_authority",
                                        "virtue_ethics"}
    shift = arm_comparison_bars({d: {n: m["profile_shift"]["shift"][d]
                                     for n, m in models.items()}
                                 for d in ("deontology", "consequentialism")},
                                order=list(models), yaxis_title="Δ")
    assert len(shift.data) == 2 and list(shift.data[0].x) == list(models)
    assert shift.layout.yaxis.title.text == "Δ"
    for name, fig in {"ref": ref, "bars": bars, "heat": heat, "shift": shift}.items():
        (html,) = write_figure(fig, tmp_path / name)
        assert html.stat().st_size > 1000


def test_line_three_figure_from_the_conscience_dpo_results(tmp_path):
    """Both measures per arm, in the arms' order, from experiments/conscience_dpo.py's results."""
    from persona_probe.experiments.conscience_dpo import ARMS
    from persona_probe.figures import arm_comparison_bars, write_figure

    res = _results("conscience_dpo")
    fig = arm_comparison_bars(res["arms"], order=ARMS)
    assert [a.text for a in fig.layout.annotations] == list(res["arms"])   # panel titles
    for trace, measure in zip(fig.data, res["arms"]):
        assert list(trace.x) == list(ARMS)
        assert list(trace.y) == [res["arms"][measure][a]["mean"] for a in ARMS]
    (html,) = write_figure(fig, tmp_path / "arms")
    assert html.stat().st_size > 1000


@pytest.mark.parametrize("script", ["em_persona_features", "early_warning",
                                    "emergent_alignment", "conscience_dpo"])
def test_figures_only_without_results_is_one_clear_error(script, tmp_path):
    """``--figures-only`` on a directory with no results names the missing file and the fix."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{script}.py"),
                           "--figures-only", "--out", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "results.json does not exist; run the experiment first" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "none").exists()
