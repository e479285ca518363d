"""Plotly figure builders: pure functions from saved results (JSON lines) to ``go.Figure``,
with paper-ready defaults (``style``) and one writer for HTML and static formats (``export``;
HTML loads the ``plotly.min.js`` written beside it, so figures open offline)."""

from persona_probe.figures.bars import (ablation_bars, arm_comparison_bars, latent_shift_bars,
                                        refusal_by_category)
from persona_probe.figures.curves import dose_response_curves, realignment_curve
from persona_probe.figures.export import (write_figure, write_figure_or_html,
                                          write_figures_or_html, write_html,
                                          write_plotlyjs)
from persona_probe.figures.persona import (persona_radar, projectability_bars,
                                           projectability_heatmap)
from persona_probe.figures.style import PALETTE, apply_style
from persona_probe.figures.timeline import early_warning_timeline

__all__ = ["PALETTE", "ablation_bars", "arm_comparison_bars", "apply_style", "dose_response_curves",
           "early_warning_timeline", "latent_shift_bars", "persona_radar",
           "projectability_bars", "projectability_heatmap", "realignment_curve", "refusal_by_category", "write_figure",
           "write_figure_or_html", "write_figures_or_html", "write_html", "write_plotlyjs"]
