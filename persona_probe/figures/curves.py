"""Line plots with CI bands: dose-response under steering, re-alignment curves."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from persona_probe.figures.style import PALETTE, apply_style


def _band(fig: go.Figure, x: list, lo: list, hi: list, color: str, name: str) -> None:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", mode="lines",
                             line=dict(width=0),
                             fillcolor=f"rgba({r},{g},{b},0.15)", hoverinfo="skip",
                             showlegend=False, name=f"{name} CI"))


def dose_response_curves(rows: Sequence[dict], metric: str = "trait measure",
                         title: str | None = None) -> go.Figure:
    """``dose_response`` summary rows (target, kind, condition, alpha, mean, lo, hi): one line
    per target with its CI band; random controls grey and dashed."""
    fig = go.Figure()
    steer = [r for r in rows if r.get("condition", "steer") == "steer"]
    targets = list(dict.fromkeys(r["target"] for r in steer))
    k = 0
    for t in targets:
        pts = sorted((r for r in steer if r["target"] == t), key=lambda r: r["alpha"])
        x = [r["alpha"] for r in pts]
        random = pts[0].get("kind") == "random"
        color = "#888888" if random else PALETTE[k % len(PALETTE)]
        k += 0 if random else 1
        _band(fig, x, [r["lo"] for r in pts], [r["hi"] for r in pts], color, t)
        fig.add_trace(go.Scatter(x=x, y=[r["mean"] for r in pts], mode="lines+markers", name=t,
                                 line=dict(color=color, dash="dash" if random else "solid")))
    fig.update_layout(xaxis_title="steering strength α (units of mean residual norm)",
                      yaxis_title=metric)
    return apply_style(fig, title or "Dose-response under steering")


def realignment_curve(curves: dict[str, Sequence[dict]], metric: str = "trait measure",
                      title: str | None = None, reference: dict[str, float] | None = None,
                      ) -> go.Figure:
    """Points ``{step, mean, lo, hi}`` per run (``periodic_metric``'s JSON lines);
    ``reference`` levels (e.g. the base model's and the control's) as dotted lines."""
    fig = go.Figure()
    for i, (name, level) in enumerate((reference or {}).items()):
        fig.add_hline(y=level, line=dict(color="#555555", dash="dot", width=1),
                      annotation_text=name, annotation_position="top left" if i % 2 == 0
                      else "bottom left")
    for i, (name, pts) in enumerate(curves.items()):
        pts = sorted(pts, key=lambda p: p["step"])
        x = [p["step"] for p in pts]
        color = PALETTE[i % len(PALETTE)]
        _band(fig, x, [p["lo"] for p in pts], [p["hi"] for p in pts], color, name)
        fig.add_trace(go.Scatter(x=x, y=[p["mean"] for p in pts], mode="lines+markers",
                                 name=name, line=dict(color=color)))
    fig.update_layout(xaxis_title="SFT steps on good data", yaxis_title=metric)
    return apply_style(fig, title or "Re-alignment")
