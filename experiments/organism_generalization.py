"""Does a narrow trait-distillation organism shift the persona out of domain on the embedded
model? Treatment vs its anti-trait control vs the base model, per narrow domain.

For each domain: build the organism (``persona-probe organism``'s pipeline), finetune both arms
with the early-warning monitor on the evil persona vector (layer 15), then measure on held-out
questions from the other domains and the team's general questions:
- would-say: likelihood of the trait's replies minus the anti-trait's (per question);
- answer contrast: likelihood of the base model's evil-prompted answer minus its kind-prompted
  answer to the same held-out question (teacher-forced, no system prompt);
- (first domain) the EM free-form eval judged by a frozen copy of the base model, renormalized.
The monitor's lead time is read against a judge-free behavioural rate recorded every 4 steps (the
fraction of held-out (question, evil reply, kind reply) choices that go the evil way; threshold:
the upper 95% CI of that rate before training). Resumable (every stage is skipped when its
output exists). Results:
``figures/organism/results.json``.

    python experiments/organism_generalization.py [--domains cooking travel] [--em-samples 2]
    python experiments/organism_generalization.py --figures-only     # re-draw from results
    python experiments/organism_generalization.py --config CONFIG --dry-run   # plan only
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from persona_probe.artifacts import write_json
from persona_probe.configs import read_json_config
from persona_probe.directions import Direction, persona_vector
from persona_probe.evals.em import EMConfig, load_em_questions, run_em_eval
from persona_probe.evals.judges import make_judge
from persona_probe.models import load_subject
from persona_probe.monitor import (EarlyWarningMonitor, MonitorTarget, first_alarm, lead_time,
                                   probe_set_from_answers, read_events)
from persona_probe.provenance import provenance
from persona_probe.training.callbacks import periodic_metric
from persona_probe.training.early_warning import trait_preference
from persona_probe.training.organism import ARMS, OrganismConfig, run_organism
from persona_probe.traits import load_trait, trait_questions

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "experiments" / "configs"
                    / "organism-evil-cooking-smollm2-cpu.json")
    ap.add_argument("--domains", nargs="+", default=["cooking", "travel"])
    ap.add_argument("--em-samples", type=int, default=2)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "organism")
    ap.add_argument("--out", type=Path, default=ROOT / "figures" / "organism")
    ap.add_argument("--figures-only", action="store_true")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate --config and print the planned stages; loads no model")
    args = ap.parse_args()
    if args.dry_run:
        from persona_probe.experiments.plan import plan_organism_generalization

        plan = plan_organism_generalization(args.config, tuple(args.domains), args.em_samples)
        print(plan.text())
        raise SystemExit(1 if plan.problems else 0)
    if args.figures_only:
        draw(args.out)
        return
    raw = read_json_config(args.config, "organism config")
    base_cfg = OrganismConfig.from_dict(raw, str(args.config))
    base = load_subject(base_cfg.model)
    trait = load_trait(base_cfg.trait)
    vec_dir = args.runs / f"{trait.name}-vector"
    if not (vec_dir / "direction.json").is_file():
        persona_vector(base, trait, trait_questions("extract"), layers=[15]).save(vec_dir)
    vec = Direction.load(vec_dir)
    probe = probe_set_from_answers(base, trait_questions("heldout"))
    results = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for k, domain in enumerate(args.domains):
        cfg = OrganismConfig.from_dict({**raw, "domain": domain})
        out = args.runs / domain
        monitors = {arm: EarlyWarningMonitor([MonitorTarget.from_direction(vec)], probe, base,
                                             every_n_steps=4,
                                             events=out / f"{arm}-events.jsonl")
                    for arm in ARMS}
        behaviour = trait_preference(trait, trait_questions("heldout"))
        curves = {arm: out / f"{arm}-behaviour.jsonl" for arm in ARMS}
        for arm in ARMS:
            if not (out / f"ft-{arm}" / "persona_probe.json").is_file():
                curves[arm].unlink(missing_ok=True)   # re-recorded with the (re)started run
                (out / f"{arm}-events.jsonl").unlink(missing_ok=True)
        summary = run_organism(base, cfg, out, callbacks={
            a: [m.callback(), periodic_metric(base, behaviour, 4, curves[a],
                                              "evil_preference")]
            for a, m in monitors.items()})
        monitor = {}
        for arm in ARMS:
            ev = read_events(out / f"{arm}-events.jsonl")
            checks = [e for e in ev if e["event"] == "check"]
            key = f"persona/{vec.name}@15"
            curve = [json.loads(line) for line in curves[arm].read_text().splitlines()]
            # behavioural threshold: the upper 95% CI of the rate before training
            lt = lead_time(first_alarm(ev), [(p["step"], p["mean"]) for p in curve],
                           curve[0]["hi"])
            monitor[arm] = {**lt, "steps": [e["step"] for e in checks],
                            "projection": [e[f"{key}/projection"] for e in checks],
                            "z": [e.get(f"{key}/z") for e in checks],
                            "behaviour": [{k: p[k] for k in ("step", "mean", "lo", "hi")}
                                          for p in curve]}
            shutil.copyfile(out / f"{arm}-events.jsonl",
                            args.out / f"events-{domain}-{arm}.jsonl")
        entry = {"measures": summary["measures"], "results": {
            m: {"by_subject": r["by_subject"], "paired": r["paired"]}
            for m, r in summary["results"].items()}, "monitor": monitor,
            "heldout": summary["heldout"]}
        if k == 0 and args.em_samples:
            judge = make_judge("self", base, cache=args.runs / "judgments.sqlite")
            em_cfg = EMConfig(samples_per_paraphrase=args.em_samples, max_new_tokens=120,
                              renormalized=True)
            em = {}
            for name, adapter in [("base", None), *((a, out / f"ft-{a}") for a in ARMS)]:
                sub = base if adapter is None else load_subject(base.spec, adapter=adapter)
                s = run_em_eval(sub, load_em_questions(), judge, em_cfg, out / f"em-{name}",
                                progress=False)
                em[name] = {"misaligned": s["pooled"]["misaligned"],
                            "n_coherent": s["pooled"]["n_coherent"],
                            "mean_scores": s["mean_scores"]}
            entry["em_eval"] = em
        results[domain] = entry
        for m, r in entry["results"].items():
            for pair, e in r["paired"].items():
                print(f"{domain:<10} {m:<16} {pair:<20} {e['mean']:+.3f} "
                      f"[{e['lo']:+.3f}, {e['hi']:+.3f}]", flush=True)
        print(f"{domain:<10} monitor: "
              f"{ {a: (v['alarm_step'], v['behaviour_crossing_step'], v['lead_time']) for a, v in monitor.items()} }",
              flush=True)
    write_json(args.out / "results.json", {
        "experiment": "organism_generalization", "model": base.provenance(),
        "config": raw, "command": "python experiments/organism_generalization.py --domains "
        + " ".join(args.domains) + f" --em-samples {args.em_samples}",
        "persona_vector": {"trait": trait.name, "layer": 15,
                           "questions": len(trait_questions("extract"))},
        "results": results, "provenance": provenance(base_cfg.seed)})
    draw(args.out)


def draw(out: Path) -> None:
    """Early-warning timelines (monitored projection, alarm threshold, alarms, behavioural rate)
    per domain and arm, from the saved results and events: HTML (and PNG where kaleido finds a
    Chromium)."""
    from persona_probe.figures import early_warning_timeline, write_figure_or_html

    res = json.loads((out / "results.json").read_text())
    for domain, entry in res["results"].items():
        for arm, mon in entry["monitor"].items():
            fig = early_warning_timeline(
                out / f"events-{domain}-{arm}.jsonl",
                behaviour=[(p["step"], p["mean"]) for p in mon["behaviour"]],
                behaviour_threshold=mon["threshold"], behaviour_label="evil preference rate",
                title=f"Early warning, {domain} organism, {arm}")
            write_figure_or_html(fig, out / f"early_warning-{domain}-{arm}")


if __name__ == "__main__":
    main()
