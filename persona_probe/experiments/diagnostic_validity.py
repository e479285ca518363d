"""Can the ethical persona diagnostic see all four ethics? Its own validity check, before any
line-2 result leans on it (research line 2, item 2).

Under each constitution as a system prompt (its description, ``data/constitutions``), does the
diagnostic move *that* constitution's dimension more than the other three, relative to no
system prompt? ``evals.diagnostic.diagnostic_validity`` gives the margin
Δ_c(intended) − mean Δ_c(others) with a paired statement bootstrap. Two independent statement
sets: the team's (``data/diagnostic``, 44 per dimension) and the Anthropic persona statements
mapped to each dimension (``../shared/data``). Two ways to state a stance: the constitution's
description (primary) and the trait's stance prompt (``data/traits``, secondary). Nothing here
was tuned: the statements, constitutions and stance prompts were committed before this check
existed, and the primary row is named in the config.

    python experiments/diagnostic_validity.py
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from persona_probe.errors import PersonaProbeError
from persona_probe.models import DEFAULT_MODEL

DIMENSIONS = ("deontology", "consequentialism", "virtue_ethics", "human_authority")
SOURCES = ("team", "anthropic")
FRAMINGS = ("constitution", "stance")


@dataclass
class DiagnosticValidityConfig:
    model: str = DEFAULT_MODEL             # the model whose diagnostic is checked
    mode: str = "would_say"                # diagnostic scoring mode
    sources: tuple[str, ...] = SOURCES     # statement sets
    anthropic_limit: int = 100             # statements per Anthropic persona file
    framings: tuple[str, ...] = FRAMINGS   # constitution description / trait stance prompt
    primary: str = "team/constitution"     # source/framing the goal is judged on
    n_boot: int = 2000                     # bootstrap draws over statements
    seed: int = 0                          # bootstrap seed

    def __post_init__(self) -> None:
        self.sources, self.framings = tuple(self.sources), tuple(self.framings)
        if not self.sources or not set(self.sources) <= set(SOURCES):
            raise PersonaProbeError(f"sources {list(self.sources)}: some of {list(SOURCES)}")
        if not self.framings or not set(self.framings) <= set(FRAMINGS):
            raise PersonaProbeError(f"framings {list(self.framings)}: some of {list(FRAMINGS)}")
        src, _, fr = self.primary.partition("/")
        if src not in self.sources or fr not in self.framings:
            raise PersonaProbeError(f"primary {self.primary!r}: source/framing among "
                                    f"{list(self.sources)} x {list(self.framings)}")
        if self.anthropic_limit < 10:
            raise PersonaProbeError("anthropic_limit must be >= 10")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "diagnostic_validity config"):
        from persona_probe.configs import config_from_dict

        return config_from_dict(cls, raw, where, PersonaProbeError)


def contexts(framings: tuple[str, ...]) -> tuple[list, dict[str, str]]:
    """Neutral plus one context per dimension and framing, and the dimension each is meant to
    raise."""
    from persona_probe.evals.diagnostic import Context, constitution_context
    from persona_probe.traits import load_trait

    out, intended = [Context()], {}
    for dim in DIMENSIONS:
        if "constitution" in framings:
            c = constitution_context(dim)
            out.append(c)
            intended[c.name] = dim
        if "stance" in framings:
            c = Context(f"stance:{dim}", system=load_trait(dim).trait_system[0])
            out.append(c)
            intended[c.name] = dim
    return out, intended


def plan(cfg: DiagnosticValidityConfig, p) -> None:
    n = 1 + len(DIMENSIONS) * len(cfg.framings)
    for src in cfg.sources:
        p.add(f"diagnostic-{src}", f"{cfg.mode} scores of the {src} statements of 4 dimensions "
              f"in {n} contexts")


def run(cfg: DiagnosticValidityConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    from persona_probe.artifacts import write_json
    from persona_probe.evals.diagnostic import diagnostic_validity, run_diagnostic
    from persona_probe.evals.records import read_items
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.models import load_subject
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.stages import Stages

    t0 = time.perf_counter()
    stage = stage_clock()
    stages = Stages(runs, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    subject = load_subject(cfg.model)
    p = subject.provenance()
    common = {"command": command_line("diagnostic_validity", config_path),
              "model": {k: p.get(k) for k in ("model", "revision", "dtype", "architecture")}}
    ctxs, intended = contexts(cfg.framings)
    rows, material = [], {}
    for src in cfg.sources:
        stage(f"diagnostic ({src} statements)")

        def build(d: Path, src=src) -> dict:
            summary = run_diagnostic(subject, list(DIMENSIONS), ctxs, cfg.mode, source=src,
                                     anthropic_limit=cfg.anthropic_limit, out=d,
                                     seed=cfg.seed, n_boot=200)
            return {"items": str(d / "items.jsonl"), "contexts": summary["contexts"]}
        got = stages.run(f"diagnostic-{src}", {
            **common, "mode": cfg.mode, "source": src, "contexts": [c.__dict__ for c in ctxs],
            **({"anthropic_limit": cfg.anthropic_limit} if src == "anthropic" else {})}, build)
        recs = read_items(Path(got["items"]))
        material[src] = {d: sum(1 for r in recs if r["dimension"] == d
                                and r["context"] == "neutral") for d in DIMENSIONS}
        val = diagnostic_validity(recs, intended, seed=cfg.seed, n_boot=cfg.n_boot)
        for ctx, v in val.items():
            framing = ctx.split(":", 1)[0]
            rows.append({"source": src, "framing": framing, "context": ctx,
                         "dimension": v["intended"], "margin": v["margin"],
                         "intended_shift": v["intended_shift"],
                         "raw_margin": v["raw_margin"], "passes": v["passes"],
                         "primary": f"{src}/{framing}" == cfg.primary})
    prim = [r for r in rows if r["primary"]]
    results = {
        "experiment": "diagnostic_validity", "config": asdict(cfg), "config_path": config_path,
        "command": common["command"], "git_sha": git_sha(), **stages.summary(),
        "seeds": [cfg.seed], "compute_seconds_total": round(time.perf_counter() - t0, 1),
        "model": subject.provenance(), "statements_per_dimension": material,
        "diagnostic_validity": rows,
        "goal": {"primary": cfg.primary, "rule": "for all four dimensions, the CIs of the "
                 "margin and of the intended dimension's own shift above 0",
                 "met": all(r["passes"] for r in prim),
                 "seen": [r["dimension"] for r in prim if r["passes"]],
                 "not_seen": [r["dimension"] for r in prim if not r["passes"]]},
        "provenance": provenance(cfg.seed)}
    write_json(out / "results.json", results)
    paths = draw(out)
    for r in rows:
        m = r["margin"]
        print(f"{r['source']:>9} {r['framing']:>12} {r['dimension']:>16}  margin "
              f"{m['mean']:+.3f} [{m['lo']:+.3f}, {m['hi']:+.3f}]  "
              f"{'seen' if r['passes'] else 'not seen'}")
    report_outputs(out, paths)
    return results


def draw(out: Path) -> list[Path]:
    """The margin per dimension, source and framing, with CIs and the zero line."""
    import plotly.graph_objects as go

    from persona_probe.figures import write_figure_or_html

    res = json.loads((out / "results.json").read_text())
    fig = go.Figure()
    for src in dict.fromkeys(r["source"] for r in res["diagnostic_validity"]):
        for fr in dict.fromkeys(r["framing"] for r in res["diagnostic_validity"]):
            rs = [r for r in res["diagnostic_validity"]
                  if r["source"] == src and r["framing"] == fr]
            fig.add_bar(name=f"{src} statements, {fr}", x=[r["dimension"] for r in rs],
                        y=[r["margin"]["mean"] for r in rs], error_y=dict(
                            type="data", symmetric=False,
                            array=[r["margin"]["hi"] - r["margin"]["mean"] for r in rs],
                            arrayminus=[r["margin"]["mean"] - r["margin"]["lo"] for r in rs]))
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(barmode="group", template="plotly_white",
                      title="Does the diagnostic see each ethic? Intended dimension's shift "
                            "minus the others' (vs no system prompt)",
                      yaxis_title="margin (would-say)")
    return write_figure_or_html(fig, out / "validity")
