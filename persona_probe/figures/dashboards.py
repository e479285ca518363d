"""Feature dashboards: one HTML page per SAE latent of a ranked list, and an index.

Two steps, so the pages can be rebuilt (restyled, moved, reviewed) without the model:

    from persona_probe.latent_dashboards import (compute_latent_dashboard_data,
                                                 save_dashboard_data)
    data = compute_latent_dashboard_data(subject, sae, [12, 34], items, trait=load_trait("evil"))
    save_dashboard_data(data, "runs/dash")                 # runs/dash/dashboard.json
    write_latent_dashboards("runs/dash/dashboard.json", "runs/dash")   # index.html + pages

Per latent the data holds:

* **top activating examples**: the ``top_k`` tokens where the latent fires most over the items
  (at most one per item), each with the tokens ``context`` positions either side and every
  token's activation, for highlighting;
* **activation histogram** of its non-zero activations over all the items' tokens (``counts``
  sum to ``n_nonzero``), with the firing frequency and the largest activation;
* **logit effects**: the tokens whose logits the latent's decoder direction raises and lowers
  most through the *direct path* to the unembedding (see ``logit_effects``);
* **steering effect** (with a trait): the would-say trait measure (``likelihood.trait_scores``)
  on a few questions while the latent's decoder direction is added at its hook,
  h ← h + α·r̄_L·ŵ (``interventions.steer`` with ``SAELatents``), at each α; α = 0 is the
  unsteered model and is measured once for all latents.

Activations are in the SAE's own units (what ``sae.encode`` returns; for the shipped TopK SAE,
rescaled by the decoder norm). Token highlighting colours each token's background by its
activation over the latent's largest activation on the items, so the examples of one latent
compare on one scale.

Why plotly and not ``sae-dashboard`` (the dashboard package of the sae-lens ecosystem,
0.8.0): it does not fit the pinned environment. Its metadata pins ``transformers<4.57``,
``transformer-lens<3``, ``jaxtyping<0.3``, ``safetensors<0.5``, ``typer<0.13`` and
``datasets<4`` (the project pins transformers 5.x, and has transformer-lens 3.x, jaxtyping 0.3,
safetensors 0.8, typer 0.29, datasets 5), so a normal install would downgrade six packages.
Installed with ``--no-deps`` (plus its own small dependencies) it imports, but its runner takes
a TransformerLens ``HookedSAETransformer``, which TransformerLens builds only for models in its
registry: the embedded SmolLM2-135M-Instruct is not one, and this project's subjects are plain
Hugging Face models hooked with torch hooks. Its pages also load d3 and plotly from CDNs (no
offline viewing), and it has no steering panel. So the data comes from this project's own
capture, SAE, logit and steering code, and the charts from plotly written the way every
figure here is (``export``): one shared ``plotly.min.js`` per directory, no CDN.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from persona_probe.artifacts import atomic_write, read_json
from persona_probe.figures.export import PLOTLYJS, write_plotlyjs
from persona_probe.figures.style import PALETTE, apply_style
from persona_probe.latent_dashboards import DATA_FILE, SCHEMA, DashboardError

ACT_RGB = (213, 94, 0)      # PALETTE[1], the highlight colour of an active token


# --- HTML ------------------------------------------------------------------------------------

CSS = """
body { font-family: Helvetica, Arial, sans-serif; color: #222; margin: 24px; max-width: 1100px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; } td, th { padding: 4px 8px; border-bottom: 1px solid #ddd;
  text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.tokens { font-family: Menlo, Consolas, monospace; font-size: 13px; white-space: pre-wrap;
  line-height: 1.7; }
.tokens span { border-radius: 2px; }
.tokens span.peak { outline: 2px solid #0072B2; }
.meta { color: #555; font-size: 13px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
"""




def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _token_label(token: str) -> str:
    """A token for chart labels: quoted (leading spaces show), entities escaped (plotly reads
    a subset of HTML in text)."""
    return html.escape(json.dumps(token, ensure_ascii=False), quote=False)


def highlight(tokens: Sequence[str], acts: Sequence[float], scale: float,
              peak: int | None = None) -> str:
    """Tokens as spans whose background intensity is activation / ``scale`` (escaped text;
    the activation in each span's title)."""
    scale = scale if scale > 0 else 1.0
    r, g, b = ACT_RGB
    spans = []
    for k, (t, a) in enumerate(zip(tokens, acts)):
        alpha = min(max(a / scale, 0.0), 1.0)
        cls = ' class="peak"' if k == peak else ""
        spans.append(f'<span{cls} title="{_esc(f"{t!r}: {a:.3f}")}" style="background: '
                     f'rgba({r}, {g}, {b}, {alpha:.2f})">{_esc(t)}</span>')
    return f'<div class="tokens">{"".join(spans)}</div>'


def _page(title: str, body: str, plotly: bool) -> str:
    script = f'<script src="{PLOTLYJS}"></script>\n' if plotly else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n{script}</head>\n"
            f"<body>\n{body}\n</body></html>\n")


def _div(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(include_plotlyjs=False, full_html=False, div_id=div_id,
                       config={"displaylogo": False, "displayModeBar": False})


def activation_histogram(entry: dict) -> go.Figure:
    h = entry["histogram"]
    edges = h["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    s = entry["summary"]
    fig = go.Figure(go.Bar(x=centres, y=h["counts"], width=widths, marker_color=PALETTE[1],
                           hovertemplate="act %{x:.3f}: %{y} tokens<extra></extra>"))
    fig.update_layout(xaxis_title="activation (non-zero only)", yaxis_title="tokens",
                      bargap=0)
    return apply_style(fig, f"Activations: fires on {s['n_nonzero']} of {s['n_tokens']} tokens "
                            f"({s['freq']:.1%})", width=520, height=340)


def logit_bars(entry: dict) -> go.Figure:
    pos = entry["logits"]["positive"]
    neg = entry["logits"]["negative"]
    rows = sorted(pos + neg, key=lambda r: r["value"])
    y = list(range(len(rows)))
    fig = go.Figure(go.Bar(
        x=[r["value"] for r in rows], y=y, orientation="h",
        marker_color=[PALETTE[1] if r["value"] > 0 else PALETTE[0] for r in rows],
        hovertext=[f"{_token_label(r['token'])} (id {r['id']}): {r['value']:+.3f}" for r in rows],
        hoverinfo="text"))
    fig.update_layout(yaxis=dict(tickvals=y, ticktext=[_token_label(r["token"]) for r in rows]),
                      xaxis_title="direct logit effect of the unit decoder direction")
    return apply_style(fig, "Logit effects (raised / lowered)", width=520,
                       height=max(340, 22 * len(rows) + 100))


def steering_curve(entry: dict, trait: str) -> go.Figure:
    st = entry["steering"]
    a = [r["alpha"] for r in st]
    fig = go.Figure()
    n_q = len(st[0]["scores"]) if st else 0
    for q in range(n_q):
        fig.add_trace(go.Scatter(x=a, y=[r["scores"][q] for r in st], mode="lines",
                                 line=dict(color="#BBBBBB", width=1), name="per question",
                                 showlegend=q == 0 and n_q > 1, legendgroup="q"))
    fig.add_trace(go.Scatter(x=a, y=[r["mean"] for r in st], mode="lines+markers",
                             line=dict(color=PALETTE[2], width=3), marker=dict(size=9),
                             name="mean over questions"))
    fig.update_layout(xaxis_title="α (units of r̄ at the SAE's layer)",
                      yaxis_title=f"{trait} would-say (trait − anti log-lik)")
    return apply_style(fig, f"Steering along the latent: {trait}", width=520, height=340)


def _summary_row(entry: dict, steering: dict | None) -> dict:
    s = entry["summary"]
    row = {"max": s["max"], "freq": s["freq"]}
    st = entry.get("steering")
    if st:
        row["steer"] = st[-1]["mean"] - st[0]["mean"]
    return row


def _latent_page(data: dict, entry: dict, prev_next: tuple[str | None, str | None]) -> str:
    latent, s = entry["latent"], entry["summary"]
    prov = data["provenance"]
    steering = data.get("steering")
    scale = s["max"] or 1.0
    parts = [f'<p class="meta"><a href="index.html">← all latents</a>'
             + (f' · <a href="{prev_next[0]}">previous</a>' if prev_next[0] else "")
             + (f' · <a href="{prev_next[1]}">next</a>' if prev_next[1] else "") + "</p>",
             f"<h1>Latent {latent} <span class='meta'>(rank {entry['rank']})</span></h1>",
             f"<p class='meta'>{_esc(prov['sae']['hook_name'])} · SAE "
             f"{_esc(prov['sae'].get('spec') or prov['sae']['weights_sha256'][:12])} · model "
             f"{_esc(prov['model'].get('model'))} · max activation {s['max']:.3f} · fires on "
             f"{s['freq']:.2%} of {s['n_tokens']} tokens ({_esc(data['items']['positions'])} "
             f"positions of {data['items']['n']} items)</p>"]
    if entry.get("ranking"):
        cells = " · ".join(f"{_esc(k)} {v:+.4f}" if isinstance(v, float) else
                           f"{_esc(k)} {_esc(v)}" for k, v in entry["ranking"].items()
                           if k != "latent")
        parts.append(f"<p class='meta'>ranking: {cells}</p>")
    parts.append(f"<h2>Top activating examples</h2><p class='meta'>background: activation / "
                 f"{scale:.3f} (this latent's max); outlined: the peak token; hover a token "
                 "for its value</p>")
    if entry["top_examples"]:
        rows = "".join(f"<tr><td class='num'>{ex['peak_act']:.3f}</td>"
                       f"<td class='meta'>{_esc(ex['item'])}</td><td>"
                       f"{highlight(ex['tokens'], ex['acts'], scale, ex['peak'])}</td></tr>"
                       for ex in entry["top_examples"])
        parts.append("<table><tr><th class='num'>peak</th><th>item</th><th>context</th></tr>"
                     f"{rows}</table>")
    else:
        parts.append("<p>The latent never fires on these items.</p>")
    charts = []
    if entry["histogram"]["counts"]:
        charts.append(_div(activation_histogram(entry), f"hist-{latent}"))
    charts.append(_div(logit_bars(entry), f"logits-{latent}"))
    if entry.get("steering"):
        charts.append(_div(steering_curve(entry, steering["trait"]), f"steer-{latent}"))
    parts.append("<h2>Activations, logit effects, steering</h2>"
                 f"<div class='charts'>{''.join(charts)}</div>")
    parts.append(f"<p class='meta'>Logit effects: {_esc(data['logit_effects'])}.</p>")
    if steering:
        table = "".join(f"<tr><td class='num'>{r['alpha']:g}</td><td class='num'>"
                        f"{r['mean']:+.4f}</td><td class='num'>"
                        f"{r['mean'] - entry['steering'][0]['mean']:+.4f}</td></tr>"
                        for r in entry["steering"])
        parts.append(f"<p class='meta'>Steering: {_esc(steering['edit'])}; r̄ = "
                     f"{steering['reference_norm']:.3f}; measure: {_esc(steering['measure'])} on "
                     f"{len(steering['questions'])} questions.</p><table><tr><th class='num'>α"
                     "</th><th class='num'>would-say</th><th class='num'>Δ vs first α</th>"
                     f"</tr>{table}</table>")
    return _page(f"latent {latent}", "\n".join(parts), plotly=True)


def _index_page(data: dict, names: dict[int, str]) -> str:
    prov = data["provenance"]
    steering = data.get("steering")
    has_rank = any(e.get("ranking") for e in data["latents"])
    head = ["<th class='num'>rank</th><th>latent</th>"]
    if has_rank:
        head.append("<th class='num'>Δ mean</th>")
    head.append("<th class='num'>max act</th><th class='num'>freq</th>")
    if steering:
        head.append(f"<th class='num'>Δ {_esc(steering['trait'])} would-say "
                    f"(α {steering['alphas'][0]:g}→{steering['alphas'][-1]:g})</th>")
    head.append("<th>top logits</th><th>top example</th>")
    rows = []
    for e in data["latents"]:
        s, sm = e["summary"], _summary_row(e, steering)
        cells = [f"<td class='num'>{e['rank']}</td><td><a href='{names[e['latent']]}'>latent "
                 f"{e['latent']}</a></td>"]
        if has_rank:
            dm = (e.get("ranking") or {}).get("delta_mean")
            cells.append(f"<td class='num'>{dm:+.4f}</td>" if isinstance(dm, (int, float))
                         else "<td></td>")
        cells.append(f"<td class='num'>{s['max']:.3f}</td><td class='num'>{s['freq']:.2%}</td>")
        if steering:
            cells.append(f"<td class='num'>{sm['steer']:+.4f}</td>" if "steer" in sm
                         else "<td></td>")
        toks = ", ".join(_esc(json.dumps(r["token"], ensure_ascii=False))
                         for r in e["logits"]["positive"][:4])
        cells.append(f"<td class='tokens'>{toks}</td>")
        ex = e["top_examples"][0] if e["top_examples"] else None
        if ex:
            lo, hi = max(0, ex["peak"] - 6), ex["peak"] + 3
            snippet = highlight(ex["tokens"][lo:hi], ex["acts"][lo:hi], s["max"], ex["peak"] - lo)
            cells.append(f"<td>{snippet}</td>")
        else:
            cells.append("<td class='meta'>never fires</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    parts = [f"<h1>Latent dashboards: {_esc(prov['sae']['hook_name'])}</h1>",
             f"<p class='meta'>model {_esc(prov['model'].get('model'))} "
             f"(revision {_esc(prov['model'].get('revision'))}) · SAE "
             f"{_esc(prov['sae'].get('spec'))} ({_esc(prov['sae']['architecture'])}, d_sae "
             f"{prov['sae']['d_sae']}, weights sha256 {_esc(prov['sae']['weights_sha256'][:16])}…)"
             f" · layer convention {_esc(prov['layer_convention']['name'])} · "
             f"{data['items']['n']} items at {_esc(data['items']['positions'])} positions · "
             f"created {_esc(prov.get('created_utc'))} · git {_esc(prov.get('git_sha'))}</p>",
             f"<table><tr>{''.join(head)}</tr>{''.join(rows)}</table>"]
    plotly = False
    if has_rank:
        from persona_probe.figures.bars import latent_shift_bars

        ranked = [e["ranking"] for e in data["latents"]
                  if e.get("ranking") and "delta_mean" in e["ranking"]
                  and "delta_freq" in e["ranking"]]
        if ranked:
            parts.append(_div(latent_shift_bars(ranked, n=len(ranked)), "ranking"))
            plotly = True
    return _page("latent dashboards", "\n".join(parts), plotly=plotly)


def write_latent_dashboards(data: dict | str | Path, out_dir: str | Path) -> list[Path]:
    """From the saved data alone (a ``dashboard.json`` path or its dict; no model): ``out_dir/
    index.html`` listing the latents in rank order with links, and ``latent-<i>.html`` per
    latent, beside one shared ``plotly.min.js``. Returns [index, *latent pages]."""
    if not isinstance(data, dict):
        path = Path(data)
        if path.is_dir():
            path = path / DATA_FILE
        try:
            data = read_json(path)
        except (OSError, ValueError) as exc:
            raise DashboardError(f"cannot read dashboard data {path} ({exc}); compute it with "
                                 "`persona-probe dashboards`") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise DashboardError(f"not latent dashboard data (schema {SCHEMA} expected)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_plotlyjs(out)
    names = {int(e["latent"]): f"latent-{int(e['latent'])}.html" for e in data["latents"]}
    order = [int(e["latent"]) for e in data["latents"]]
    pages = []
    for k, e in enumerate(data["latents"]):
        prev_next = (names[order[k - 1]] if k else None,
                     names[order[k + 1]] if k + 1 < len(order) else None)
        text = _latent_page(data, e, prev_next)
        page = out / names[int(e["latent"])]
        atomic_write(page, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        pages.append(page)
    index = out / "index.html"
    text = _index_page(data, names)
    atomic_write(index, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return [index, *pages]
