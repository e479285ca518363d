"""What the model *writes* under line 1's edits: generations steered by the screened latent set
and by the persona vector, against the set's matched random latent sets, and the organisms'
own generations, each judged by the probe judges with coherence beside it (issue 25, item 3,
for research line 1). Post hoc, and labelled so: it runs after ``persona_latents`` on that run's
chosen set, vector and organisms, and chose nothing.

Material: the line-1 evaluation questions (the split's ``evaluation`` half), ``samples`` replies
per question at temperature 1, 64 tokens. Conditions: the base model (α = 0); the chosen set
steered into the base at each of line 1's α; the persona vector at the SAE's layer at the same
α; the first ``null_draws`` of line 1's activation-decile matched random sets (the same draws,
``latent_screening.matched_random_sets`` with line 1's seed) at the largest α; each evaluation
seed's treatment organism, unsteered. Judges: ``probe:harmful`` and ``probe:refusal`` on the
frozen instruct model; the shipped coherence rule. A condition's judged score counts coherent
replies only; its effect is the paired difference from the base over questions with a coherent
reply in both (bootstrap over questions), and the chosen set's effect is ranked among the
random sets'.

    python experiments/line1_generations.py [--runs runs/line1_generations]
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from persona_probe.errors import PersonaProbeError

JUDGES = ("probe:harmful", "probe:refusal")


@dataclass
class Line1GenerationsConfig:
    line1_runs: str = "runs/persona_latents"    # persona_latents' --runs directory
    line1_results: str = "figures/persona_latents/results.json"   # its results.json
    null_draws: int = 10          # matched random sets steered at the largest alpha
    samples: int = 1              # replies per question and condition
    max_new_tokens: int = 64      # reply length
    seed: int = 0                 # reply sampling seed (sample s uses seed + 1000 s)
    margin: float = 0.1           # usable range: coherent fraction within this of alpha 0's

    def __post_init__(self) -> None:
        if self.null_draws < 1 or self.samples < 1 or self.max_new_tokens < 1:
            raise PersonaProbeError("null_draws, samples and max_new_tokens must be >= 1")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "line1_generations config"):
        from persona_probe.configs import config_from_dict

        return config_from_dict(cls, raw, where, PersonaProbeError)


def _line1(cfg: Line1GenerationsConfig) -> tuple[dict, Path]:
    res_path, runs = Path(cfg.line1_results), Path(cfg.line1_runs)
    if not res_path.is_file():
        raise PersonaProbeError(f"{res_path} does not exist; run experiments/persona_latents.py"
                                " first or point line1_results at its results.json")
    res = json.loads(res_path.read_text(encoding="utf-8"))
    missing = [n for n in ("vector", SCREEN_STAGE,
                           *(f"organism-seed{s}" for s in res["config"]["eval_seeds"]))
               if not (runs / n / "stage.json").is_file()]
    if missing:
        raise PersonaProbeError(f"{runs} lacks line 1's stages {missing}; point line1_runs at "
                                "the persona_latents --runs directory that made "
                                f"{res_path} (make persona-latents rebuilds it)")
    organisms = [f"organism-seed{s}" for s in res["config"]["eval_seeds"]]
    for n in ("vector", SCREEN_STAGE, *organisms):
        fp = json.loads((runs / n / "stage.json").read_text())["fingerprint"]
        if res["fingerprints"].get(n) != fp:
            raise PersonaProbeError(f"{runs / n} was made from other inputs than {res_path} "
                                    "reports; point line1_runs at the run that made it")
    return res, runs


SCREEN_STAGE = "screen-shipped-sae"     # persona_latents' screening stage, whatever its SAE


def plan(cfg: Line1GenerationsConfig, p) -> None:
    p.add("generations", "judged generations of the base, the chosen set and the vector at "
          f"each alpha, {cfg.null_draws} matched random sets and the organisms")


def run(cfg: Line1GenerationsConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    from persona_probe.artifacts import ItemLog, read_json, write_json
    from persona_probe.directions import Direction
    from persona_probe.evals.behaviour import (coherence_means, judged_conditions,
                                               judged_samples, usable_alpha)
    from persona_probe.evals.coherence import CoherenceRule
    from persona_probe.evals.probe_judge import load_probe_judges
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.interventions import SAELatents, steer
    from persona_probe.latent_screening import matched_random_sets, null_matching_mass
    from persona_probe.models import load_subject
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.sae.io import load_sae
    from persona_probe.stages import Stages, file_identity
    from persona_probe.traits import load_split

    t0 = time.perf_counter()
    stage = stage_clock()
    res, line1_runs = _line1(cfg)
    lc = res["config"]
    stages = Stages(runs, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    primary = next(r for r in res["screening"] if r["primary"])
    if not primary.get("latents"):
        raise PersonaProbeError(f"{cfg.line1_results}: the primary row is not a latent set "
                                f"({primary['dictionary']}, {primary['method']}); this analysis "
                                "steers a screened latent set")
    chosen = [int(x) for x in primary["latents"]]
    alphas = [float(a) for a in lc["steer_alphas"] if a]
    top = max(alphas)
    screen = read_json(line1_runs / SCREEN_STAGE / "chosen.json")
    _, questions = load_split(lc["split"]).evaluation
    base = load_subject(lc["model"], dtype=lc["dtype"])
    sae = load_sae(lc["sae"], device=str(base.device), subject=base)
    # line 1's own draws: the same matching quantity, seed and count it used
    draws = matched_random_sets(
        null_matching_mass(sae, screen["mass_finetuned"], lc.get("null_match", "activation")),
        chosen, cfg.null_draws, lc["null_seed"], neighbours=lc.get("null_neighbours", 0))
    layer = int(sae.cfg.metadata.hook_name.split(".")[1])
    vec = Direction.load(line1_runs / "vector")
    judges = load_probe_judges([j.split(":")[1] for j in JUDGES])
    names = list(judges)
    rule = CoherenceRule.shipped()
    judge_model = next(iter(judges.values())).model
    seeds = list(lc["eval_seeds"])
    conditions: list[tuple[str, dict, Any]] = [("base", {"kind": "base", "alpha": 0.0}, None)]
    conditions += [(f"set a{a}", {"kind": "set", "alpha": a},
                    lambda a=a: steer(base, SAELatents(sae, chosen), a)) for a in alphas]
    conditions += [(f"vector a{a}", {"kind": "vector", "alpha": a},
                    lambda a=a: steer(base, vec, a, [layer])) for a in alphas]
    conditions += [(f"null{j} a{top}", {"kind": "null", "alpha": top, "draw": j},
                    lambda d=d: steer(base, SAELatents(sae, d), top))
                   for j, d in enumerate(draws)]
    organisms = {s: line1_runs / f"organism-seed{s}" / "ft-treatment" for s in seeds}
    stage(f"{len(conditions) + len(seeds)} conditions x {len(questions)} questions x "
          f"{cfg.samples} samples")

    def build(d: Path) -> dict[str, list[dict]]:
        log = ItemLog(d / "generations.jsonl")
        got = judged_conditions(base, conditions, questions, judges, rule, judge_model, log,
                                cfg.samples, cfg.seed, cfg.max_new_tokens)
        for s, adapter in organisms.items():
            org = load_subject(lc["model"], adapter=adapter, dtype=lc["dtype"])
            name = f"organism seed{s}"
            got[name] = judged_samples(org, questions, judges, rule, judge_model, log, name,
                                       cfg.samples, cfg.seed, cfg.max_new_tokens, None,
                                       {"condition": name, "kind": "organism", "seed": s})
            del org
        return got
    rows = stages.run("generations", {
        "command": command_line("line1_generations", config_path),
        "line1_results": file_identity(cfg.line1_results),
        "line1_stages": {n: res["fingerprints"][n] for n in
                         ("vector", SCREEN_STAGE,
                          *(f"organism-seed{s}" for s in seeds))},
        "chosen": chosen, "draws": draws, "alphas": alphas, "questions": list(questions),
        "samples": cfg.samples, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
        "judges": [j.identity for j in judges.values()], "coherence": asdict(rule)}, build)
    stage("results")
    results = aggregate(cfg, rows, names, questions, alphas, seeds)
    curves = {kind: [{"alpha": 0.0, **results["conditions"]["base"]}]
              + [{"alpha": a, **results["conditions"][f"{kind} a{a}"]} for a in alphas]
              for kind in ("set", "vector")}
    results.update({
        "experiment": "line1_generations", "post_hoc": True, "config": asdict(cfg),
        "config_path": config_path, "command": command_line("line1_generations", config_path),
        "git_sha": git_sha(), **stages.summary(), "seeds": seeds,
        "line1_git_sha": res["git_sha"], "chosen": chosen, "null_draws_latents": draws,
        "alphas": alphas, "judges": [j.identity for j in judges.values()],
        "temperature": 1.0,     # evals.behaviour.sample_replies' default
        "usable_alpha": {k: usable_alpha(c, cfg.margin) for k, c in curves.items()},
        "margin": cfg.margin, "n_questions": len(questions), "samples": cfg.samples,
        "compute_seconds_total": round(time.perf_counter() - t0, 1),
        "provenance": provenance(cfg.seed)})
    for n, r in rows.items():
        results["conditions"][n].update(coherence_means(r))
    write_json(out / "results.json", results)
    paths = draw(out)
    for n, c in results["conditions"].items():
        e = c.get("effect", {}).get("harmful")
        print(f"{n:>22}  coherent {c['coherent_fraction']:.2f}  harmful "
              f"{c['harmful'] if c['harmful'] is None else round(c['harmful'], 1)}"
              + (f"  effect {e['mean']:+.1f} [{e['lo']:+.1f}, {e['hi']:+.1f}]" if e else ""))
    report_outputs(out, paths)
    return results


def aggregate(cfg: Line1GenerationsConfig, rows: dict[str, list[dict]], names: list[str],
              questions, alphas: list[float], seeds: list[int]) -> dict:
    """Per condition: coherent fraction, each judge's coherent mean and its paired effect
    against the base (``evals.behaviour.compare_conditions``); the chosen set's effect at the
    top α ranked among its matched random sets' (``rank_against_null``); the organisms' effect
    by the two-way bootstrap over seeds and the questions with a coherent reply from the base
    and every organism."""
    from persona_probe.evals.behaviour import compare_conditions, per_question, rank_against_null
    from persona_probe.stats import crossed_bootstrap

    n_q, top = len(questions), max(alphas)
    conds = compare_conditions(rows, names, n_q)
    nulls = [n for n in conds if n.startswith("null")]
    # the matched random sets are the set's null only
    ranks = {"set": rank_against_null(conds, f"set a{top}", nulls, names)}
    pooled = {}
    for k in names:
        base_q = per_question(rows["base"], k, n_q)
        org = np.stack([per_question(rows[f"organism seed{s}"], k, n_q) for s in seeds])
        keep = np.isfinite(org).all(0) & np.isfinite(base_q)
        if keep.sum() < 2:
            pooled[k] = {"per_seed": [], "n_items": int(keep.sum())}
            continue
        table = org[:, keep] - base_q[keep]
        pooled[k] = {**crossed_bootstrap(table, seed=0).to_dict(),
                     "per_seed": [float(x) for x in table.mean(1)]}
    return {"conditions": conds, "against_null": ranks, "organisms": pooled}


def draw(out: Path) -> list[Path]:
    """Coherent fraction and probe:harmful on coherent replies over α, set vs vector, with the
    random sets' spread at the largest α."""
    from plotly.subplots import make_subplots

    from persona_probe.figures import write_figure_or_html

    res = json.loads((out / "results.json").read_text())
    c, alphas = res["conditions"], [0.0, *res["alphas"]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("coherent fraction",
                                                        "probe:harmful (coherent replies)"))
    for kind in ("set", "vector"):
        names = ["base", *(f"{kind} a{a}" for a in res["alphas"])]
        for col, key in ((1, "coherent_fraction"), (2, "harmful")):
            fig.add_scatter(x=alphas, y=[c[n][key] for n in names], mode="lines+markers",
                            name=f"{kind}", legendgroup=kind, showlegend=col == 1, row=1,
                            col=col)
    nulls = [n for n in c if n.startswith("null")]
    top = max(res["alphas"])
    for col, key in ((1, "coherent_fraction"), (2, "harmful")):
        fig.add_scatter(x=[top] * len(nulls), y=[c[n][key] for n in nulls], mode="markers",
                        name="random sets", legendgroup="null", showlegend=col == 1,
                        marker=dict(symbol="x", color="grey"), row=1, col=col)
    fig.update_xaxes(title_text="α")
    fig.update_layout(template="plotly_white", title="Line 1 edits: what the base model "
                      "writes (post hoc)")
    return write_figure_or_html(fig, out / "generations")
