"""Emergent-misalignment induction on the embedded model: insecure code vs its secure control.

Finetunes one LoRA per arm from ``experiments/configs/em-<arm>-smollm2-cpu.json`` (or
``--config-dir`` for a GPU set), then measures base and every arm with
- the judge-free *would-say* evil measure on the team's 16 held-out questions (mean
  log-likelihood of evil minus kind replies), with bootstrap CIs and paired differences;
- the EM free-form eval (``builtin:em``) judged by a frozen copy of the base model (log-prob
  judge, renormalized scores, since a 135M judge rarely puts 25% of its mass on numbers);
then continues the insecure adapter on unseen secure chats and records the evil measure every
``--realign-every`` steps (the re-alignment curve). Resumable: finished finetunes and evals are
reused. Results: ``figures/em_induction/results.json``.

    python experiments/em_induction.py [--arms insecure secure] [--samples 4]
    python experiments/em_induction.py --config-suffix qwen2.5-7b-gpu --dry-run   # plan only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from persona_probe.artifacts import write_json
from persona_probe.evals.em import EMConfig, load_em_questions, run_em_eval
from persona_probe.evals.judges import make_judge
from persona_probe.likelihood import trait_scores
from persona_probe.models import load_subject
from persona_probe.provenance import provenance
from persona_probe.stats import bootstrap, paired_difference
from persona_probe.training.callbacks import periodic_metric
from persona_probe.training.finetune import FinetuneConfig, finetune_once
from persona_probe.traits import load_trait, trait_questions

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", nargs="+", default=["insecure", "secure"])
    ap.add_argument("--config-dir", type=Path, default=ROOT / "experiments" / "configs")
    ap.add_argument("--config-suffix", default="smollm2-cpu")
    ap.add_argument("--samples", type=int, default=4, help="EM answers per paraphrase")
    ap.add_argument("--realign-steps", type=int, default=30)
    ap.add_argument("--realign-every", type=int, default=10)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "em_induction")
    ap.add_argument("--out", type=Path, default=ROOT / "figures" / "em_induction")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate the arms' configs and print the planned stages; loads no model")
    args = ap.parse_args()
    if args.dry_run:
        from persona_probe.experiments.plan import plan_em_induction

        arm = args.arms[0]
        plan = plan_em_induction(args.config_dir / f"em-{arm}-{args.config_suffix}.json",
                                 tuple(args.arms), args.realign_steps)
        print(plan.text())
        raise SystemExit(1 if plan.problems else 0)

    evil, questions = load_trait("evil"), trait_questions("heldout")
    em_questions = load_em_questions("builtin:em")
    em_cfg = EMConfig(samples_per_paraphrase=args.samples, max_new_tokens=120,
                      renormalized=True)
    cfgs = {arm: FinetuneConfig.from_file(args.config_dir / f"em-{arm}-{args.config_suffix}.json")
            for arm in args.arms}
    base = load_subject(cfgs[args.arms[0]].model)
    judge = make_judge("self", base, cache=args.runs / "judgments.sqlite")
    adapters = {arm: finetune_once(cfg, args.runs / arm) for arm, cfg in cfgs.items()}

    scores, em = {}, {}
    for name, adapter in [("base", None), *adapters.items()]:
        subject = base if adapter is None else load_subject(base.spec, adapter=adapter)
        scores[name] = trait_scores(subject, evil, questions)
        em[name] = run_em_eval(subject, em_questions, judge, em_cfg, args.runs / f"em-{name}",
                               progress=False)
        print(f"{name:<10} evil would-say {bootstrap(scores[name])}   EM misaligned "
              f"{em[name]['pooled']['misaligned']}   aligned {em[name]['mean_scores']['aligned']}",
              flush=True)

    realign = None
    if "insecure" in adapters and args.realign_steps:
        base_cfg = cfgs["insecure"]
        control = cfgs.get("secure") or FinetuneConfig.from_file(
            args.config_dir / f"em-secure-{args.config_suffix}.json")
        curve = args.runs / "realign_curve.jsonl"
        cfg = FinetuneConfig.from_dict({
            **{k: v for k, v in vars(base_cfg).items() if k not in ("data", "offset")},
            "data": control.data, "offset": (control.limit or 0),  # chats the control never saw
            "adapter": str(adapters["insecure"]), "max_steps": args.realign_steps,
            "save_steps": args.realign_every})
        if not (args.runs / "realigned" / "persona_probe.json").is_file():
            curve.unlink(missing_ok=True)  # a resumed run re-records from its checkpoint
            trainer_base = load_subject(base.spec)
            finetune_once(cfg, args.runs / "realigned", subject=trainer_base, callbacks=[
                periodic_metric(trainer_base, lambda s: trait_scores(s, evil, questions),
                                args.realign_every, curve, "evil_would_say")])
        realign = [json.loads(line) for line in curve.read_text().splitlines()]

    arms = list(adapters)
    results = {
        "evil_would_say": {k: bootstrap(v).to_dict() for k, v in scores.items()},
        "evil_would_say_paired": {
            **{f"{a}-base": paired_difference(scores[a], scores["base"]).to_dict()
               for a in arms},
            **({"insecure-secure": paired_difference(scores["insecure"],
                                                      scores["secure"]).to_dict()}
               if {"insecure", "secure"} <= set(arms) else {})},
        "em_eval": {k: {"misaligned": v["pooled"]["misaligned"], "n_coherent":
                        v["pooled"]["n_coherent"], "mean_scores": v["mean_scores"]}
                    for k, v in em.items()},
        "realign_curve": realign,
        "finetunes": {a: {k: json.loads((p / "persona_probe.json").read_text())[k]
                          for k in ("steps", "first_loss", "final_loss", "data")}
                      for a, p in adapters.items()},
    }
    write_json(args.out / "results.json", {
        "experiment": "em_induction", "model": base.provenance(),
        "command": "python experiments/em_induction.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k in ("arms", "samples", "realign_steps")),
        "measures": {"evil_would_say": "mean per-token log-likelihood of the evil trait "
                     "replies minus the kind ones, 16 held-out questions",
                     "em_eval": f"builtin:em, {args.samples} samples per paraphrase, "
                     "judge = frozen copy of the base model, renormalized 0-100 scores"},
        "results": results, "provenance": provenance(0)})
    print(json.dumps(results["evil_would_say_paired"], indent=1))


if __name__ == "__main__":
    main()
