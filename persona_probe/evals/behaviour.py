"""What the model writes, measured beside what the teacher-forced proxies say.

Why: would-say and answer contrast read likelihoods of fixed replies; a steered or finetuned
model can move them while writing a refusal-like collapse or a loop. These helpers sample real
generations, score them with probe judges on a frozen model, and flag incoherent ones with the
coherence rule, so every generated behaviour is reported with its coherent fraction and only
coherent text is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from persona_probe.artifacts import ItemLog
from persona_probe.evals.coherence import CoherenceRule, coherence_features
from persona_probe.evals.probe_judge import ProbeJudge, probe_probabilities
from persona_probe.generation import generate_responses
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem

# the shipped probe judges (probe:NAME) a steering stage's generations are scored by
GENERATION_JUDGES = ("harmful", "refusal")


def sample_replies(subject: Subject, items: Sequence[PromptItem], seed: int,
                   max_new_tokens: int = 64, temperature: float = 1.0,
                   batch_size: int = 16) -> list[str]:
    """One sampled reply per item, empty replies kept (they count against coherence)."""
    got = generate_responses(subject, list(items), max_new_tokens, batch_size, temperature,
                             seed=seed, progress=False, keep_empty=True)
    return [it.messages[-1]["content"] for it in got]


def judge_replies(pairs: Sequence[tuple[str, str]], judges: dict[str, ProbeJudge],
                  rule: CoherenceRule, coherence_model: Subject) -> list[dict]:
    """Per (question, reply): each probe judge's 0–100 score on its own criterion, every
    coherence measure, and the rule's verdict."""
    feats = coherence_features(coherence_model, pairs)
    rows = [{**f, "coherent": rule.passes(f)} for f in feats]
    for name, p in probe_probabilities(judges, pairs).items():   # each on its own criterion
        for r, v in zip(rows, p):
            r[name] = float(100 * v)
    return rows


def coherent_mean(rows: Sequence[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r["coherent"] and r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def usable_alpha(curve: Sequence[dict], margin: float) -> float | None:
    """The largest α whose coherent fraction stays within ``margin`` of α = 0's, scanning up
    from 0 and stopping at the first α that falls out (a later recovery does not count).
    Negative α (steering away) are left out: the range is measured on the side steered to."""
    by_alpha = sorted((r for r in curve if r["alpha"] >= 0), key=lambda r: r["alpha"])
    if not by_alpha or by_alpha[0]["alpha"] != 0.0:
        raise ValueError("a usable range is measured from alpha = 0; include it")
    ref = by_alpha[0]["coherent_fraction"]
    best = 0.0
    for r in by_alpha[1:]:
        if r["coherent_fraction"] < ref - margin:
            break
        best = r["alpha"]
    return best


def judged_samples(subject: Subject, questions: Sequence[str], judges: dict[str, ProbeJudge],
                   rule: CoherenceRule, coherence_model: Subject, log: ItemLog, prefix: str,
                   samples: int = 1, seed: int = 0, max_new_tokens: int = 64,
                   steering: Callable[[], ContextManager] | None = None,
                   meta: dict | None = None) -> list[dict]:
    """``samples`` replies per question (keys ``{prefix}/s{s}/q{i}`` in ``log``; a re-run
    resumes), each judged by every probe judge and checked by the coherence rule. ``steering``
    makes the context the replies are *generated* in (e.g. ``lambda: steer(...)``); judging
    and coherence run outside it, on the frozen models."""
    keys = [f"{prefix}/s{s}/q{i}" for s in range(samples) for i in range(len(questions))]
    if not all(k in log for k in keys):
        items = [PromptItem(f"q{i}", [{"role": "user", "content": q}])
                 for i, q in enumerate(questions)]
        for s in range(samples):
            with steering() if steering is not None else nullcontext():
                replies = sample_replies(subject, items, seed + 1000 * s, max_new_tokens)
            pairs = list(zip(questions, replies))
            judged = judge_replies(pairs, judges, rule, coherence_model)
            log.append({"key": f"{prefix}/s{s}/q{i}", **(meta or {}), "sample": s,
                        "question": q, "reply": r, **j}
                       for i, ((q, r), j) in enumerate(zip(pairs, judged)))
    return [log.get(k) for k in keys]


Condition = tuple[str, dict, "Callable[[], ContextManager] | None"]


def judged_conditions(subject: Subject, conditions: Sequence[Condition],
                      questions: Sequence[str], judges: dict[str, ProbeJudge],
                      rule: CoherenceRule, coherence_model: Subject, log: ItemLog,
                      samples: int = 1, seed: int = 0, max_new_tokens: int = 64,
                      ) -> dict[str, list[dict]]:
    """``judged_samples`` for each (name, meta, steering) condition, all into one resumable
    log, every row tagged with its condition: the generation sweep an experiment's steering
    stage runs beside its teacher-forced measure."""
    return {name: judged_samples(subject, questions, judges, rule, coherence_model, log, name,
                                 samples, seed, max_new_tokens, steering,
                                 {"condition": name, **meta})
            for name, meta, steering in conditions}


def per_question(rows: Sequence[dict], key: str, n_q: int) -> np.ndarray:
    """Per question: the judge's mean over the coherent replies (NaN when none is coherent).
    Question indices come from the row keys (``…/q{i}``), so samples fold onto their question."""
    acc: list[list[float]] = [[] for _ in range(n_q)]
    for r in rows:
        if r["coherent"] and r.get(key) is not None:
            acc[int(r["key"].rsplit("/q", 1)[1])].append(float(r[key]))
    return np.array([np.mean(a) if a else np.nan for a in acc])


def compare_conditions(rows: dict[str, Sequence[dict]], judges: Sequence[str], n_q: int,
                       base: str = "base") -> dict[str, dict]:
    """Per condition: the coherent fraction (bootstrap over questions, samples as clusters),
    each judge's mean over questions of its coherent replies, and the paired effect against
    ``base`` over the questions with a coherent reply in both (why paired: the questions
    differ far more than the conditions do)."""
    from persona_probe.stats import cluster_bootstrap, paired_difference

    base_q = {k: per_question(rows[base], k, n_q) for k in judges}
    conds: dict[str, dict] = {}
    for name, rs in rows.items():
        c: dict = {"coherent_fraction_ci": cluster_bootstrap(
            [float(r["coherent"]) for r in rs], [r["key"].rsplit("/q", 1)[1] for r in rs],
            seed=0).to_dict(), "coherent_fraction": float(np.mean([r["coherent"] for r in rs])),
            "n": len(rs)}
        effect = {}
        for k in judges:
            q = per_question(rs, k, n_q)
            c[k] = float(np.nanmean(q)) if np.isfinite(q).any() else None
            both = np.isfinite(q) & np.isfinite(base_q[k])
            if name != base and both.sum() >= 2:
                effect[k] = {**paired_difference(q[both], base_q[k][both], seed=0).to_dict(),
                             "n_questions": int(both.sum())}
        if effect:
            c["effect"] = effect
        conds[name] = c
    return conds


def rank_against_null(conds: dict[str, dict], target: str, nulls: Sequence[str],
                      judges: Sequence[str]) -> dict[str, dict]:
    """Per judge: ``target``'s effect among the null conditions' effects (each over its own
    coherent questions, recorded; a draw with fewer than 2 such questions has no effect and is
    dropped and counted), with how many draws reach it from either side."""
    ranks: dict[str, dict] = {}
    for k in judges:
        e = conds[target].get("effect", {}).get(k)
        got = [conds[n]["effect"][k] for n in nulls if k in conds[n].get("effect", {})]
        if e is None or not got:
            continue
        arr = np.array([g["mean"] for g in got])
        ranks[k] = {"effect": e["mean"], "n_questions": e["n_questions"],
                    "null_mean": float(arr.mean()), "null_max": float(arr.max()),
                    "null_min": float(arr.min()), "draws": len(arr),
                    "draws_dropped": len(nulls) - len(arr),
                    "null_n_questions": [g["n_questions"] for g in got],
                    "draws_at_or_above": int((arr >= e["mean"]).sum()),
                    "draws_at_or_below": int((arr <= e["mean"]).sum())}
    return ranks


def coherence_means(rows: Sequence[dict]) -> dict:
    """The mean coherence measures of a condition's replies, reported beside its judged
    scores (the log-likelihood over the replies where it is finite)."""
    return {"repeated_4gram_share": float(np.mean([r["repeated_4gram_share"] for r in rows])),
            "loglik_per_token": float(np.mean([r["loglik_per_token"] for r in rows
                                               if np.isfinite(r["loglik_per_token"])]
                                              or [np.nan])),
            "empty_rate": float(np.mean([r["empty"] for r in rows]))}


def rank_against_null_common(rows: dict[str, Sequence[dict]], conds: dict[str, dict],
                             target: str, nulls: Sequence[str], judges: Sequence[str],
                             n_q: int, base: str = "base") -> dict:
    """``target`` against the null conditions on one question set: the questions with a
    coherent reply from ``base``, the target and every null (each condition's own coherent
    questions differ where coherence falls), and the coherent fractions (from
    ``compare_conditions``' ``conds``) ranked the same way."""
    frac = {n: conds[n]["coherent_fraction"] for n in [target, *nulls]}
    out: dict = {"coherent_fraction": {
        "set": frac[target], "null": [frac[n] for n in nulls],
        "draws_at_or_above": int(sum(frac[n] >= frac[target] for n in nulls))}}
    for k in judges:
        q = {n: per_question(rows[n], k, n_q) for n in [base, target, *nulls]}
        keep = np.all([np.isfinite(v) for v in q.values()], axis=0)
        if keep.sum() < 2:
            out[k] = {"n_questions": int(keep.sum())}
            continue
        eff = {n: float((q[n][keep] - q[base][keep]).mean()) for n in [target, *nulls]}
        null = np.array([eff[n] for n in nulls])
        out[k] = {"n_questions": int(keep.sum()), "effect": eff[target],
                  "null": null.tolist(), "draws_at_or_above": int((null >= eff[target]).sum()),
                  "draws_at_or_below": int((null <= eff[target]).sum())}
    return out


def summarize_judged(rows: Sequence[dict], judges: Sequence[str]) -> dict:
    """Coherent fraction, each judge's mean over coherent replies, mean coherence measures."""
    return {"n": len(rows),
            "coherent_fraction": float(np.mean([r["coherent"] for r in rows])),
            **{name: coherent_mean(rows, name) for name in judges},
            **coherence_means(rows)}


def steering_generation_sweep(subject: Subject, target, layers: Sequence[int],
                              alphas: Sequence[float], questions: Sequence[str],
                              judges: dict[str, ProbeJudge], rule: CoherenceRule,
                              coherence_model: Subject, samples: int = 1, seed: int = 0,
                              max_new_tokens: int = 64, margin: float = 0.1,
                              out: str | Path | None = None) -> dict:
    """Generations at each α (``samples`` per question), judged and checked for coherence:
    per α the coherent fraction, each judge's mean over coherent replies, the mean coherence
    measures; and the usable range (largest α within ``margin`` of α = 0's coherent fraction).
    Rows go to ``out/generations.jsonl`` as they are made (a re-run resumes)."""
    from persona_probe.interventions import steer

    log = ItemLog(Path(out) / "generations.jsonl" if out else None)
    curve = []
    for a in sorted(set(float(x) for x in [0.0, *alphas])):
        rows = judged_samples(subject, questions, judges, rule, coherence_model, log, f"a{a}",
                              samples, seed, max_new_tokens,
                              lambda a=a: steer(subject, target, a, list(layers)),
                              meta={"alpha": a})
        curve.append({"alpha": a, **summarize_judged(rows, list(judges))})
    return {"layers": list(layers), "curve": curve, "margin": margin,
            "usable_alpha": usable_alpha(curve, margin)}


def dose_response_generations(subject: Subject, targets: dict, config, questions: Sequence[str],
                              judges: dict[str, ProbeJudge], rule: CoherenceRule,
                              coherence_model: Subject, log: ItemLog, samples: int = 1,
                              seed: int = 0, max_new_tokens: int = 64) -> dict[str, list[dict]]:
    """A teacher-forced ``dose_response`` sweep's steering edits, sampled: the unsteered model
    (``base``) once, then every target *and its random controls* (``sweep_targets``: the same
    random directions the sweep measured) at each positive α of ``config``, each reply judged
    and checked for coherence. Conditions are named ``{edit} a{α}``; one resumable log."""
    from persona_probe.dose_response import sweep_targets
    from persona_probe.interventions import steer

    conditions: list[Condition] = [("base", {"kind": "base", "target": None, "alpha": 0.0},
                                    None)]
    for name, t in sweep_targets(subject, targets, config).items():
        conditions += [(f"{name} a{a}", {"kind": t.kind, "target": name, "alpha": float(a)},
                        lambda t=t, a=a: steer(subject, t.target, a, t.steer_layers))
                       for a in config.alphas if a > 0]
    return judged_conditions(subject, conditions, questions, judges, rule, coherence_model,
                             log, samples, seed, max_new_tokens)


def dose_generation_summary(rows: dict[str, list[dict]], judges: Sequence[str], n_q: int,
                            margin: float, teacher_forced: Sequence[dict] = ()) -> dict:
    """Per edit of ``dose_response_generations``: the curve over α (coherent fraction with its
    CI, each judge's coherent mean and paired effect against the unsteered model, the mean
    coherence measures, and the teacher-forced effect of the same edit at the same α when its
    ``dose_response`` summary rows are given), and the usable α (``usable_alpha``). A target's
    random controls are summarised the same way beside it: with few of them they are a
    comparison, not a null distribution."""
    if not rows.get("base"):
        raise ValueError("dose_generation_summary needs the unsteered 'base' condition's rows")
    rows = {name: rs for name, rs in rows.items() if rs}     # a condition with no replies
    conds = compare_conditions(rows, judges, n_q)
    for name, rs in rows.items():
        conds[name].update(coherence_means(rs))
    tf = {(r["target"], r["alpha"]): r["mean"] for r in teacher_forced
          if r.get("condition") == "steer"}

    def tf_effect(edit: str, alpha: float) -> dict:
        """The teacher-forced effect of the same edit at the same α, where both are known."""
        if (edit, alpha) in tf and (edit, 0.0) in tf:
            return {"teacher_forced_effect": tf[(edit, alpha)] - tf[(edit, 0.0)]}
        return {}
    curves: dict[str, list[dict]] = {}
    for name, rs in rows.items():
        if name == "base":
            continue
        edit, alpha = rs[0]["target"], rs[0]["alpha"]
        curves.setdefault(edit, [{"alpha": 0.0, **conds["base"], **tf_effect(edit, 0.0)}])
        curves[edit].append({"alpha": alpha, **conds[name], **tf_effect(edit, alpha)})
    for c in curves.values():
        c.sort(key=lambda p: p["alpha"])
    kinds = {rs[0]["target"]: rs[0]["kind"] for n, rs in rows.items() if n != "base"}
    return {"n_questions": n_q, "judges": list(judges), "margin": margin,
            "curves": curves, "kinds": kinds,
            "usable_alpha": {e: usable_alpha(c, margin) for e, c in curves.items()}}
