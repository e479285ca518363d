"""The early-warning timeline: the monitored statistic per check with its CI band, the alarm
threshold implied by the rule, alarm markers, and (optionally) the behavioural rate on a second
axis. Re-drawing from the events file shows a running job's progress."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from persona_probe.figures.style import PALETTE, apply_style


def early_warning_timeline(events: Sequence[dict] | str | Path, target: str | None = None,
                           behaviour: Sequence[tuple[int, float]] | None = None,
                           behaviour_threshold: float | None = None,
                           behaviour_label: str = "behavioural rate",
                           title: str | None = None) -> go.Figure:
    """From monitor events (a list or an ``events.jsonl`` path)."""
    if not isinstance(events, (list, tuple)):
        from persona_probe.monitor import read_events

        events = read_events(events)
    checks = [e for e in events if e.get("event") == "check"]
    keys = sorted({k.split("/")[1] for e in checks for k in e if k.startswith("persona/")})
    if target is None:
        if not keys:
            raise ValueError("no check events with persona/ statistics")
        target = keys[0]
    stat = next((k for e in checks for k in e if k.startswith(f"persona/{target}/")
                 and k.rsplit("/", 1)[1] in ("projection", "activation")), None)
    if stat is None:
        raise ValueError(f"no statistic for target {target!r}; targets here: {keys}")
    rows = [e for e in checks if stat in e]
    steps = [e["step"] for e in rows]
    y = [e[stat] for e in rows]
    se = [e.get(stat + "_se", 0.0) for e in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps + steps[::-1],
                             y=[a + 1.96 * s for a, s in zip(y, se)]
                             + [a - 1.96 * s for a, s in zip(y, se)][::-1],
                             fill="toself", mode="lines", line=dict(width=0),
                             fillcolor="rgba(0,114,178,0.15)",
                             name="95% CI of the mean over probe items", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=steps, y=y, mode="lines+markers", name=stat.rsplit("/", 1)[1],
                             line=dict(color=PALETTE[0], width=2)))
    thr = [(e["step"], e[f"persona/{target}/threshold"]) for e in rows
           if f"persona/{target}/threshold" in e]
    if thr:
        fig.add_trace(go.Scatter(x=[s for s, _ in thr], y=[t for _, t in thr], mode="lines",
                                 name="alarm threshold", line=dict(color=PALETTE[1],
                                                                   dash="dash")))
    for e in events:
        if e.get("event") == "alarm" and e.get("target") == target:
            fig.add_vline(x=e["step"], line=dict(color=PALETTE[1], width=2),
                          annotation_text=f"alarm @ {e['step']}", annotation_position="top left")
        if e.get("event") == "error":
            fig.add_vline(x=e["step"], line=dict(color="#999999", dash="dot"),
                          annotation_text="monitor error")
    if behaviour:
        bs, br = zip(*sorted(behaviour))
        fig.add_trace(go.Scatter(x=list(bs), y=list(br), mode="lines+markers",
                                 name=behaviour_label, yaxis="y2",
                                 line=dict(color=PALETTE[2], width=2)))
        if behaviour_threshold is not None:
            fig.add_trace(go.Scatter(x=[min(bs), max(bs)], y=[behaviour_threshold] * 2,
                                     mode="lines", yaxis="y2", name="behavioural threshold",
                                     line=dict(color=PALETTE[2], dash="dot")))
        fig.update_layout(yaxis2=dict(title=behaviour_label, overlaying="y", side="right"))
    fig.update_layout(xaxis_title="training step", yaxis_title=f"{target} {stat.rsplit('/', 1)[1]}")
    fig = apply_style(fig, title or f"Early warning: {target}", height=480)
    # below the plot, so it never covers the right-hand axis
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.2, yanchor="top"),
                      margin=dict(b=130, r=80))
    return fig
