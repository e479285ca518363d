"""Ethical persona figures: the diagnostic profile as a radar per model, projectability as a
heatmap of persona-margin shifts (context × model)."""

from __future__ import annotations

import plotly.graph_objects as go

from persona_probe.figures.style import PALETTE, apply_style, ci_error_bars


def persona_radar(profiles: dict[str, dict[str, dict]], title: str | None = None,
                  score: str = "score") -> go.Figure:
    """``{model: {dimension: {mean, lo, hi}}}`` (``run_diagnostic``'s profiles for one
    context); the CI is in the hover, the line is the mean."""
    fig = go.Figure()
    for i, (model, prof) in enumerate(profiles.items()):
        dims = list(prof)
        r = [prof[d]["mean"] for d in dims]
        hover = [f"{d}: {prof[d]['mean']:+.3f} [{prof[d]['lo']:+.3f}, {prof[d]['hi']:+.3f}]"
                 for d in dims]
        fig.add_trace(go.Scatterpolar(r=r + r[:1], theta=dims + dims[:1], name=model,
                                      line=dict(color=PALETTE[i % len(PALETTE)]),
                                      hovertext=hover + hover[:1], hoverinfo="text"))
    fig.update_layout(legend_title_text=score)    # a radial-axis title would sit on the plot
    fig = apply_style(fig, title or "Ethical persona profile", width=720, height=520)
    # legend below, polar area inset: room for the angular labels
    fig.update_layout(polar=dict(domain=dict(x=[0.18, 0.82], y=[0.12, 0.95])),
                      legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.02))
    return fig


def projectability_heatmap(delta_margins: dict[str, dict[str, dict]],
                           trained: list[str] | None = None,
                           title: str | None = None) -> go.Figure:
    """``{model: {context: {mean, lo, hi}}}`` of Δm_k (``ProjectabilityResult.delta_margin``);
    trained contexts are marked with a ``*``."""
    models = list(delta_margins)
    contexts = list(dict.fromkeys(c for m in models for c in delta_margins[m]))
    labels = [f"{c}*" if trained and c in trained else c for c in contexts]
    z = [[delta_margins[m].get(c, {}).get("mean") for m in models] for c in contexts]
    text = [[(f"{e['mean']:+.3f}<br>[{e['lo']:+.2f}, {e['hi']:+.2f}]" if e else "")
             for e in (delta_margins[m].get(c) for m in models)] for c in contexts]
    fig = go.Figure(go.Heatmap(z=z, x=models, y=labels, text=text, texttemplate="%{text}",
                               colorscale="RdBu", zmid=0, colorbar=dict(title="Δ margin")))
    fig.update_layout(xaxis_title="model", yaxis_title="context (* trained)")
    return apply_style(fig, title or "Projectability: persona margin shift by context")


def projectability_bars(results: dict[str, dict[str, dict]], title: str | None = None
                        ) -> go.Figure:
    """``{model: {"behavioural": ProjectabilityResult dict, "representational": ...}}`` with
    models named ``<constitution>-<regime>``: projectability per constitution, one bar per
    regime and kind, with CIs (1 = the persona shift carries fully to held-out contexts)."""
    fig = go.Figure()
    groups = list(dict.fromkeys(m.rsplit("-", 1)[0] for m in results))
    regimes = list(dict.fromkeys(m.rsplit("-", 1)[1] for m in results))
    kinds = list(dict.fromkeys(k for r in results.values() for k in r))
    for i, (regime, kind) in enumerate((r, k) for k in kinds for r in regimes):
        rows = [results.get(f"{g}-{regime}", {}).get(kind, {}).get("projectability")
                for g in groups]
        fig.add_trace(go.Bar(
            x=groups, y=[e["mean"] if e else None for e in rows], name=f"{regime}, {kind}",
            marker=dict(color=PALETTE[regimes.index(regime) % len(PALETTE)],
                        pattern_shape="" if kind == kinds[0] else "/"),
            error_y=ci_error_bars(rows)))
    fig.add_hline(y=1.0, line=dict(color="#666666", dash="dot"),
                  annotation_text="carries fully", annotation_position="top left")
    fig.update_layout(barmode="group", xaxis_title="constitution",
                      yaxis_title="projectability (held-out / trained Δ margin)")
    return apply_style(fig, title or "Projectability: narrow vs broad CAI")
