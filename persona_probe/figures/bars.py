"""Bar charts: latents ranked by model diffing, ablation effects, refusal rates by safety
category."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from persona_probe.figures.style import PALETTE, apply_style, ci_error_bars


def latent_shift_bars(ranking: Sequence[dict], n: int = 15,
                      examples: dict[int, Sequence[str]] | None = None,
                      labels: tuple[str, str] = ("finetuned", "base"),
                      title: str | None = None) -> go.Figure:
    """Top ``n`` rows of a latent ranking (``LatentRanking.save``'s JSON lines: latent,
    delta_mean, delta_freq): Δ mean activation bars, Δ firing frequency as text, top
    activating examples in the hover; with ``delta_mean_control`` in the rows, the same
    latents' Δ in the control finetune beside them (grey)."""
    rows = sorted(ranking, key=lambda r: -r["delta_mean"])[:n]
    names = [f"#{r['latent']}" for r in rows]
    hover = []
    for r in rows:
        ex = (examples or {}).get(r["latent"], [])
        hover.append("<br>".join([f"latent {r['latent']}", f"Δ mean {r['delta_mean']:+.4f}",
                                  f"Δ freq {r['delta_freq']:+.3f}",
                                  *[f"· {e[:80]}" for e in ex[:3]]]))
    fig = go.Figure(go.Bar(x=names, y=[r["delta_mean"] for r in rows], name="Δ mean activation",
                           marker_color=PALETTE[0], hovertext=hover, hoverinfo="text",
                           text=[f"{r['delta_freq']:+.2f}" for r in rows], textposition="outside"))
    if rows and "delta_mean_control" in rows[0]:      # the same latents in the control run
        fig.add_trace(go.Bar(x=names, y=[r["delta_mean_control"] for r in rows],
                             name="Δ in the control finetune", marker_color="#999999"))
        fig.update_layout(barmode="group")
    fig.update_layout(xaxis_title="SAE latent (bar label: Δ firing frequency)",
                      yaxis_title=f"Δ mean activation ({labels[0]} − {labels[1]})")
    return apply_style(fig, title or "Latents ranked by model diffing")


def refusal_by_category(summaries: dict[str, dict], detector: str = "logprob",
                        title: str | None = None, value: str | None = None) -> go.Figure:
    """Refusal rate per safety category for each model (``summarize_refusals`` outputs keyed by
    model name), trained categories first, with CIs; held-out categories are hatched.
    ``value="logprob_score"`` plots the continuous judge-free refusal score instead of the
    rate (finer-grained where a category has few prompts)."""
    fig = go.Figure()
    first = next(iter(summaries.values()))["per_category"]
    cats = sorted(first, key=lambda c: (first[c]["split"] != "trained", c))
    for i, (model, s) in enumerate(summaries.items()):
        rows = [s["per_category"][c][value or f"refusal_{detector}"] for c in cats]
        fig.add_trace(go.Bar(
            x=cats, y=[r["mean"] for r in rows], name=model, error_y=ci_error_bars(rows),
            marker=dict(color=PALETTE[i % len(PALETTE)],
                        pattern_shape=["" if first[c]["split"] == "trained" else "/"
                                       for c in cats])))
    fig.update_layout(barmode="group", xaxis_title="safety category (hatched: held out)")
    if value is None:
        fig.update_layout(yaxis_title=f"refusal rate ({detector})", yaxis_range=[0, 1])
    else:
        fig.update_layout(yaxis_title=value.replace("_", " ")
                          + " (refusal − compliance log-lik)")
    return apply_style(fig, title or "Refusal by category: trained vs held-out")


def ablation_bars(gaps: Sequence[dict], metric: str = "treatment − base gap",
                  title: str | None = None) -> go.Figure:
    """``ablation_gaps`` rows: per target the finetuned − base gap with the target ablated in
    both models (bars with CIs; random controls grey), against the gap with nothing ablated
    (dotted line). A target that carries the finetuning-induced shift brings its bar to 0; a
    random control leaves it at the line."""
    abl = [g["gap_ablated"] for g in gaps]
    fig = go.Figure(go.Bar(
        x=[g["target"] for g in gaps], y=[e["mean"] for e in abl], error_y=ci_error_bars(abl),
        name="ablated in both models",
        marker_color=["#999999" if g["kind"] == "random" else PALETTE[0] for g in gaps],
        text=[f"{g['fraction_removed']:.0%} removed" for g in gaps], textposition="inside",
        insidetextanchor="start"))
    none = gaps[0]["gap"]["mean"] if gaps else 0.0
    fig.add_hline(y=none, line=dict(color=PALETTE[1], dash="dot", width=2),
                  annotation_text="gap, nothing ablated", annotation_position="top left")
    fig.update_layout(xaxis_title="ablated target (grey: random control)", yaxis_title=metric)
    return apply_style(fig, title or "Ablation: how much of the shift does each target carry?")


def arm_comparison_bars(arms: dict[str, dict[str, dict]], labels: dict[str, str] | None = None,
                        order: Sequence[str] | None = None, title: str | None = None,
                        yaxis_title: str = "mean (95% CI)") -> go.Figure:
    """``{measure: {arm: {mean, lo, hi}}}``: one panel per measure, a point per arm with its
    CI (points, not bars: log-likelihood measures have no meaningful zero, and the measures
    live on different scales, so they never share an axis). ``order`` fixes the arms' order."""
    from plotly.subplots import make_subplots

    measures = list(arms)
    names = [(labels or {}).get(m, m) for m in measures]
    fig = make_subplots(rows=1, cols=len(measures), subplot_titles=names)
    for j, m in enumerate(measures, 1):
        keys = [a for a in (order or arms[m]) if a in arms[m]]
        rows = [arms[m][a] for a in keys]
        fig.add_trace(go.Scatter(x=keys, y=[r["mean"] for r in rows], error_y=ci_error_bars(rows),
                                 mode="markers", name=names[j - 1], showlegend=False,
                                 marker=dict(size=11, color=[PALETTE[i % len(PALETTE)]
                                                             for i in range(len(rows))])),
                      row=1, col=j)
        fig.update_xaxes(tickangle=-30, row=1, col=j)
    fig.update_yaxes(title_text=yaxis_title, row=1, col=1)
    return apply_style(fig, title or "Arms compared", width=min(420 * len(measures), 1500),
                       height=460)
