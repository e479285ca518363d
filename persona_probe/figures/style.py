"""Paper-ready defaults: the Okabe–Ito colour-blind-safe palette, a plain white template,
and font sizes that survive a two-column PDF."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
           "#000000"]
FONT = dict(family="Helvetica, Arial, sans-serif", size=14, color="#222222")


def apply_style(fig: go.Figure, title: str | None = None, width: int = 760,
                height: int = 440) -> go.Figure:
    fig.update_layout(template="simple_white", font=FONT, colorway=PALETTE, width=width,
                      height=height, margin=dict(l=70, r=30, t=60 if title else 30, b=60),
                      legend=dict(bgcolor="rgba(255,255,255,0.8)"),
                      title=dict(text=title, x=0.02) if title else None)
    return fig


def ci_error_bars(rows: Sequence[dict | None]) -> dict:
    """Plotly ``error_y`` from ``{mean, lo, hi}`` rows (asymmetric CIs); a missing row (None)
    gets no bar."""
    return dict(type="data", symmetric=False,
                array=[r["hi"] - r["mean"] if r else 0 for r in rows],
                arrayminus=[r["mean"] - r["lo"] if r else 0 for r in rows])
