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
# name -> further results files a block reads beside its own (a summary over experiments);
# the renderer gets them under res["_also"] (path -> results, absent files left out)
ALSO: dict[str, tuple[str, ...]] = {}


def register(name: str, results: str, also: tuple[str, ...] = ()
             ) -> Callable[[Renderer], Renderer]:
    """Add a renderer for the block ``name``, fed from ``results`` (relative to the repo) and,
    for a summary, the ``also`` files that exist."""
    def deco(fn: Renderer) -> Renderer:
        RENDERERS[name] = (results, fn)
        if also:
            ALSO[name] = tuple(also)
        return fn
    return deco


def _ci(e: dict | None, pct: bool = False) -> str:
    if e is None:
        return "—"
    return _interval(e, "+.0%" if pct else "+.3f")


def _interval(e: dict, fmt: str = ".3f") -> str:
    """``mean [lo, hi]`` of an estimate dict in one number format."""
    return f"{e['mean']:{fmt}} [{e['lo']:{fmt}}, {e['hi']:{fmt}}]"


def _sha(sha: str | None) -> str:
    sha = str(sha)
    return sha[:10] + ("-dirty" if sha.endswith("-dirty") else "")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:+.0%}"


@register("persona_latents", "figures/persona_latents/results.json")
def render_persona_latents(res: dict) -> str:
    seeds, mat = res["seeds"], res["material"]
    gap = res["treatment_minus_base"]
    per_seed = ", ".join(f"seed {k} {v:+.3f}" for k, v in res["gap_per_seed"].items())
    resolved = res["gap_resolved"]
    tiny = "**A tiny demonstration run: it makes no claim.** " if res["config"].get("tiny") \
        else ""
    head = (tiny + f"Run at `{_sha(res['git_sha'])}`, `from_scratch: "
            f"{str(res['from_scratch']).lower()}` (every stage at `{_stage_shas(res)}`); "
            f"selection seed {seeds['selection']}, evaluation seeds "
            f"{', '.join(map(str, seeds['evaluation']))}; "
            f"{sum(res['compute_seconds'].values()) / 60:.0f} min of stage compute on 2 cores. "
            + _organism_phrase(res["config"]) +
            f"Evaluation material: {mat['evaluation_questions']} questions × "
            f"{mat['evaluation_replies']} held-out replies (selection used "
            f"{mat['selection_questions']} other questions and {mat['selection_replies']} other "
            f"replies).\n\n"
            f"**Treatment − base on evaluation material: {_ci(gap)}** ({per_seed}; "
            f"{gap['method']}); smallest gap this design resolves (80% power): "
            f"{res['minimum_detectable_gap']:.3f}. "
            + ("The gap is resolved, so the shares below are meaningful."
               if resolved else
               "**The gap is not resolved** (its CI includes 0 or the seeds disagree in sign), "
               "so every *share of the gap* below is undefined in practice; read the edits' "
               "raw effects on each model (measure units) against their nulls instead."))
    pen = all("penalized" in r for r in res["screening"])    # from the third run on
    lines = [head, "", "| dictionary | edit | latents | effect on finetuned m(F) − m(F\\|E) | "
             "effect on base m(B\\|E) − m(B) | null p95 of the effect on F | gap removed | "
             "base shift | " + ("penalized removal (null p95) | " if pen else "")
             + f"steer base, α = {res['screening'][0]['steer_alpha']:g} "
             "(null p95) | goal met |", "|---|---|---|---|---|---|---|---|---|---|"
             + ("---|" if pen else "")]
    for r in res["screening"]:
        lat = ", ".join(f"#{i}" for i in r["latents"]) if r["latents"] else "—"
        null = "—" if r["null_effect_p95"] is None else f"{r['null_effect_p95']:+.3f}"
        steer_null = "" if r["steer_null_p95"] is None else f" ({r['steer_null_p95']:+.3f})"
        name = f"**{r['method']}** (primary)" if r["primary"] else r["method"]
        if r.get("caveat"):
            name += " †"
        met = {True: "yes", False: "no", None: "n/a (no null)"}[r["goal"]["met"]]
        spec = r.get("specificity")
        pen_cell = (_ci(r["penalized"], True) + (f" ({spec['null_p95']:+.0%})" if spec else "")
                    + " | ") if pen else ""
        lines.append(f"| {r['dictionary']} | {name} | {lat} | {_ci(r['effect_finetuned'])} | "
                     f"{_ci(r['effect_base'])} | {null} | {_ci(r['gap_removed'], True)} | "
                     f"{_ci(r['base_shift'], True)} | {pen_cell}{_ci(r['steer_effect'])}"
                     f"{steer_null} | {met} |")
    caveats = [f"† {r['method']}: {r['caveat']}." for r in res["screening"] if r.get("caveat")]
    lines += ["", *caveats] if caveats else []
    for r in res["screening"]:
        spec = r.get("specificity")
        if spec:
            pn = res["nulls"][f"{r['method']} (penalized)"]
            beyond = spec["null_draws_at_or_beyond"]
            verdict = {True: "yes", False: "no",
                       None: "n/a (the gap is not resolved)"}[spec["ci_lower_above_null_p95"]]
            lines += ["", f"**Specificity ({r['method']}; the secondary test named in the config "
                      "before the run):** penalized removal, (effect on F − |mean effect on B|) "
                      f"/ gap, {_ci(spec['penalized'], True)} against the same statistic for the "
                      f"{pn['draws']} matched random sets ablated in both models: mean "
                      f"{spec['null_mean']:+.0%}, 95th percentile {spec['null_p95']:+.0%}; "
                      f"{beyond} of {pn['draws']} draws reach{'es' if beyond == 1 else ''} the "
                      "screened set's point estimate "
                      f"(rank p = {spec['rank_p']:.2f}). CI lower bound above "
                      f"the null's 95th percentile: **{verdict}**. A pass says the set is more "
                      "specific to the finetune than random latents of the same make-up, not "
                      "that it controls the persona."]
    lines += ["", "Steering CIs are over questions only (one base model); the base-shift "
              "numerators of seed-independent edits come from the one base model too, so their "
              "seed variation is the gap's. With 3 seeds a bootstrap under-covers the seed "
              "variance (only 10 distinct seed resamples), so read the per-seed values "
              f"(`per_seed` in `results.json`) beside every CI. The {mat['evaluation_replies']} "
              "scored evaluation replies are fixed, not resampled."]
    lines += _null_matching_lines(res)
    if res.get("steering_generations"):
        lines += ["", *_steering_generation_lines(res["steering_generations"])]
    sel = res["selection"]
    stab = res["ranking_stability"]["chosen_in_top10"]
    by = sel.get("chosen_by") or "gap_removed"
    rule = {"specific_removed": "chosen by *specific* removal (the ablation's effect on the "
                                "finetune minus its effect on the base, as a share of the gap; "
                                "a rule that also rewards an ablation that raises the base): ",
            "penalized": "chosen by *penalized* removal (the effect on the finetune minus the "
                         "size of the effect on the base): "}.get(by, "")
    shares = ", ".join(f"{x['gap_removed']:+.0%}" + (f" ({by.split('_')[0]} {x[by]:+.0%})"
                                                     if rule else "") for x in sel["sets"])
    lines += ["", f"Selection (seed {seeds['selection']}, selection material only; split "
              f"`{res['config']['split']}`): the selection gap was {sel['selection_gap']:+.3f}; "
              f"{rule}the screened set {', '.join(f'#{i}' for i in sel['latents'])} removed "
              f"{sel['selection_gap_removed']:+.0%} of it (sets of 1…5: {shares}); the top-Δ set "
              f"of the same size: {', '.join(f'#{i}' for i in sel['top_delta'])}."
              " Share of evaluation seeds whose own top-10 Δ ranking contains each screened "
              "latent: " + ", ".join(f"#{k} {v:.0%}" for k, v in stab.items()) + "."]
    for lat in sel["latents"]:
        ex = sel["examples"].get(str(lat), [])[:2]
        if ex:
            shown = " · ".join(f"“…{e['text'].strip()[:80]}…” (peak at {e['peak_token']!r})"
                               for e in ex)
            lines.append(f"- latent #{lat}: {shown}")
    return "\n".join(lines)


def _organism_phrase(cfg: dict) -> str:
    """Which organism a line-1 run finetuned (trait through one domain's answers)."""
    org = cfg.get("organism") or {}
    if not org.get("trait"):
        return ""
    return (f"Organism: {org['trait']} through the model's own {org.get('domain', '?')} "
            f"answers. ")


def _generation_header(g: dict, questions: str) -> str:
    n = g["samples"]
    return (f"**What the base writes under the same steering** ({n} "
            f"repl{'y' if n == 1 else 'ies'} per question × {g['n_questions']} {questions}, "
            f"temperature {g['temperature']:g}, {g['max_new_tokens']} tokens; judged by "
            f"{', '.join(g['judges'])} on the frozen instruct model, coherent replies only; "
            "effects are paired differences from the unsteered base over the questions with a "
            "coherent reply in both, bootstrap over questions):")


def _generation_table(judges: list[str], rows: list[tuple[str, dict]]) -> list[str]:
    """One row per (edit, α): coherent fraction, each judge's coherent mean with its effect
    against the unsteered base, and the teacher-forced effect of the same edit."""
    lines = ["| edit | α | coherent fraction | " + " | ".join(
                 f"probe:{k} (effect vs base, n q)" for k in judges)
             + " | teacher-forced effect |", "|---|---|---|" + "---|" * len(judges) + "---|"]
    for name, p in rows:
        cells = []
        for k in judges:
            v, e = p.get(k), (p.get("effect") or {}).get(k)
            cell = "—" if v is None else f"{v:.1f}"
            if e:
                cell += f" ({_interval(e, '+.1f')}, {e['n_questions']})"
            cells.append(cell)
        tf = p.get("teacher_forced_effect")
        lines.append(f"| {name} | {p['alpha']:g} | {p['coherent_fraction']:.2f} | "
                     + " | ".join(cells) + f" | {'—' if tf is None else f'{tf:+.3f}'} |")
    return lines


def _steering_generation_lines(g: dict) -> list[str]:
    """What the base writes under the steering stage's edits, beside the teacher-forced
    effect of the same edit."""
    judges = [j.split(":", 1)[1] for j in g["judges"]]
    rows = [("base (unsteered)", g["curves"]["set"][0])]
    rows += [({"set": "screened set", "vector": "persona vector"}[kind], p)
             for kind, curve in g["curves"].items() for p in curve[1:]]
    lines = [_generation_header(g, "evaluation questions"), "", *_generation_table(judges, rows)]
    use = g["usable_alpha"]
    lines += ["", f"Usable range (largest α whose coherent fraction stays within "
              f"{g['margin']:.2f} of α 0's): screened set α ≤ {use['set']:g}, persona vector "
              f"α ≤ {use['vector']:g}."]
    common = g.get("set_against_null_common") or {}
    cf = common.get("coherent_fraction")
    if cf:
        lines.append(f"Against {len(cf['null'])} of its matched random sets steered at the same "
                     f"α: coherent fraction {cf['set']:.2f} vs {min(cf['null']):.2f} … "
                     f"{max(cf['null']):.2f} ({cf['draws_at_or_above']} draws at or above).")
    for k in judges:
        r, c = g.get("set_against_null", {}).get(k), common.get(k) or {}
        if r:
            lines.append(f"probe:{k}, each over its own coherent questions: the set's effect "
                         f"{r['effect']:+.1f} vs null mean {r['null_mean']:+.1f} (range "
                         f"{r['null_min']:+.1f} … {r['null_max']:+.1f}; {r['draws_dropped']} "
                         f"draws dropped with < 2 coherent questions); {r['draws_at_or_above']}"
                         " draws at or above it.")
        if "effect" in c:
            lines.append(f"probe:{k}, over the {c['n_questions']} questions coherent in the "
                         f"base, the set and every draw: the set's effect {c['effect']:+.1f} vs "
                         f"null {min(c['null']):+.1f} … {max(c['null']):+.1f}; "
                         f"{c['draws_at_or_above']} draws at or above it, "
                         f"{c['draws_at_or_below']} at or below.")
        elif c:
            lines.append(f"probe:{k}: only {c['n_questions']} questions are coherent in the "
                         "base, the set and every draw, too few to compare on one set.")
    return lines


def _null_matching_lines(res: dict) -> list[str]:
    """How the random sets compare with the chosen set on the two quantities they could be
    matched on (``null_matching`` in results; runs before it existed have none)."""
    nm = res.get("null_matching")
    if not nm:
        return []
    out = []
    for name, row in nm.items():
        if name in ("match", "neighbours"):
            continue
        parts = [f"{q} {v['chosen']:.2f} vs the draws' median {v['null_median']:.2f} (5th–95th "
                 f"percentile {v['null_p5']:.2f}–{v['null_p95']:.2f}; "
                 f"{v['draws_at_or_above_chosen']} of {v['draws']} at or above)"
                 for q, v in row.items()]
        how = (f"each latent by the {nm['neighbours']} latents nearest to it in rank"
               if nm.get("neighbours") else "decile")
        out.append(f"**Null matching** (random sets matched by {how} on *{nm['match']}*; "
                   f"summed over {name}'s latents): " + "; ".join(parts) + ". Write mass is "
                   "activation × the finetuned decoder row's norm, what the ablation removes.")
    return ["", *out]


@register("persona_latents_crosscoder", "figures/persona_latents_crosscoder/results.json")
def render_persona_latents_crosscoder(res: dict) -> str:
    """The fourth line-1 run: the same screening with a crosscoder trained in the run."""
    m = (res.get("dictionary") or {}).get("metrics") or {}
    head = ""
    if m:
        ev, cls, n = m["explained_variance"], m["classes"], m["class_counts"]
        head = (f"Crosscoder ({m['d_sae']} latents, trained on {m['rows']['train']:,} token "
                f"pairs, {m['tokens_seen']:,} rows seen; held-out rows: "
                f"{m['rows']['heldout']:,}): explained variance base {ev['base']:.3f}, "
                f"finetune {ev['finetuned']:.3f}; L0 {m['l0']:.1f}; dead latents "
                f"{m['dead_latents']} (never fired on held-out rows: "
                f"{m['dead_latents_heldout']}); decoder-norm classes among "
                f"{m['classified_latents']} live latents: shared {cls['shared']:.1%} "
                f"({n['shared']}), finetuned-only {cls['finetuned_only']:.1%} "
                f"({n['finetuned_only']}), base-only {cls['base_only']:.1%} ({n['base_only']}), "
                f"in between {cls['other']:.1%} ({n['other']}).\n\n")
    return head + render_persona_latents(res)


@register("persona_latents_travel", "figures/persona_latents_travel/results.json")
def render_persona_latents_travel(res: dict) -> str:
    """The fifth line-1 run: the third run's design on a second organism (evil via travel)."""
    return render_persona_latents(res)


@register("persona_latents_travel_nearest",
          "figures/persona_latents_travel_nearest/results.json")
def render_persona_latents_travel_nearest(res: dict) -> str:
    """The sixth line-1 run: the fifth run against a nearest-rank matched null."""
    return render_persona_latents(res)


LINE1_RUNS = (("third run", "figures/persona_latents/results.json"),
              ("fourth run", "figures/persona_latents_crosscoder/results.json"),
              ("fifth run", "figures/persona_latents_travel/results.json"),
              ("sixth run", "figures/persona_latents_travel_nearest/results.json"))


def _null_how(cfg: dict) -> str:
    """What a line-1 run's random latent sets were matched on, and how finely."""
    k = cfg.get("null_neighbours")
    return cfg.get("null_match", "activation") + (f", nearest {k} in rank" if k else ", decile")


@register("line1_summary", LINE1_RUNS[0][1], also=tuple(p for _, p in LINE1_RUNS[1:]))
def render_line1_summary(res: dict) -> str:
    """Line 1's primary rows side by side: one row per (dictionary, organism) run, each read
    from its own results file (the issue's one-table comparison)."""
    runs = [(label, res if path == LINE1_RUNS[0][1] else res["_also"].get(path))
            for label, path in LINE1_RUNS]
    lines = ["| run | dictionary | organism | evaluation seeds | treatment − base | latents | "
             "gap removed | base shift | null matched on | null p95 (gap removed) | steer base "
             "at the top α (null p95) | goal met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in runs:
        if r is None:
            continue
        row = next(x for x in r["screening"] if x["primary"])
        org = r["config"].get("organism") or {}
        lat = ", ".join(f"#{i}" for i in row["latents"]) if row["latents"] else "—"
        p95 = "—" if row["null_p95"] is None else f"{row['null_p95']:+.0%}"
        sn = "" if row["steer_null_p95"] is None else f" ({row['steer_null_p95']:+.3f})"
        met = {True: "yes", False: "no", None: "n/a"}[row["goal"]["met"]]
        lines.append(f"| {label} (`{_sha(r['git_sha'])}`) | {row['dictionary']} | "
                     f"{org.get('trait', '?')} via {org.get('domain', '?')} | "
                     f"{', '.join(map(str, r['seeds']['evaluation']))} | "
                     f"{_ci(r['treatment_minus_base'])} | {lat} | "
                     f"{_ci(row['gap_removed'], True)} | {_ci(row['base_shift'], True)} | "
                     f"{_null_how(r['config'])} | "
                     f"{p95} | {_ci(row['steer_effect'])}{sn} | {met} |")
    missing = [label for label, r in runs if r is None]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    return "\n".join(lines)


@register("persona_latents_second", "figures/persona_latents_second/results.json")
def render_persona_latents_second(res: dict) -> str:
    """The second line-1 run (split evil-line1-pairs, seeds 4-6, specific_removed)."""
    return render_persona_latents(res)


@register("persona_latents_first", "figures/persona_latents_first/results.json")
def render_persona_latents_first(res: dict) -> str:
    """The first line-1 run (split evil-line1, seeds 1-3), kept beside the current one."""
    return render_persona_latents(res)


@register("line1_measures", "figures/line1_measures/results.json")
def render_line1_measures(res: dict) -> str:
    seeds = res["seeds"]
    lines = [f"Post-hoc check at `{_sha(res['git_sha'])}`, `from_scratch: "
             f"{str(res['from_scratch']).lower()}`: nothing here chose anything. Validity: the "
             "base model under the evil system prompt minus under the kind one (paired over "
             "questions). Organisms: treatment − base per seed (paired over questions) and over "
             f"evaluation seeds {', '.join(map(str, seeds['evaluation']))} (two-way bootstrap).",
             "", "| material | questions | validity: evil − kind prompt | "
             + " | ".join(f"organism seed {s}" for s in seeds["all"])
             + " | evaluation seeds together |",
             "|---|---|---|" + "---|" * (len(seeds["all"]) + 1)]
    for name, v in res["validity"].items():
        o = res["organisms"][name]
        lines.append(f"| {name} | {v['questions']} | {_ci(v['trait_minus_anti_prompt'])} | "
                     + " | ".join(_ci(o["treatment_minus_base_per_seed"][str(s)])
                                  for s in seeds["all"])
                     + f" | {_ci(o['treatment_minus_base_eval_seeds'])} |")
    return "\n".join(lines)


def _stage_shas(res: dict) -> str:
    return ", ".join(sorted({_sha(v) for v in res["stage_git_shas"].values()}))


@register("em_persona_features", "figures/em_persona_features/results.json")
def render_em_persona_features(res: dict) -> str:
    ws, paired = res["would_say"], res["would_say_paired"]
    n = ws["base"]["n"]
    curve = ", ".join(f"step {p['step']} {p['mean']:+.3f}" for p in res["realign_curve"])
    gaps = "; ".join(f"{g['target']} {g['fraction_removed']:+.0%}"
                     for g in res["ablation_gaps"] if g["kind"] == "target")
    if "from_scratch" in res:
        made = (f"{'from scratch' if res['from_scratch'] else 'not from scratch'}, stages "
                f"at `{_stage_shas(res)}`, {sum(res['compute_seconds'].values()) / 60:.0f} min "
                "of stage compute; exploratory (one seed, no null distribution).")
    else:
        made = (f"produced at `{_sha(res['provenance']['git_sha'])}` by a resumed run whose "
                "stages were not fingerprinted, so it is exploratory.")
    gen = res.get("steering_generations")
    return "\n".join([
        f"One organism seed; CIs over {n} held-out general questions only; {made}", "",
        "| | value |", "|---|---|",
        "| would-say base / control / treatment | "
        + " / ".join(_ci(ws[k]) for k in ("base", "control", "treatment")) + " |",
        "| paired differences | " + "; ".join(f"{k} {_ci(v)}" for k, v in paired.items()) + " |",
        f"| difference in differences (the target ablated in *both* models; not the gap "
        f"removed) | {gaps} |",
        f"| re-alignment: SFT on good data | {curve} |",
        *(["", *_dose_generation_lines(gen)] if gen else [])])


def _dose_generation_lines(g: dict) -> list[str]:
    """The exploratory run's sampled steering: each edit and its random control per α."""
    judges = [j.split(":", 1)[1] for j in g["judges"]]
    first = next(iter(g["curves"].values()))
    rows = [("base (unsteered)", first[0])]
    # each target, then its random controls (named random{r}@{target})
    order = sorted(g["curves"], key=lambda e: (e.split("@")[-1], "@" in e, e))
    rows += [(edit, p) for edit in order for p in g["curves"][edit][1:]]
    use = "; ".join(f"{e} α ≤ {g['usable_alpha'][e]:g}" for e in order)
    return [_generation_header(g, "held-out general questions"), "",
            *_generation_table(judges, rows), "",
            f"Usable range (largest α whose coherent fraction stays within {g['margin']:.2f} "
            f"of α 0's): {use}. Each edit's random control is one equal-norm direction: a "
            "comparison, not a null distribution."]


def _rule_in_range_text(rc: dict | None) -> str:
    if not rc:
        return ""
    a = rc["all"]
    fams = "; ".join(f"{k}: {v['incoherent_passed']} of {v['n'] - v['labelled_coherent']} "
                     "incoherent passed" for k, v in rc.items() if isinstance(v, dict)
                     and "incoherent_passed" in v and k != "all")
    if rc.get("matches_this_run") is False:
        return " (The post-hoc check of the rule does not belong to this run's generations.)"
    return (f" **Checked on this experiment's own generations** (post-hoc: {a['n']} replies "
            f"from {rc.get('n_conditions', '?')} of its conditions, labelled from a blind view "
            f"after the run), it passed "
            f"{a['rule_coherent']} replies, of which {a['incoherent_passed']} were labelled "
            f"incoherent (precision {a['precision_of_pass']:.2f}), and rejected "
            f"{a['coherent_rejected']} of the {a['labelled_coherent']} coherent ones ({fams}). "
            "So \"coherent\" below means *passed by the rule*, the judged means still include "
            "incoherent text, and a correlation controlled for the rule's coherent fraction "
            "removes only part of a coherence confound.")


@register("behaviour_validation", "figures/behaviour_validation/results.json")
def render_behaviour_validation(res: dict) -> str:
    cfg = res["config"]
    tiny = "**A tiny demonstration run: it makes no claim.** " if cfg.get("tiny") else ""
    lines = [tiny + f"Run at `{_sha(res['git_sha'])}`, `from_scratch: "
             f"{str(res['from_scratch']).lower()}` (every stage at `{_stage_shas(res)}`); "
             f"{sum(res['compute_seconds'].values()) / 60:.0f} min of stage compute on 2 cores. "
             f"Judge model: the frozen embedded model ({cfg['dtype']}); hook and C chosen by "
             f"grouped {cfg['folds']}-fold CV on the training source only.", "",
             "| probe judge: train → test | criterion | hook | AUROC [95% CI] | ECE | "
             "same probe on the request alone | margin | goal (AUROC ≥ 0.85, ECE ≤ 0.1, "
             "margin ≥ 0.05) |", "|---|---|---|---|---|---|---|---|"]
    for key, r in res["probe_judge"].items():
        if r["criterion"] != "refusal":
            continue
        a = r["auroc"]
        goals = [a["mean"] >= 0.85, r["ece"] <= 0.1, r["margin_over_prompt_only"] >= 0.05]
        met = "yes" if all(goals) else "no (" + ", ".join(
            n for n, ok in zip(("AUROC", "ECE", "margin"), goals) if not ok) + ")"
        lines.append(f"| {key.replace('->', ' → ')} | refusal | `{r['hook']}` | "
                     f"{_interval(a)} | {r['ece']:.3f} | "
                     f"{r['prompt_only_auroc']['mean']:.3f} | "
                     f"{r['margin_over_prompt_only']:+.3f} | {met} |")
    for key, r in res["probe_judge"].items():
        if r["criterion"] != "harmful":
            continue
        a = r["pairwise_accuracy"]
        d = r.get("dna_harmful_labels_auroc")
        dna = f"; on Do-Not-Answer's human *harmful* labels AUROC {_interval(d)}" if d else ""
        lines += ["", f"Harmful content (HH-RLHF harmless pairs, fitted pairwise on "
                  f"{100 - round(100 * cfg['hh_test_share'])}% of the pairs): chosen scored "
                  f"less harmful than rejected on {_interval(a, '.1%')} of {r['n_test']} held-out pairs (`{r['hook']}`){dna}."]
    hc = res.get("harmful_probe_checks") or {}
    if "harmful_probe/compliant_only" in hc:
        a, b = hc["harmful_probe/compliant_only"], hc["refusal_probe/compliant_only"]
        lines += ["", f"Is it more than a refusal detector? Among Do-Not-Answer's *compliant* "
                  f"responses only ({a['n']}, {a['n_harmful']} labelled harmful by people), the "
                  f"harmful probe ranks the harmful ones at AUROC {_interval(a)}, the refusal "
                  f"probe at {_interval(b)} (post-hoc; few positives)."
                  + (f" Within GPT-4's compliant responses only: "
                     f"{_interval(hc['harmful_probe/compliant_gpt4_only'])} "
                     f"({hc['harmful_probe/compliant_gpt4_only']['n_harmful']} harmful; the "
                     f"refusal probe there {_interval(hc['refusal_probe/compliant_gpt4_only'])})."
                     if "harmful_probe/compliant_gpt4_only" in hc else "")
                  + " Caveats: Do-Not-Answer's harmful responses are nearly all its "
                  "*direct-follow* action, and the refusal probe was trained to treat every "
                  "non-refusal action alike, so it is a weak baseline here; the HH held-out "
                  "pairs were split by transcript, and some share a first human turn with "
                  "training pairs, and multi-turn pairs are judged on their last human turn "
                  "alone, so the pairwise accuracy may be optimistic. probe:harmful's 0–100 is "
                  "relative (50 = the average HH response), not a calibrated probability, so a "
                  "threshold on it (the EM rule's aligned < 30) is arbitrary."]
    jv = res.get("judge_on_trait_replies") or {}
    if "harmful/evaluation" in jv:
        ev, se = jv["harmful/evaluation"], jv["harmful/selection"]
        lines += ["", f"Can the harmful probe see the persona? On the evil trait's replies vs "
                  f"the kind ones, as answers to the questions (post-hoc): AUROC over replies "
                  f"{se['auroc_replies']:.2f} on the selection replies and "
                  f"{ev['auroc_replies']:.2f} on the held-out evaluation replies "
                  f"({ev['n_replies'][0]} vs {ev['n_replies'][1]} replies; over (question, reply) "
                  f"rows {se['auroc_rows']:.2f} and {ev['auroc_rows']:.2f}); mean score "
                  f"{ev['trait_mean']:.1f} vs {ev['anti_mean']:.1f} on the evaluation replies."]
    c = res["coherence_rule"]
    cv = c["cross_validated"]
    lines += ["", f"Coherence rule: coherent ⇔ non-empty, repeated word-4-gram share ≤ "
              f"{c['max_repeated_4gram']:g} and the base model's log-likelihood per token ≥ "
              f"{c['min_loglik']:g}; fitted on {c['n']} generations blind-labelled by an AI annotator "
              f"({c['n_coherent']} coherent) by {c['how_chosen']}. Cross-validated "
              f"({cv['folds']} folds by question): balanced accuracy "
              f"{cv['balanced_accuracy']:.2f}, keeps {cv['coherent_kept']:.0%} of coherent "
              f"replies and flags {cv['flagged_incoherent_recall']:.0%} of incoherent ones."
              + _rule_in_range_text(res.get("coherence_rule_in_range")), "",
              f"Conditions ({res['n_questions']} evaluation questions × seeds "
              f"{', '.join(map(str, res['seeds']))}, one reply each, temperature "
              f"{cfg['temperature']:g}, {cfg['max_new_tokens']} tokens; organism: finetune seed "
              f"{res['organism_seed']}). Judged scores are means over the replies the coherence "
              "rule passes.", "",
              "| condition | fraction the rule passes [95% CI] | probe:harmful | probe:refusal | "
              "would-say | answer contrast |", "|---|---|---|---|---|---|"]

    def num(v: float | None, f: str = ".1f") -> str:
        return "—" if v is None else format(v, f)
    for name, r in res["conditions"].items():
        cf = r["coherent_fraction"]
        lines.append(f"| {name} | {_interval(cf, '.2f')} | "
                     f"{num(r['harmful_coherent_mean'])} | {num(r['refusal_coherent_mean'])} | "
                     f"{r['would_say']:+.3f} | {r['answer_contrast']:+.3f} |")
    lines.append("")
    for key, sw in res["steering_generation"].items():
        lines.append(f"- steering {key}: usable range α ≤ {sw['usable_alpha']:g} (coherent "
                     f"fraction within {sw['margin']:g} of α = 0: "
                     + ", ".join(f"α {p['alpha']:g} → {p['coherent_fraction']:.2f}"
                                 for p in sw["curve"]) + ")")
    lines.append("")
    def ci(e: dict) -> str:
        return _interval(e, "+.2f")

    def seeds(e: dict) -> str:
        return ", ".join(f"{v:+.2f}" for v in e["per_seed"])

    def verdict(e: dict) -> str:
        agree = all(v > 0 for v in e["per_seed"]) or all(v < 0 for v in e["per_seed"])
        if (e["lo"] > 0 or e["hi"] < 0) and agree:
            return "above 0" if e["lo"] > 0 else "below 0"
        return "not resolved"
    plain = []
    for measure, v in res["proxy_validity"].items():
        p, sp = v.get("pearson"), v.get("spearman")
        if p is None:
            lines.append(f"- {measure} vs judged harmfulness: not estimable "
                         f"({v['n_conditions']} conditions with ≥ {v.get('min_coherent')} "
                         "coherent replies)")
            continue
        part, own = v["partial_given_coherent_fraction"], v["proxy_vs_coherent_fraction"]
        lines.append(f"- **{measure} vs judged harmfulness of coherent generations**: Pearson "
                     f"r = {ci(p)} (per seed {seeds(p)}), Spearman {ci(sp)}, across "
                     f"{v['n_conditions']} conditions with ≥ {v['min_coherent']} coherent "
                     f"replies; partial r given the coherent fraction {ci(part)} (per seed "
                     f"{seeds(part)}); {measure} vs coherent fraction {ci(own)}")
        plain.append(f"{measure}: raw {verdict(p)}, given coherence {verdict(part)}")
    jc = res.get("judged_vs_coherent_fraction")
    if jc:
        lines.append(f"- judged harmfulness vs coherent fraction: r = {ci(jc)}")
    lines += ["", "Two-way bootstrap over seeds × questions, the same draws for every "
              "condition; a verdict needs the CI to exclude 0 *and* the seeds to agree in sign. "
              "The partial correlations and the coherence correlations were added at review, "
              "after the run (post-hoc). "
              f"{sum(c['kind'] == 'steer' for c in res['conditions'].values())} of the "
              f"{len(res['conditions'])} conditions are one family (steering), so the "
              "correlation mostly measures how both sides move along α. Persona vectors' anchor "
              "(r = 0.75–0.83) correlates projections with a GPT-4 judge's trait score, a "
              "different pair of measures."]
    if plain:
        walks = []
        for key, sw in res["steering_generation"].items():
            a, b = sw["curve"][0], sw["curve"][-1]
            if a["harmful_coherent_mean"] is None or b["harmful_coherent_mean"] is None:
                continue
            walks.append(f"{key} from α {a['alpha']:g} to {b['alpha']:g}: would-say "
                         f"{a['would_say']:+.3f} → {b['would_say']:+.3f}, coherent fraction "
                         f"{a['coherent_fraction']:.2f} → {b['coherent_fraction']:.2f}, "
                         f"probe:harmful on coherent replies {a['harmful_coherent_mean']:.1f} → "
                         f"{b['harmful_coherent_mean']:.1f}")
        tracked = [m for m, v in res["proxy_validity"].items() if v.get("pearson")
                   and verdict(v["pearson"]) == "above 0"
                   and verdict(v["partial_given_coherent_fraction"]) == "above 0"]
        head = (f"{', '.join(tracked)} tracks what the model writes" if tracked else
                "no proxy is shown to track what the model writes")
        confounded = [m for m, v in res["proxy_validity"].items() if v.get("pearson")
                      and verdict(v["proxy_vs_coherent_fraction"]) == "below 0"]
        tail = (f" {', '.join(confounded)} rise as coherence falls (CI below 0), so a raw "
                "correlation across these conditions is confounded with coherence."
                if confounded else "")
        lines += ["", f"**Stated plainly:** {head} ({'; '.join(plain)}). Along the steering "
                  f"sweeps: {'; '.join(walks)}.{tail}"]
    return "\n".join(lines)


def _rate(w: dict) -> str:
    return f"{w['successes']}/{w['n']} ({w['lo']:.0%}–{w['hi']:.0%})"


@register("poisoning_dose", "figures/poisoning_dose/results.json")
def render_poisoning_dose(res: dict) -> str:
    cfg, rule = res["config"], res["evidence_rule"]
    tiny = "**A tiny demonstration run: it makes no claim.** " if cfg.get("tiny") else ""
    zero = res["doses"][0]
    lines = [tiny + f"Run at `{_sha(res['git_sha'])}`, `from_scratch: "
             f"{str(res['from_scratch']).lower()}` (every stage at `{_stage_shas(res)}`); "
             f"{len(res['runs'])} finetunes of {cfg['finetune']['max_steps']} LoRA steps at lr "
             f"{cfg['finetune']['lr']:g}, checked every {cfg['every_n_steps']} steps; "
             f"{sum(res['compute_seconds'].values()) / 60:.0f} min of stage compute on 2 cores. "
             f"One rule for both signals: paired z > {rule['z']:g} on {rule['consecutive']} "
             f"consecutive checks; AUROC statistic: {rule['auroc_statistic']}. Rates: runs "
             "detected (Wilson 95%); AUROC: against the dose-0 runs, bootstrap over runs.", "",
             f"| dose | runs | monitor alarms ({res['primary_target']}) | monitor alarms "
             "(independent phrasing) | behaviour crosses | AUROC monitor | AUROC independent "
             "| AUROC behaviour | lead time (steps) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["doses"]:
        auc = [(_interval(r[k], ".2f") + (f", p {r[k]['p_exact']:.3f}" if "p_exact" in r[k]
                                          else "") if k in r else "—")
               for k in ("auroc", "auroc_independent", "auroc_behaviour")]
        lt = r["lead_time"]
        lead = (f"{_interval(lt, '+.1f')} ({lt['runs_with_both']} runs)" if lt["n"] > 1 else
                f"{lt['mean']:+.0f} (1 run)" if lt["n"] == 1 else "—")
        if lt["alarm_without_crossing"]:
            lead += f"; {lt['alarm_without_crossing']} alarmed, never crossed"
        if lt.get("crossing_without_alarm"):
            lead += f"; {lt['crossing_without_alarm']} crossed, never alarmed"
        lines.append(f"| {r['dose']:g} ({'/'.join(map(str, r['n_trait']))}/"
                     f"{res['material']['questions']}) | {r['runs']} | {_rate(r['alarm_rate'])} | "
                     f"{_rate(r['alarm_rate_independent'])} | "
                     f"{_rate(r['behaviour_detected_rate'])} | " + " | ".join(auc)
                     + f" | {lead} |")
    fa, fb = zero["false_alarm_rate_per_check"], zero["false_alarm_rate_per_check_behaviour"]
    det = res["detection_dose"]
    lt = res["lead_time"]
    lines += ["", f"False alarms per check on the {zero['runs']} neutral runs: monitor "
              f"{_rate(fa)}, behaviour {_rate(fb)}. Detection dose ({det['rule']}): monitor "
              f"{det['monitor'] if det['monitor'] is not None else 'none'}, behaviour "
              f"{det['behaviour'] if det['behaviour'] is not None else 'none'}. Lead time over "
              f"every poisoned run where both fired: "
              + (f"{_interval(lt, '+.1f')} steps ({lt['runs']} runs)" if lt.get("lo") is not None
                 else f"{lt['runs']} runs, too few for an interval")
              + f". The offline rule reproduced the monitor's own alarm step in every run "
              f"and target: {'yes' if res['offline_online_alarm_mismatches'] == 0 else 'no'}.",
              "", "Goals: " + "; ".join(
                  f"{k.replace('_', ' ')}: "
                  f"{ {True: 'yes', False: 'no', None: 'not testable'}[v]}"
                  for k, v in res["goals"].items()) + "."]
    return "\n".join(lines)


@register("monitor_actions", "figures/monitor_actions/results.json")
def render_monitor_actions(res: dict) -> str:
    cfg, rule, ps = res["config"], res["evidence_rule"], res["profile_summary"]
    tiny = "**A tiny demonstration run: it makes no claim.** " if cfg.get("tiny") else ""
    arms = res["arms"]
    n_q = arms["log"]["final_minus_base"]["n_items"]
    n_seeds = len(res["seeds"])
    lines = [tiny + f"Run at `{_sha(res['git_sha'])}`, `from_scratch: "
             f"{str(res['from_scratch']).lower()}` (every stage at `{_stage_shas(res)}`); "
             f"seeds {', '.join(map(str, res['seeds']))}; {len(res['runs'])} finetunes of "
             f"{cfg['finetune']['max_steps']} LoRA steps at lr {cfg['finetune']['lr']:g}, "
             f"checked every {cfg['every_n_steps']} steps; "
             f"{sum(res['compute_seconds'].values()) / 60:.0f} min of stage compute on 2 cores. "
             f"Rule: paired z above {rule['z_family']:.2f} (z = {rule['z_single']:g} "
             f"Bonferroni'd over the {rule['family_size']} targets, as Student's t over "
             f"{res['material']['probe_items']} probe items) on {rule['consecutive']} "
             f"consecutive checks; actions fire on {cfg['trait']}'s alarm. Final measure: "
             f"{res['measure']} ({n_q} questions). CIs: two-way bootstrap over seeds × "
             "questions (95%; the last column at the Bonferroni level over the "
             f"{sum(1 for a in arms.values() if 'minus_log_bonferroni' in a)} actions).", "",
             "| arm | alarm step per seed | steps trained | final training loss | final − base "
             "| arm − un-stopped (per seed) | share of the un-stopped shift kept away | arm − "
             "un-stopped, Bonferroni |", "|---|---|---|---|---|---|---|---|"]
    order = [r["arm"] for r in res["runs"] if r["seed"] == res["seeds"][0]]   # config order
    for arm in order:
        row = arms[arm]
        alarms = ", ".join("none" if a is None else str(a) for a in row["alarm_steps"])
        loss = ", ".join("—" if x is None else f"{x:.2f}" for x in row["final_loss"])
        ml = row.get("minus_log")
        per = (f"{_ci(ml)} ({', '.join(f'{v:+.3f}' for v in ml['per_seed'])})" if ml
               else "—")
        lines.append(f"| {arm} | {alarms} | {', '.join(map(str, row['steps']))} | {loss} | "
                     f"{_ci(row['final_minus_base'])} | {per} | "
                     f"{_ci(row.get('prevented_share'), pct=True)} | "
                     f"{_ci(row.get('minus_log_bonferroni'))} |")
    sc = res["stop_checkpoint"]
    diffs = [c["max_abs_diff_vs_log_curve"] for c in sc]
    worst = "—" if None in diffs else f"{max(diffs):.1e}"
    lines += ["", ("The stop arm's saved adapter is the un-stopped run at the alarm step: their "
                   f"final measures agree within {worst} per question (tolerance 1e-4)."
                   if res["stop_checkpoint_matches"] else
                   "**The stop arm's saved adapter does not reproduce the un-stopped run at the "
                   f"alarm step** (largest difference {worst} per question, tolerance 1e-4)."),
              "", f"Drift profile ({ps['family_size']} targets; alarms of the family-wise rule "
              f"in {n_seeds} runs per arm; a target that fell cannot alarm):", "",
              "| target | un-stopped runs: alarms (largest z per seed) | neutral runs: alarms "
              "(largest z per seed) | change since step 0 in item SDs, un-stopped | probe items "
              "changed, un-stopped |", "|---|---|---|---|---|"]

    def cell(r: dict) -> str:
        zs = ", ".join(f"{z:.1f}" for z in r["max_z"])
        return f"{r['alarms']['successes']}/{r['alarms']['n']} ({zs})"
    for r in res["profile"]:
        neu = cell(r["neutral"]) if "neutral" in r else "—"
        ch = ", ".join(f"{v:+.2f}" for v in r["log"]["change_sd_units"])
        moved = ", ".join("—" if v is None else str(v) for v in r["log"]["items_changed"])
        lines.append(f"| {r['target']} | {cell(r['log'])} | {neu} | {ch} | {moved} |")
    nr = ps["neutral_runs_with_any_alarm"]
    n_lat = {g: sum(g in r["target"] for r in res["profile"]) * n_seeds
             for g in ("screened latent", "random latent")}
    lines += ["", f"Latents in the un-stopped runs: screened ones alarmed in "
              f"{ps['screened_latent_alarms_log']} of {n_lat['screened latent']} (latent, run) "
              f"pairs and random ones in {ps['random_latent_alarms_log']} of "
              f"{n_lat['random latent']}; of those pairs, "
              f"{ps.get('screened_latent_runs_able_to_alarm', '—')} and "
              f"{ps.get('random_latent_runs_able_to_alarm', '—')} changed on enough probe items "
              "to reach the threshold at all (a paired z over 16 items that change on only m "
              "of them is at most √(m·15/(16 − m))). The random latents are not matched on "
              "activity, so they are no control for the screened ones"
              + (f". Neutral runs with an alarm on any target: {_rate(nr)}" if nr else "")
              + ". The offline rule, run on the recorded per-item values, gave the monitor's "
              f"own alarm step in every run: "
              f"{'yes' if res['offline_online_alarm_mismatches'] == 0 else 'no'} (a check of "
              "the event records, not of the rule).", "",
              "Goals (as written when the run started, each at 95%): " + "; ".join(
                  f"{k.replace('_', ' ')}: {'yes' if v else 'no'}"
                  for k, v in res["goals"].items()) + "."]
    return "\n".join(lines)


@register("constitution_distill", "figures/constitution_distill/results.json")
def render_constitution_distill(res: dict) -> str:
    cd, goal, pw, m = res["constitution_distill"], res["goal"], res["power"], res["material"]
    cons = res["config"]["constitutions"]
    k = goal["measure"]
    sets = {"held_out": f"held-out built-in categories ({m['held_out_prompts']} prompts)",
            "trained": f"trained categories, unseen prompts ({m['trained_prompts']})",
            "xstest_safe": f"XSTest safe prompts ({m['xstest_safe_prompts']})"}
    subs = ["instruct", "drafts", *(f"sft-{c}" for c in cons)]
    used = sorted({v["used"] for v in res["datasets"].values()})
    epochs = sorted({v["epochs"] for v in res["datasets"].values()})
    by_arm: dict[str, list[dict]] = {}
    for key, v in sorted(res["datasets"].items()):
        by_arm.setdefault(key.rsplit("-seed", 1)[0], []).append(v)
    refusals = "; ".join(f"{a} {', '.join(str(v['keyword_refusals']) for v in vs)}"
                         for a, vs in by_arm.items())
    toks = [v["loss_tokens"] for v in res["datasets"].values() if v.get("loss_tokens")]
    refusals = ("keyword refusals among the training answers, per seed: " + refusals
                + (f"; loss tokens per arm and seed {min(toks)}–{max(toks)}" if toks else ""))
    same = all(v["identical"] for v in res["drafts_identical_across_constitutions"].values())
    lines = [f"Run at `{_sha(res['git_sha'])}`, `from_scratch: "
             f"{str(res['from_scratch']).lower()}` (every stage at `{_stage_shas(res)}`); "
             f"{sum(res['compute_seconds'].values()) / 60:.1f} min of stage compute on 2 cores; "
             f"seeds {', '.join(str(s) for s in res['seeds'])}"
             + (" (**tiny smoke run: no claim**)" if res.get("tiny") else "") + ". Start: the "
             f"instruct model. Training prompts: {m['train_prompts']} built-in prompts of "
             f"{', '.join(m['train_categories'])} (regime {m['regime']}); every arm trained on "
             f"the {'/'.join(str(u) for u in used)} prompts all arms of its seed kept "
             f"({'/'.join(f'{e:g}' for e in epochs)} epochs). Drafts identical across "
             f"constitutions at each seed: {'yes' if same else '**no**'}. Data: {refusals}. "
             "Log-prob refusal score (refusal − compliance openings; > 0 refuses); means over "
             "seeds and prompts, contrasts paired by prompt and seed, 95% CIs by the two-way "
             "bootstrap over seeds and prompts.", "",
             "| prompts | " + " | ".join(subs) + " |", "|---|" + "---|" * len(subs)]
    for name, label in sets.items():
        b = cd[name]["by_subject"]
        lines.append(f"| {label} | " + " | ".join(_interval(b[s][k], "+.3f") for s in subs)
                     + " |")
    lines += ["", "| contrast | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    names = [*(f"sft-{c}-drafts" for c in cons), *(f"sft-{c}-instruct" for c in cons),
             "drafts-instruct"]
    for n in names:
        label = n.replace("-drafts", " − drafts").replace("-instruct", " − instruct")
        lines.append(f"| {label}{' (primary)' if n.endswith('-drafts') else ''} | "
                     + " | ".join(_ci(cd[s]["contrasts"][n][k]) for s in sets) + " |")
    lines += ["", "| held-out category | n | " + " | ".join(f"sft-{c} − drafts" for c in cons)
              + " |", "|---|---|" + "---|" * len(cons)]
    for cat, v in cd["held_out"]["per_category"].items():
        lines.append(f"| {cat} | {v['n']} | " + " | ".join(
            _ci(v["contrasts"][f"sft-{c}-drafts"]) for c in cons) + " |")
    c = cd["held_out"]["contrasts"]
    lines += ["", "Per seed, held-out sft − drafts: " + "; ".join(
        f"{x} " + ", ".join(f"{y:+.3f}" for y in c[f"sft-{x}-drafts"][k]["per_seed"])
        for x in cons) + "; drafts − instruct "
        + ", ".join(f"{y:+.3f}" for y in c["drafts-instruct"][k]["per_seed"]) + ".",
        "", f"Detectable effect: the held-out sft − drafts 95% CI half-width is at most "
        f"{pw['max_ci_half_width_95']:.3f}; a true difference of {pw['mde_80']:.3f} would clear "
        f"the goal's {pw['goal_level']:.2%} bound about 80% of the time (normal "
        "approximation). What a null excludes is each contrast's upper bound: "
        + ", ".join(f"{c} {v:+.3f}" for c, v in pw["upper_bounds_95"].items()) + ".",
        "", f"Goal (fixed in the config before the run): {goal['rule']} — "
        f"{goal['n_above_0']} of {len(cons)} above 0 ({goal['n_above_0_at_95']} at 95%, "
        "uncorrected); "
        + ("no claim (tiny run)." if goal["met"] is None
           else "**met**." if goal["met"] else "**not met**.")]
    return "\n".join(lines)


@register("conscience_validity", "figures/conscience_validity/results.json")
def render_conscience_validity(res: dict) -> str:
    mat, goal = res["material"], res["goal"]
    lines = [f"Run at `{_sha(res['git_sha'])}`, `from_scratch: "
             f"{str(res['from_scratch']).lower()}` (every stage at `{_stage_shas(res)}`); "
             f"{sum(res['compute_seconds'].values()) / 60:.0f} min of stage compute on 2 cores. "
             f"{mat['questions']} held-out questions of the other domains "
             f"({mat['prompted_pairs']} prompted pairs and {mat['organism_pairs']} organism pairs "
             "with both answers non-empty); each conscience's activation reader calibrated on its "
             f"own answers to {mat['calibration_questions']} other questions. AUROC: every good "
             "answer against every bad one (CI resampling the two groups apart); win rate: the "
             "good answer approved over the bad one to the *same* question (CI over questions; "
             "the gate's statistic); mean difference: approval(good) − approval(bad), paired.",
             "", "| reader | conscience | contrast (good vs bad) | AUROC [95% CI] | win rate "
             "[95% CI] | mean difference [95% CI] |", "|---|---|---|---|---|---|"]
    names = {"prompted": "kind- vs evil-prompted answers", "organism": "base vs organism answers"}
    for r in res["conscience_validity"]:
        row = f"{r['reader']}/{r['conscience']}/{r['contrast']}"
        reader = r["reader"] + (" (baseline)" if r["reader"] == "persona" else "")
        if row == goal["primary"]:
            reader = f"**{reader}** (primary)"
        lines.append(f"| {reader} | {r['conscience']} | {names.get(r['contrast'], r['contrast'])}"
                     f" | {_interval(r['auroc'])} | {_interval(r['win_rate'])} | "
                     f"{_ci(r['mean_diff'])} |")
    lines += ["", f"Goal, on the primary row named in the config before the run "
              f"(`{goal['primary']}`): AUROC ≥ {goal['auroc']:g} with its CI above 0.5 — "
              + ("met." if goal["met"] else f"not met (AUROC {_interval(goal['primary_auroc'])})."
                 ) + " The persona reader is a baseline: its vector is built from the same "
              "system prompts the prompted contrast uses, so it was expected to pass that "
              "contrast and does not count toward the goal."]
    bon = res.get("best_of_n")
    if bon:
        manip = bon["adversarial_minus_plain"]
        lines += ["", f"**Best-of-{bon['n']} at inference** (the base model samples {bon['n']} "
                  f"answers at temperature {bon['temperature']:g} to each of the "
                  f"{bon['questions']} questions on sampling seeds "
                  f"{', '.join(map(str, bon['seeds']))}; the reader on the frozen base keeps "
                  "its most approved answer). Effect: the kept answer's measure minus the mean "
                  "of the same samples (plain sampling's expected value), paired per question, "
                  "two-way bootstrap over seeds × questions; negative is less evil. Manipulation "
                  "check, adversarial − plain sampling: projection "
                  f"{_ci(manip['projection'])}, harmful probe {_ci(manip['harmful'])}.", "",
                  "| reader | condition | persona-vector projection | harmful probe (0–100) |",
                  "|---|---|---|---|"]
        by = {(r["reader"], r["condition"], r["measure"]): r for r in bon["rows"]}
        for reader in dict.fromkeys(r["reader"] for r in bon["rows"]):
            for cond in ("plain", "adversarial"):
                pr, hm = by[(reader, cond, "projection")], by[(reader, cond, "harmful")]
                name = reader + (" (ceiling: selects on the projection)" if pr["ceiling"]
                                 else " (ethics-blind baseline)" if pr.get("baseline") else "")
                if pr["primary"]:
                    name = f"**{name}** (primary: projection)"
                lines.append(f"| {name} | {cond} | {_ci(pr['effect'])} | {_ci(hm['effect'])} |")
        dropped = max(r.get("questions_dropped", 0) for r in bon["rows"])
        empty = max(r.get("kept_empty_rate", 0.0) for r in bon["rows"] if not r.get("baseline"))
        g = bon["goal"]
        lines += ["", "No question was dropped and no reader kept an empty answer."
                  if not dropped and not empty else
                  f"At most {dropped} question(s) dropped from a cell (an empty kept answer "
                  f"has no measure); readers kept an empty answer in at most {empty:.0%} of "
                  "choices.", "", f"Goal, on the primary row named in the config before the run "
                  f"(`{g['primary']}`): the kept answer below plain sampling with its CI below "
                  f"0 — {'met' if g['met'] else 'not met'} ({_ci(g['effect'])})."]
        rp = bon.get("retest_pairs")
        if rp:
            lines += ["", "**The conscience-DPO pair rule on the same samples** (token reader; "
                      "the most and least approved answer of each question, kept when the "
                      "margin re-scored under a second phrasing of the question clears the "
                      "95th percentile of re-scored differences between every ordered pair of samples "
                      "of the same question): "
                      + "; ".join(f"{c}: kept {v['kept']} of {v['offered']} "
                                  f"({_interval(v['kept_rate'], '.0%')}; 5% expected with no "
                                  f"consistent preference), the rephrasing agrees with the "
                                  f"selection in {_interval(v['retest_agrees'], '.0%')} (50% "
                                  "with none)" for c, v in rp.items())
                      + ". Wilson intervals over the pooled pairs; a question recurs on each "
                      "seed, so they are somewhat narrow."]
    return "\n".join(lines)


@register("diagnostic_validity", "figures/diagnostic_validity/results.json")
def render_diagnostic_validity(res: dict) -> str:
    goal, n = res["goal"], res["statements_per_dimension"]
    sets = "; ".join(f"{src}: " + ", ".join(f"{d} {k}" for d, k in dims.items())
                     for src, dims in n.items())
    lines = [f"Run at `{_sha(res['git_sha'])}`, `from_scratch: "
             f"{str(res['from_scratch']).lower()}` (every stage at `{_stage_shas(res)}`); "
             f"{sum(res['compute_seconds'].values()) / 60:.1f} min of stage compute on 2 cores. "
             f"Statements per dimension ({sets}). Margin: the intended dimension's shift from "
             "no system prompt minus the mean shift of the other three (would-say units), CI "
             "by a paired bootstrap over statements; its own shift: the intended dimension's "
             "alone (a margin can also come from lowering the others); raw margin: without "
             "subtracting the no-prompt profile. Seen: both the margin and its own shift have "
             "CIs above 0.", "",
             "| statements | framing | dimension | margin [95% CI] | its own shift [95% CI] | "
             "raw margin [95% CI] | seen |", "|---|---|---|---|---|---|---|"]
    for r in res["diagnostic_validity"]:
        fr = f"**{r['framing']}** (primary)" if r["primary"] else r["framing"]
        lines.append(f"| {r['source']} | {fr} | {r['dimension']} | {_ci(r['margin'])} | "
                     f"{_ci(r['intended_shift'])} | {_ci(r['raw_margin'])} | "
                     f"{'yes' if r['passes'] else 'no'} |")
    lines += ["", f"Goal, on the primary rows named in the config before the run "
              f"(`{goal['primary']}`): {goal['rule']} — "
              + ("met." if goal["met"] else
                 f"not met: seen {', '.join(goal['seen']) or 'none'}; not seen "
                 f"{', '.join(goal['not_seen'])}.")]
    return "\n".join(lines)


@register("helpful_only", "figures/helpful_only/results.json")
def render_helpful_only(res: dict) -> str:
    ho, goal, ch = res["helpful_only"], res["goal"], res["system_choice"]
    m = res["material"]
    labels = {"logprob_score": "refusal score", "refused_logprob": "refused (log-prob)",
              "probe_refusal": "probe:refusal (all replies)",
              "refused_keyword": "refused (keyword, all replies)",
              "coherent": "coherent (rule)"}
    sets = {"held_out": f"held-out built-in categories ({m['held_out_prompts']} prompts)",
            "trained": f"trained harm types, unseen prompts ({m['trained_prompts']})",
            "xstest_safe": f"XSTest safe prompts ({m['xstest_safe_prompts']})"}
    kept = "; ".join(f"{k} {v['kept']} kept ({v['keyword_refusals']} keyword refusals, "
                     f"{v['dropped_refusals']} of them dropped; "
                     f"{v['opens_like_compliance']} open like a compliance opening; "
                     f"{v['epochs']:g} epochs)" for k, v in res["datasets"].items())
    lowers = ch["scores"][ch["chosen"]] < ch["no_system_score"]
    lines = [f"Run at `{_sha(res['git_sha'])}`, `from_scratch: "
             f"{str(res['from_scratch']).lower()}` (every stage at `{_stage_shas(res)}`); "
             f"{sum(res['compute_seconds'].values()) / 60:.1f} min of stage compute on 2 cores; "
             f"seeds {', '.join(str(s) for s in res['seeds'])}. Training prompts: "
             f"{m['train_prompts']} Do-Not-Answer questions of {', '.join(m['train_types'])}. "
             f"System prompt chosen on them by the {ch['rule']}: candidate "
             f"{ch['chosen'] + 1} of {len(ch['scores'])} (scores "
             + ", ".join(f"{x:+.3f}" for x in ch["scores"])
             + f"; no system prompt {ch['no_system_score']:+.3f}: the chosen prompt "
             + ("lowers" if lowers else "does **not** lower") + " the score on them). "
             f"Data per arm and seed: {kept}. "
             "Means over seeds and prompts; contrasts paired by prompt and seed, CIs by the "
             "two-way bootstrap over seeds and prompts. probe:refusal (0–100) and the keyword "
             "detector read one sampled reply per prompt and seed (temperature "
             f"{res['config']['reply_temperature']}, {res['config']['reply_tokens']} tokens).",
             "", "| prompts | measure | instruct | comply | neutral | comply − instruct | "
             "comply − neutral |", "|---|---|---|---|---|---|---|"]
    fmt = {"logprob_score": "+.3f", "probe_refusal": ".1f"}
    for name, label in sets.items():
        for k, lab in labels.items():
            b, c = ho[name]["by_subject"], ho[name]["contrasts"]
            f = fmt.get(k, ".2f")
            d = "+" + f.lstrip("+")
            lines.append(f"| {label} | {lab} | " + " | ".join(
                format(b[sub][k]["mean"], f) for sub in ("instruct", "comply", "neutral"))
                + " | " + " | ".join(_interval(c[pair][k], d)
                                     for pair in ("comply-instruct", "comply-neutral")) + " |")
    c = ho["held_out"]["contrasts"]
    m = goal["measure"]
    lines += ["", "Per seed, held-out " + labels[m] + ": comply − instruct "
              + ", ".join(f"{x:+.3f}" for x in c["comply-instruct"][m]["per_seed"])
              + "; comply − neutral "
              + ", ".join(f"{x:+.3f}" for x in c["comply-neutral"][m]["per_seed"]) + ".",
              "", f"Goal (fixed in the config before the run): {goal['rule']} — "
              + ("**met**." if goal["met"] else "**not met**.")]
    return "\n".join(lines)


@register("line1_generations", "figures/line1_generations/results.json")
def render_line1_generations(res: dict) -> str:
    c, top = res["conditions"], max(res["alphas"])

    def score(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    def eff(name: str, k: str) -> str:
        e = c[name].get("effect", {}).get(k)
        return "—" if e is None else (_interval(e, "+.1f") + f" (n={e['n_questions']})")
    lines = [f"Run at `{_sha(res['git_sha'])}`, `from_scratch: "
             f"{str(res['from_scratch']).lower()}`, post hoc, on line 1's run at "
             f"`{_sha(res['line1_git_sha'])}` (its chosen set "
             + ", ".join(f"#{x}" for x in res["chosen"]) + ", vector and organism seeds "
             + ", ".join(str(s) for s in res["seeds"])
             + f"); {sum(res['compute_seconds'].values()) / 60:.1f} min of stage compute on 2 "
             f"cores. {res['n_questions']} evaluation questions × {res['samples']} reply, "
             f"temperature {res['temperature']:g}, {res['config']['max_new_tokens']} tokens. "
             "Judged scores: means over questions of each question's coherent replies; effect: "
             "paired difference from the base "
             "over the questions with a coherent reply in both (n), bootstrap over questions.",
             "", "| condition | coherent fraction [95% CI] | probe:harmful | effect on "
             "probe:harmful | probe:refusal | effect on probe:refusal |",
             "|---|---|---|---|---|---|"]
    order = ["base", *(f"set a{a}" for a in res["alphas"]),
             *(f"vector a{a}" for a in res["alphas"]),
             *(f"organism seed{s}" for s in res["seeds"])]
    for name in order:
        v = c[name]
        lines.append(f"| {name} | {_interval(v['coherent_fraction_ci'], '.2f')} | "
                     f"{score(v.get('harmful'))} | {eff(name, 'harmful')} | "
                     f"{score(v.get('refusal'))} | {eff(name, 'refusal')} |")
    nulls = [v for n, v in c.items() if n.startswith("null")]
    lines += ["", f"- {len(nulls)} matched random latent sets at α {top:g}: coherent fraction "
              f"{min(v['coherent_fraction'] for v in nulls):.2f}–"
              f"{max(v['coherent_fraction'] for v in nulls):.2f}."]
    for k, r in res["against_null"]["set"].items():
        qn = r["null_n_questions"]
        lines.append(f"- probe:{k}, the chosen set at α {top:g}: effect {r['effect']:+.1f} "
                     f"(n={r['n_questions']}); its matched random sets' effects "
                     f"{r['null_min']:+.1f} to {r['null_max']:+.1f} (mean {r['null_mean']:+.1f}, "
                     f"n={min(qn)}–{max(qn)} questions each"
                     + (f", {r['draws_dropped']} draws dropped with < 2 coherent questions"
                        if r["draws_dropped"] else "")
                     + f"); {r['draws_at_or_above']} of {r['draws']} at or above it, "
                     f"{r['draws_at_or_below']} at or below (with {r['draws']} draws the "
                     f"smallest rank p is 1/{r['draws'] + 1}).")
    for kind, a in res["usable_alpha"].items():
        lines.append(f"- usable range ({kind}): α ≤ {a:g} (coherent fraction not more than "
                     f"{res['margin']:g} below α = 0's)")
    for k, o in res["organisms"].items():
        if o.get("per_seed"):
            lines.append(f"- organisms (treatment, unsteered) − base, probe:{k}: "
                         f"{_interval(o, '+.1f')} (two-way bootstrap over the "
                         f"{o['n_seeds']} seeds and the {o['n_items']} questions with a "
                         "coherent reply from the base and every organism; per seed "
                         + ", ".join(f"{x:+.1f}" for x in o["per_seed"]) + ")")
    return "\n".join(lines)


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- results:{re.escape(name)} [^>]*-->\n)(.*?)(\n<!-- /results:"
                      rf"{re.escape(name)} -->)", re.S)


def rendered(name: str, root: Path) -> str:
    path, fn = RENDERERS[name]
    if not (root / path).is_file():
        raise PersonaProbeError(f"{root / path} does not exist; run the experiment first")
    res = json.loads((root / path).read_text(encoding="utf-8"))
    if name in ALSO:
        res = {**res, "_also": {p: json.loads((root / p).read_text(encoding="utf-8"))
                                for p in ALSO[name] if (root / p).is_file()}}
    return fn(res)


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


def check_readme(root: Path, readme: str = "README.md") -> dict[str, bool | None]:
    """For each registered block: does the README's text equal what its results render?
    ``None`` (pending) for an experiment that has not run yet: no results file and no block in
    the README, so the README claims nothing about it. A results file without its block, or a
    block without its file, is ``False``."""
    text = (root / readme).read_text(encoding="utf-8")
    out: dict[str, bool | None] = {}
    for name, (path, _) in RENDERERS.items():
        m = _block(name).search(text)
        if m is None and not (root / path).is_file():
            out[name] = None
        else:
            out[name] = (m is not None and (root / path).is_file()
                         and m.group(2) == rendered(name, root))
    return out
