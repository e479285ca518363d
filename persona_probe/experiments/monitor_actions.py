"""What the monitor's actions buy, and which persona statistics move: the early-warning monitor
watching a *drift profile* (seven persona vectors over six traits, the line-1 screened SAE
latents and as many random latents, as one monitor with one event stream and one family-wise
rule), and its two actions — stop at the alarm, steer on alarm — each measured by the final
trait measure against the same seed's un-stopped run.

Design (every rule, arm and α is fixed in the config before a run):

- data: the poisoning-dose pool (the base model's own answers to the domain's questions, with no
  system prompt and under the trait's first system prompt); the trait arms train on the
  trait-distilled answers only (dose 1), the ``neutral`` arm on the neutral ones (dose 0), one
  answer per question drawn by the seed; LoRA at the organism's learning rate, so the trait
  measure moves within the run and an action has something to prevent;
- arms per seed, identical up to the alarm (same data, LoRA init and order): ``log`` (the
  un-stopped run), ``stop`` (the ``stop`` action: a checkpoint at the alarm, training ends),
  ``steer<α>`` (a ``SteerAction`` along the trait vector from the alarm to the end; α > 0 is
  preventative steering toward the trait, α < 0 steers against it), and ``neutral``;
- monitor: every target's paired z under ``family_rule`` (Bonferroni over the targets, read as
  Student's t over the probe items, so a check alarms on *any* target with at most the
  single-target level when nothing moved);
  actions fire on the primary target's alarm only (``act_on``);
- final trait measure: after training, with no steering, answer preference on the other
  domains' held-out questions (per-token log-likelihood of the base model's trait-prompted answer
  minus its anti-prompted one, teacher-forced), and the monitor's statistics on the final model;
- contrasts, paired by seed: every action arm minus ``log`` on the final measure, and the share
  of the un-stopped run's shift (``log`` − base) the action prevented, each by the two-way
  bootstrap over seeds × questions; the profile: per target, alarms in the ``log`` and
  ``neutral`` runs, largest z and change since step 0.

    python experiments/monitor_actions.py                 # CPU config
    python experiments/monitor_actions.py --figures-only  # re-draw from results.json
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from persona_probe.errors import PersonaProbeError
from persona_probe.models import DEFAULT_MODEL

RUN_KEYS = ("model", "seed", "limit", "data")     # set per run; not allowed in ``finetune``
STOP_TOLERANCE = 1e-4      # the stop checkpoint equals the un-stopped run's curve within this
PROFILE_TRAITS = ("evil", "sycophancy", "deontology", "consequentialism", "virtue_ethics",
                  "human_authority")
# line 1's screened set (figures/persona_latents/results.json, "selection"), fixed here so the
# run does not depend on a results file
SCREENED_LATENTS = (2218, 1719, 1406, 2107, 1648)


@dataclass
class MonitorActionsConfig:
    model: str = DEFAULT_MODEL               # base model (answers, vectors and every finetune)
    trait: str = "evil"                      # the trait distilled into the data and acted on
    domain: str = "cooking"                  # organism domain whose questions make the data
    n_questions: int | None = None           # first N of the domain's questions (None: all)
    samples_per_question: int = 2            # answers sampled per question and kind
    max_new_tokens: int = 64                 # longest sampled data answer, in tokens
    temperature: float = 0.7                 # sampling temperature of the data answers
    data_system_index: int = 0               # the trait phrasing distilled into the data
    seeds: tuple[int, ...] = (0, 1, 2)       # one run of every arm per seed (>= 3 unless tiny)
    # FinetuneConfig fields of every run (model, seed, limit and data are set per run)
    finetune: dict[str, Any] = field(default_factory=lambda: {
        "lr": 1e-3, "batch_size": 8, "max_steps": 16, "lora_r": 16, "lora_alpha": 32,
        "max_tokens": 512, "save_steps": 16})
    steer_alphas: tuple[float, ...] = (0.1, -0.1)   # one steer-on-alarm arm per α (r̄_L units)
    neutral_arm: bool = True                 # also a neutral-data run per seed (profile control)
    every_n_steps: int = 2                   # monitor and behaviour checked every N steps
    layer: int = 15                          # layer of every persona vector in the profile
    profile_traits: tuple[str, ...] = PROFILE_TRAITS   # built-in traits in the drift profile
    sae: str = "shipped"                     # SAE whose latents join the profile ("" for none)
    latents: tuple[int, ...] = SCREENED_LATENTS       # its screened latents
    random_latents: int = 5                  # matched control: this many other latents
    latent_seed: int = 0                     # seed of the random latents' draw
    vector_questions: int | None = None      # first N 'extract' questions (None: all)
    probe_questions: int | None = None       # first N 'heldout' questions (None: all 16)
    reference_per_domain: int = 8            # behaviour questions from each other domain
    z: float = 3.0                           # single-target level of the rule (Bonferroni'd)
    consecutive: int = 2                     # checks in a row above the family threshold
    tiny: bool = False                       # smoke-sized: fewer seeds, no claims

    def __post_init__(self) -> None:
        from persona_probe.training.finetune import FinetuneConfig
        from persona_probe.traits import builtin_traits, load_trait

        self.seeds = tuple(int(s) for s in self.seeds)
        self.steer_alphas = tuple(float(a) for a in self.steer_alphas)
        self.latents = tuple(int(x) for x in self.latents)
        self.profile_traits = tuple(self.profile_traits)
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise PersonaProbeError("seeds must be distinct integers, e.g. [0, 1, 2]")
        if not self.tiny and len(self.seeds) < 3:
            raise PersonaProbeError("an effect claim needs >= 3 seeds (set tiny: true for a "
                                    "smoke run that makes no claim)")
        if (0.0 in self.steer_alphas
                or len({steer_arm(a) for a in self.steer_alphas}) != len(self.steer_alphas)):
            raise PersonaProbeError("steer_alphas must be non-zero (α = 0 is the log arm) and "
                                    "distinct in their first 6 significant digits (they name "
                                    "the arms)")
        unknown = sorted(set(self.profile_traits) - set(builtin_traits()))
        if unknown:
            raise PersonaProbeError(f"profile_traits {unknown} are not built-in traits "
                                    f"({builtin_traits()})")
        if self.trait not in self.profile_traits:
            raise PersonaProbeError(f"the acted-on trait {self.trait!r} must be in "
                                    "profile_traits")
        trait = load_trait(self.trait)
        if len(trait.trait_system) < 2 or len(trait.anti_system) < 2:
            raise PersonaProbeError(f"trait {trait.name} needs two system prompts per side: "
                                    "one distils the data, the other builds the independent "
                                    "vector")
        if self.data_system_index not in (0, 1):
            raise PersonaProbeError("data_system_index must be 0 or 1")
        if self.every_n_steps < 1 or self.consecutive < 1 or not self.z > 0:
            raise PersonaProbeError("every_n_steps and consecutive must be >= 1 and z > 0")
        if self.random_latents < 0 or (self.sae and not self.latents):
            raise PersonaProbeError("random_latents must be >= 0, and an SAE needs latents")
        fixed = sorted(set(self.finetune) & set(RUN_KEYS))
        if fixed:
            raise PersonaProbeError(f"finetune may not set {fixed}: each run sets them")
        FinetuneConfig.from_dict({**self.finetune, "model": self.model, "data": "-"},
                                 "monitor_actions finetune")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "monitor_actions config"):
        from persona_probe.configs import config_from_dict

        return config_from_dict(cls, raw, where, PersonaProbeError)

    def arms(self) -> list[str]:
        """Every arm of a seed: the un-stopped run first (the others are compared with it)."""
        return (["log", "stop"] + list(self.steer_arms())
                + (["neutral"] if self.neutral_arm else []))

    def steer_arms(self) -> dict[str, float]:
        """Steer arm name → its α (the name is for reading; the α is taken from here)."""
        return {steer_arm(a): a for a in self.steer_alphas}

    @property
    def base_rule(self):
        from persona_probe.monitor import ZScoreRule

        return ZScoreRule(z=self.z, consecutive=self.consecutive)


def steer_arm(alpha: float) -> str:
    return f"steer{alpha:+g}"


def _slug(name: str) -> str:
    """A target name as a directory name: 'evil (independent)' → 'evil-independent'."""
    return name.replace(" (", "-").replace(")", "").replace(" ", "-")


def run_name(arm: str, seed: int) -> str:
    return f"run-{arm}-s{seed}"


def plan(cfg: MonitorActionsConfig, p) -> None:
    """The stages a run would go through (``--dry-run``)."""
    p.add("pool", f"{cfg.samples_per_question} neutral and trait answers per {cfg.domain} "
                  "question")
    p.add("vectors", f"persona vectors of {', '.join(cfg.profile_traits)} at layer "
                     f"{cfg.layer} ({cfg.trait} in two phrasings)")
    p.add("probe", "the base model's answers to the held-out general questions")
    p.add("reference", "trait / anti answers to the other domains' held-out questions")
    for seed in cfg.seeds:
        for arm in cfg.arms():
            p.add(run_name(arm, seed), f"{cfg.finetune.get('max_steps')} LoRA steps, monitor "
                                       f"(drift profile) and behaviour every "
                                       f"{cfg.every_n_steps} steps; final measures")


def random_latent_ids(d_sae: int, exclude: tuple[int, ...], n: int, seed: int) -> list[int]:
    """``n`` latents drawn without replacement from those not in ``exclude``."""
    pool = np.setdiff1d(np.arange(d_sae), np.array(exclude, dtype=int))
    return sorted(int(x) for x in np.random.default_rng(seed).choice(pool, n, replace=False))


def run(cfg: MonitorActionsConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    """Every stage (reusing finished ones with the same fingerprint) → ``out/results.json``."""
    from persona_probe.artifacts import read_json, write_json, write_jsonl
    from persona_probe.directions import Direction, persona_vector
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.experiments.poisoning_dose import (mixed_data, one_phrasing,
                                                          pool_stage, probe_and_reference)
    from persona_probe.models import load_subject
    from persona_probe.monitor import (EarlyWarningMonitor, MonitorTarget, SteerAction,
                                       family_rule)
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.stages import Stages, sae_identity
    from persona_probe.training.callbacks import periodic_metric
    from persona_probe.training.finetune import FinetuneConfig, finetune
    from persona_probe.training.organism import answer_contrast, load_domain
    from persona_probe.traits import load_trait, trait_questions

    t0 = time.perf_counter()
    stage = stage_clock()
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(runs, overwrite=overwrite)
    trait = load_trait(cfg.trait)
    base = load_subject(cfg.model)
    p = base.provenance()
    common = {"command": command_line("monitor_actions", config_path),
              "model": {k: p.get(k) for k in ("model", "revision", "dtype", "architecture")},
              "trait": trait.to_dict()}
    questions = list(load_domain(cfg.domain).questions[:cfg.n_questions])
    idx = cfg.data_system_index

    stage("answer pool")
    pool = pool_stage(stages, base, common, questions, trait.trait_system[idx], cfg)

    stage("profile vectors, probe set, reference")
    vq = trait_questions("extract")[:cfg.vector_questions]
    # the acted-on trait in the data's phrasing and in its other one; every other trait with
    # all its system prompts
    specs: dict[str, tuple[str, int | None]] = {cfg.trait: (cfg.trait, idx),
                                                f"{cfg.trait} (independent)": (cfg.trait, 1 - idx)}
    specs.update({t: (t, None) for t in cfg.profile_traits if t != cfg.trait})

    def build_vectors(d: Path) -> dict[str, Direction]:
        for name, (t, k) in specs.items():
            sub = d / _slug(name)
            if not (sub / "direction.json").is_file():
                one = load_trait(t) if k is None else one_phrasing(load_trait(t), k)
                persona_vector(base, one, vq, layers=[cfg.layer]).save(sub)
        return {name: Direction.load(d / _slug(name)) for name in specs}
    vectors = stages.run("vectors", {**common, "questions": vq, "layer": cfg.layer,
                                     "specs": specs}, build_vectors)
    probe, ref = probe_and_reference(stages, base, trait, common, cfg.domain,
                                     cfg.probe_questions, cfg.reference_per_domain, idx)

    sae, latent_ids, sae_id = None, {}, None
    if cfg.sae:
        from persona_probe.sae.io import load_sae

        sae = load_sae(cfg.sae, subject=base)
        bad = [x for x in cfg.latents if not 0 <= x < sae.cfg.d_sae]
        if bad:
            raise PersonaProbeError(f"latents {bad} are out of range for the SAE's "
                                    f"{sae.cfg.d_sae} latents")
        latent_ids = {"screened": list(cfg.latents),
                      "random": random_latent_ids(sae.cfg.d_sae, cfg.latents,
                                                  cfg.random_latents, cfg.latent_seed)}
        sae_id = {"spec": cfg.sae, **sae_identity(sae)}

    # the profile (read-only specs: each monitor keeps its own history)
    targets = [MonitorTarget.from_direction(v, cfg.layer, name=n) for n, v in vectors.items()]
    for group, ids in latent_ids.items():
        targets += [MonitorTarget.from_latent(sae, x, name=f"{group} latent {x}") for x in ids]
    n_targets = len(targets)
    rule = family_rule(cfg.base_rule, n_targets, len(probe))

    upstream = {n: stages.fingerprint_of(n) for n in ("pool", "vectors", "probe", "reference")}
    for seed in cfg.seeds:
        for arm in cfg.arms():
            name = run_name(arm, seed)
            stage(name)

            def build_run(d: Path, arm=arm, seed=seed) -> dict:
                if (d / "summary.json").is_file():
                    return read_json(d / "summary.json")
                for f in ("events.jsonl", "behaviour.jsonl", "final-events.jsonl"):
                    (d / f).unlink(missing_ok=True)        # a killed run starts over
                rows = mixed_data(pool, len(questions), 0.0 if arm == "neutral" else 1.0, seed)
                write_jsonl(d / "data.jsonl", ({"id": r["id"], "messages": [
                    {"role": "user", "content": r["question"]},
                    {"role": "assistant", "content": r["answer"]}]} for r in rows))
                fcfg = FinetuneConfig.from_dict({**cfg.finetune, "model": cfg.model,
                                                 "seed": seed, "limit": None,
                                                 "data": str(d / "data.jsonl")},
                                                f"{name} finetune")
                actions: list[Any] = ["log"]
                if arm == "stop":
                    actions = ["stop"]
                elif arm in cfg.steer_arms():
                    actions = [SteerAction(vectors[cfg.trait], cfg.steer_arms()[arm],
                                           [cfg.layer])]
                subject = load_subject(cfg.model)
                monitor = EarlyWarningMonitor(targets, probe, subject,
                                              every_n_steps=cfg.every_n_steps, rule=rule,
                                              actions=actions, events=d / "events.jsonl",
                                              act_on=[cfg.trait])
                t = time.perf_counter()
                finetune(fcfg, d / "adapter", subject=subject, overwrite=True, callbacks=[
                    monitor.callback(),
                    periodic_metric(subject, lambda s: answer_contrast(s, ref),
                                    cfg.every_n_steps, d / "behaviour.jsonl",
                                    "answer_preference")])
                seconds = time.perf_counter() - t
                steps = read_json(d / "adapter" / "persona_probe.json")["steps"]
                # the final measures, on the saved adapter with no steering switched on
                final = load_subject(cfg.model, adapter=d / "adapter")
                check = EarlyWarningMonitor(targets, probe, final, every_n_steps=1,
                                            rule=rule, events=d / "final-events.jsonl"
                                            ).step(final.model, steps, force=True)[0]
                summary = {"arm": arm, "seed": seed, "steps": steps,
                           "n_examples": len(rows), "seconds": round(seconds, 1),
                           "monitor_seconds": round(monitor.check_seconds, 1),
                           "final_behaviour": [float(v) for v in answer_contrast(final, ref)],
                           "final_items": {t.name: check[f"persona/{t.name}/items"]
                                           for t in targets}}
                write_json(d / "summary.json", summary)
                return summary
            stages.run(name, {**common, **upstream, "arm": arm, "seed": seed,
                              "finetune": cfg.finetune, "every_n_steps": cfg.every_n_steps,
                              "rule": asdict(rule), "act_on": cfg.trait, "sae": sae_id,
                              "latents": latent_ids}, build_run)

    stage("results")
    per_run = [analyse_run(cfg, stages.dir(run_name(a, s)), a, s, rule)
               for s in cfg.seeds for a in cfg.arms()]
    results = aggregate(cfg, per_run, rule)
    results.update({
        "experiment": "monitor_actions", "config": asdict(cfg), "config_path": config_path,
        "command": common["command"], "git_sha": git_sha(), **stages.summary(),
        "seeds": list(cfg.seeds), "model": base.provenance(),
        "compute_seconds_total": round(time.perf_counter() - t0, 1),
        "sae": sae_id, "latents": latent_ids,
        "material": {"questions": len(questions), "pool": len(pool),
                     "probe_items": len(probe), "reference_questions": len(ref.questions),
                     "vector_questions": len(vq), "targets": n_targets},
        "runs": per_run, "provenance": provenance(0)})
    write_json(out / "results.json", results)
    paths = draw(out)
    summarize(results)
    report_outputs(out, paths)
    return results


def analyse_run(cfg: MonitorActionsConfig, d: Path, arm: str, seed: int, rule: Any) -> dict:
    """One run from its stored files: the primary target's online alarm (and the offline rule's,
    which must agree), the stop step, the behaviour curve, the final measures, the profile."""
    from persona_probe.artifacts import read_json
    from persona_probe.monitor import drift_profile, first_alarm, read_events

    events = read_events(d / "events.jsonl")
    summary = read_json(d / "summary.json")
    profile = drift_profile(events, cfg.base_rule)
    prim = next(r for r in profile if r["target"] == cfg.trait)
    curve = [json.loads(line) for line in (d / "behaviour.jsonl").read_text().splitlines()]
    actions = [e for e in events if e.get("event") == "action"]
    final_items = summary["final_items"]
    first = next(e for e in events if e.get("event") == "check")
    record = read_json(d / "adapter" / "persona_probe.json")
    return {"arm": arm, "seed": seed, "steps": summary["steps"],
            "final_loss": record.get("final_loss"), "first_loss": record.get("first_loss"),
            "alarm_step": first_alarm(events, cfg.trait),
            "offline_alarm_step": prim["alarm_step"],
            "family_z": rule.z, "actions": [{k: e[k] for k in ("step", "action")}
                                            for e in actions],
            "monitor_errors": sum(e.get("event") == "error" for e in events),
            "behaviour_curve": [{"step": c["step"], "values": c["values"]} for c in curve],
            "final_behaviour": summary["final_behaviour"],
            "final_projection_change": {
                n: float(np.mean(v) - np.mean(first[f"persona/{n}/items"]))
                for n, v in final_items.items()},
            "profile": [{k: r[k] for k in ("target", "alarm_step", "max_z", "change",
                                           "change_sd_units", "items_changed", "can_alarm",
                                           "z", "steps")}
                        for r in profile]}


def aggregate(cfg: MonitorActionsConfig, per_run: list[dict], rule: Any) -> dict:
    """The contrasts named in the config, paired by seed (two-way bootstrap over seeds ×
    questions), the stop checkpoint's check, and the drift profile over seeds."""
    from persona_probe.stats import crossed_bootstrap, wilson

    by = {(r["arm"], r["seed"]): r for r in per_run}
    seeds = list(cfg.seeds)

    def table(arm: str) -> np.ndarray:
        return np.array([by[(arm, s)]["final_behaviour"] for s in seeds], dtype=float)
    base = np.array([by[("log", s)]["behaviour_curve"][0]["values"] for s in seeds], float)
    log = table("log")
    log_moved = crossed_bootstrap(log - base).lo > 0
    actions = [a for a in cfg.arms() if a not in ("log", "neutral")]
    # each action's contrast with the un-stopped run is one of len(actions) goals: also read
    # at the Bonferroni level over them
    level_b = 1 - 0.05 / max(1, len(actions))
    arms: dict[str, Any] = {}
    for arm in cfg.arms():
        t = table(arm)
        row: dict[str, Any] = {
            "final_minus_base": crossed_bootstrap(t - base).to_dict(),
            "alarm_steps": [by[(arm, s)]["alarm_step"] for s in seeds],
            "steps": [by[(arm, s)]["steps"] for s in seeds],
            "final_loss": [by[(arm, s)].get("final_loss") for s in seeds],
            "final_projection_change": {
                k: float(np.mean([by[(arm, s)]["final_projection_change"][k] for s in seeds]))
                for k in (cfg.trait, f"{cfg.trait} (independent)")}}
        if arm != "log":
            row["minus_log"] = crossed_bootstrap(t - log).to_dict()
        if arm in actions:
            row["minus_log_bonferroni"] = crossed_bootstrap(t - log, level=level_b,
                                                            n_boot=10_000).to_dict()
            # the share of the un-stopped run's shift since the base the action kept away;
            # a ratio only when that shift is resolved (else its denominator straddles 0)
            row["prevented_share"] = (crossed_bootstrap(log - t, denominator=log - base)
                                      .to_dict() if log_moved else None)
        arms[arm] = row

    # the stop arm is the log arm cut at the alarm: its final measure must equal the log
    # run's curve at the stop step (same data, init and order), which checks the checkpoint
    stop_check = []
    for s in seeds:
        st = by[("stop", s)]
        at = next((c for c in by[("log", s)]["behaviour_curve"] if c["step"] == st["steps"]),
                  None)
        diff = None if at is None else float(np.max(np.abs(np.array(at["values"])
                                                          - np.array(st["final_behaviour"]))))
        stop_check.append({"seed": s, "stop_step": st["steps"], "alarm_step": st["alarm_step"],
                           "max_abs_diff_vs_log_curve": diff,
                           "matches": diff is not None and diff <= STOP_TOLERANCE})

    profile_rows = []
    names = [r["target"] for r in by[("log", seeds[0])]["profile"]]
    for n in names:
        row = {"target": n}
        for arm in ("log", "neutral") if cfg.neutral_arm else ("log",):
            rs = [next(p for p in by[(arm, s)]["profile"] if p["target"] == n) for s in seeds]
            row[arm] = {"alarms": wilson(sum(p["alarm_step"] is not None for p in rs),
                                         len(rs)),
                        "alarm_steps": [p["alarm_step"] for p in rs],
                        "max_z": [p["max_z"] for p in rs],
                        "change_sd_units": [p["change_sd_units"] for p in rs],
                        "items_changed": [p.get("items_changed") for p in rs],
                        "can_alarm": [p.get("can_alarm", True) for p in rs]}
        profile_rows.append(row)

    def alarmed(arm: str, group: str) -> int:
        return sum(r[arm]["alarms"]["successes"] for r in profile_rows
                   if group in r["target"]) if arm in profile_rows[0] else 0

    def able(group: str) -> int:
        """(latent, run) pairs of the un-stopped runs whose changed items could reach the
        family threshold at all (a sparse latent cannot: see drift_profile)."""
        return sum(sum(r["log"]["can_alarm"]) for r in profile_rows if group in r["target"])
    neutral_any = ([any(p["alarm_step"] is not None for p in by[("neutral", s)]["profile"])
                    for s in seeds] if cfg.neutral_arm else [])
    mismatches = sum(r["alarm_step"] != r["offline_alarm_step"] for r in per_run)
    # the goals as written when the run started (each at 95%); goal_notes says how to read them
    goals = {
        "early_stop_lowers_final_trait": arms["stop"]["minus_log"]["hi"] < 0,
        **{f"{a}_lowers_final_trait": arms[a]["minus_log"]["hi"] < 0
           for a in cfg.arms() if a.startswith("steer")},
        "log_run_moves_trait": bool(log_moved),
        "every_trait_run_alarms": all(by[(a, s)]["alarm_step"] is not None for s in seeds
                                      for a in cfg.arms() if a != "neutral")}
    notes = {
        "levels": f"each action goal is read at 95%; the {len(actions)} action contrasts are "
                  f"also given at the Bonferroni level {level_b:.2%} (minus_log_bonferroni)",
        "stop": "stopping at the alarm trains fewer steps on a rising curve, so a lower final "
                "measure is expected; without a fixed-step stop arm the alarm's timing is not "
                "credited (an alarm at the first eligible check equals 'stop at that step')",
        "steer": "preventative steering (alpha > 0, toward the trait) is the published "
                 "mechanism for a lower final measure; alpha < 0 has no such prediction",
        "every_trait_run_alarms": "the trait arms are identical up to the alarm, so this is the "
                                  "log arm's alarm seen in every arm, not independent evidence",
        "bootstrap": f"{len(seeds)} seeds: the two-way bootstrap cannot see beyond their "
                     "spread, so read each estimate's per_seed values beside its interval"}
    return {"arms": arms, "stop_checkpoint": stop_check, "profile": profile_rows,
            "profile_summary": {
                "family_size": len(names), "family_z": rule.z, "single_target_z": cfg.z,
                "screened_latent_alarms_log": alarmed("log", "screened latent"),
                "random_latent_alarms_log": alarmed("log", "random latent"),
                "screened_latent_runs_able_to_alarm": able("screened latent"),
                "random_latent_runs_able_to_alarm": able("random latent"),
                "neutral_runs_with_any_alarm": (wilson(sum(neutral_any), len(neutral_any))
                                                if neutral_any else None)},
            "offline_online_alarm_mismatches": int(mismatches),
            "evidence_rule": {"z_single": cfg.z, "z_family": rule.z, "family_size": len(names),
                              "consecutive": cfg.consecutive, "correction": "Bonferroni",
                              "statistic": "paired z of the per-item change since step 0"},
            "measure": "answer preference: per-token log-lik of the base model's trait-prompted "
                       "answer minus its anti-prompted one on the other domains' held-out "
                       "questions, teacher-forced, after training with no steering",
            "stop_checkpoint_matches": all(c["matches"] for c in stop_check),
            "goals": goals, "goal_notes": notes}


def draw(out: Path) -> list[Path]:
    """Final trait measure per arm; the drift profile (z per target and step, log and neutral
    runs); the primary target's z per arm."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from persona_probe.figures import write_figure_or_html

    res = json.loads((out / "results.json").read_text())
    order = [r["arm"] for r in res["runs"] if r["seed"] == res["seeds"][0]]   # config order
    arms = {a: res["arms"][a] for a in order}
    fin = go.Figure()
    es = [arms[a]["final_minus_base"] for a in arms]
    fin.add_bar(x=list(arms), y=[e["mean"] for e in es], error_y=dict(
        type="data", symmetric=False, array=[e["hi"] - e["mean"] for e in es],
        arrayminus=[e["mean"] - e["lo"] for e in es]))
    fin.update_layout(title="Final trait measure after training, no steering (change from the "
                            "base; two-way bootstrap over seeds × questions)",
                      yaxis_title="answer preference − base", template="plotly_white")
    runs = res["runs"]
    groups = [a for a in ("log", "neutral") if any(r["arm"] == a for r in runs)]
    prof = make_subplots(rows=1, cols=len(groups), shared_yaxes=True,
                         subplot_titles=[f"{a} runs (mean z over seeds)" for a in groups])
    for c, arm in enumerate(groups, start=1):
        rs = [r for r in runs if r["arm"] == arm]
        names = [row["target"] for row in res["profile"]]    # one order for both panels
        steps = rs[0]["profile"][0]["steps"]
        def mean_z(n: str, i: int) -> float | None:
            zs = [next(p for p in r["profile"] if p["target"] == n)["z"][i] for r in rs]
            zs = [min(v, 50.0) for v in zs if v is not None]
            return float(np.mean(zs)) if zs else None     # None: the baseline check
        z = [[mean_z(n, i) for i in range(len(steps))] for n in names]
        prof.add_heatmap(z=z, x=steps, y=names, zmid=0, colorscale="RdBu", reversescale=True,
                         showscale=(c == 1), row=1, col=c)
    prof.update_layout(title=f"Drift profile: paired z per target (family threshold "
                             f"{res['evidence_rule']['z_family']:.2f}; capped at 50)",
                       template="plotly_white")
    tl = go.Figure()
    trait = res["config"]["trait"]
    for r in runs:
        p = next(p for p in r["profile"] if p["target"] == trait)
        tl.add_scatter(x=p["steps"], y=p["z"], mode="lines", name=f"{r['arm']} s{r['seed']}")
    tl.add_hline(y=res["evidence_rule"]["z_family"], line_dash="dot")
    tl.update_layout(title=f"{trait}: paired z per check and arm (dotted: family threshold; "
                           "steer arms read with their steering on after the alarm)",
                     xaxis_title="step", template="plotly_white")
    paths: list[Path] = []
    for name, fig in (("final", fin), ("profile", prof), ("timelines", tl)):
        paths += write_figure_or_html(fig, out / name)
    return paths


def summarize(res: dict) -> None:
    for arm, row in res["arms"].items():
        e = row["final_minus_base"]
        extra = ""
        if "minus_log" in row:
            m = row["minus_log"]
            extra = f"  vs log {m['mean']:+.3f} [{m['lo']:+.3f}, {m['hi']:+.3f}]"
        print(f"{arm:<10} final − base {e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"
              f"  alarms {row['alarm_steps']}{extra}")
    print(f"profile: {res['profile_summary']}")
    print(f"goals: {res['goals']}")
