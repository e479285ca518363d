"""README result tables rendered from committed results files, never typed by hand.

Each renderer turns one experiment's ``results.json`` into Markdown; ``render_readme`` replaces
the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in the README with it,
and ``check_readme`` says which blocks disagree with their files (a test runs it, so a README
number that no longer matches its results fails the suite).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from persona_probe.errors import PersonaProbeError

Renderer = Callable[[dict], str]
RENDERERS: dict[str, tuple[str, Renderer]] = {}     # name -> (results path, renderer)


def register(name: str, results: str) -> Callable[[Renderer], Renderer]:
    """Add a renderer for the block ``name``, fed from ``results`` (relative to the repo)."""
    def deco(fn: Renderer) -> Renderer:
        RENDERERS[name] = (results, fn)
        return fn
    return deco


def _ci(e: dict | None, pct: bool = False) -> str:
    if e is None:
        return "—"
    if pct:
        return f"{e['mean']:+.0%} [{e['lo']:+.0%}, {e['hi']:+.0%}]"
    return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:+.0%}"


@register("persona_latents", "figures/persona_latents/results.json")
def render_persona_latents(res: dict) -> str:
    seeds = res["seeds"]
    mins = res["compute_seconds_total"] / 60
    head = (f"Run at `{res['git_sha'][:10]}`, `from_scratch: {str(res['from_scratch']).lower()}`; "
            f"selection seed {seeds['selection']}, evaluation seeds "
            f"{', '.join(map(str, seeds['evaluation']))}; {mins:.0f} min of compute on 2 cores "
            f"(this session's stages; per stage in `compute_seconds`). Material: "
            f"{res['material']['evaluation_questions']} evaluation questions × "
            f"{res['material']['evaluation_replies']} held-out replies; selection used "
            f"{res['material']['selection_questions']} other questions and "
            f"{res['material']['selection_replies']} other replies. Treatment − base on "
            f"evaluation material: {_ci(res['treatment_minus_base'])} "
            f"(would-say, {res['treatment_minus_base']['method']}).")
    lines = [head, "", "| dictionary | edit | latents | gap removed | base shift | "
             "null mean / p95 | steer base at α = "
             f"{res['screening'][0]['steer_alpha']:g} | steer null p95 | goal met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["screening"]:
        lat = ", ".join(f"#{i}" for i in r["latents"]) if r["latents"] else "—"
        null = ("—" if r["null_p95"] is None
                else f"{_pct(r['null_mean'])} / {_pct(r['null_p95'])}")
        steer_null = "—" if r["steer_null_p95"] is None else f"{r['steer_null_p95']:+.3f}"
        name = f"**{r['method']}** (primary)" if r["primary"] else r["method"]
        lines.append(f"| {r['dictionary']} | {name} | {lat} | {_ci(r['gap_removed'], True)} | "
                     f"{_ci(r['base_shift'], True)} | {null} | {_ci(r['steer_effect'])} | "
                     f"{steer_null} | {'yes' if r['goal']['met'] else 'no'} |")
    sel = res["selection"]
    stab = res["ranking_stability"]["chosen_in_top10"]
    lines += ["", f"Selection (seed {seeds['selection']}, selection material only): the "
              f"screened set {', '.join(f'#{i}' for i in sel['latents'])} removed "
              f"{sel['selection_gap_removed']:+.0%} of the selection gap "
              f"({sel['selection_gap']:+.3f}); the top-Δ set of the same size "
              f"{', '.join(f'#{i}' for i in sel['top_delta'])}. Share of evaluation seeds whose "
              "own top-10 Δ ranking contains each screened latent: "
              + ", ".join(f"#{k} {v:.0%}" for k, v in stab.items()) + "."]
    for lat in sel["latents"]:
        ex = sel["examples"].get(str(lat), [])[:2]
        if ex:
            shown = " · ".join(f"“…{e['text'].strip()[:90]}…” (peak {e['peak_token']!r})"
                               for e in ex)
            lines.append(f"- latent #{lat}: {shown}")
    return "\n".join(lines)


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- results:{re.escape(name)} [^>]*-->\n)(.*?)(\n<!-- /results:"
                      rf"{re.escape(name)} -->)", re.S)


def rendered(name: str, root: Path) -> str:
    path, fn = RENDERERS[name]
    if not (root / path).is_file():
        raise PersonaProbeError(f"{root / path} does not exist; run the experiment first")
    return fn(json.loads((root / path).read_text(encoding="utf-8")))


def render_readme(root: Path, readme: str = "README.md") -> list[str]:
    """Rewrite every registered block present in the README; returns the names rewritten."""
    from persona_probe.artifacts import atomic_write

    path = root / readme
    text = path.read_text(encoding="utf-8")
    done = []
    for name in RENDERERS:
        pat = _block(name)
        if pat.search(text):
            body = rendered(name, root)
            text = pat.sub(lambda m: m.group(1) + body + m.group(3), text)
            done.append(name)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return done


def check_readme(root: Path, readme: str = "README.md") -> dict[str, bool]:
    """For each registered block: does the README's text equal what its results render?"""
    text = (root / readme).read_text(encoding="utf-8")
    out = {}
    for name in RENDERERS:
        m = _block(name).search(text)
        out[name] = m is not None and m.group(2) == rendered(name, root)
    return out
