"""Dry runs of the experiment configs: parse and validate a config, and plan the stages its
script would run, without loading a model or touching ``--runs`` (``--dry-run`` of every
experiment script; the test suite runs it on every ``experiments/configs/*-gpu.json``, so a GPU
config cannot rot before a GPU is lent).

Validation beyond the config's own ``from_dict``: every ``shared:`` data file exists (when the
shared data directory is present), a ``sae-lens:`` SAE is in sae-lens's bundled registry and
was trained on the config's model, a layer is inside the model (for models whose depth is known
here), and the sibling configs a script reads exist. Anything wrong is a *problem*: the script
exits non-zero and the test fails.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from persona_probe.configs import read_json_config
from persona_probe.errors import PersonaProbeError

# Experiments run by ``script_main`` (experiments/<name>.py, config <name>-*.json).
STAGED = ("conscience_dpo", "early_warning", "em_persona_features", "emergent_alignment",
          "persona_latents", "line1_measures")
# Decoder layers of the models the configs name (checked offline; others are not checked).
KNOWN_LAYERS = {"smollm2-135m-instruct": 30, "Qwen/Qwen2.5-7B-Instruct": 28,
                "Qwen/Qwen2.5-0.5B-Instruct": 24}


class PlanError(PersonaProbeError):
    pass


@dataclass
class Plan:
    config: str
    experiment: str
    script: str
    model: str | None
    stages: list[dict[str, str]] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, name: str, what: str) -> None:
        self.stages.append({"stage": name, "what": what})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [f"dry run of {self.config} ({self.script}); nothing is loaded or written",
                 f"model: {self.model}"]
        lines += [f"data: {d['ref']} -> {d['path']} ({d['status']})" for d in self.data]
        lines.append(f"stages ({len(self.stages)}):")
        lines += [f"  {i + 1:2d}. {s['stage']}: {s['what']}" for i, s in enumerate(self.stages)]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"PROBLEM: {p}" for p in self.problems] or ["config OK"]
        return "\n".join(lines)


def experiment_of(path: str | Path) -> str:
    """Which experiment script reads a config, from its file name."""
    name = Path(path).name
    for exp in STAGED:
        if name.startswith(exp + "-"):
            return exp
    if name.startswith("em-"):
        return "em_induction"
    if name.startswith("organism-"):
        return "organism_generalization"
    try:                       # a staged experiment added later: persona_probe.experiments.<x>
        exp = name.split("-")[0]
        importlib.import_module(f"persona_probe.experiments.{exp}")
        return exp
    except ImportError:
        raise PlanError(f"{name}: no experiment script reads this config (known: "
                        f"{', '.join([*STAGED, 'em_induction', 'organism_generalization'])})"
                        ) from None


def plan_config(path: str | Path, experiment: str | None = None, **options: Any) -> Plan:
    """The dry-run plan of one config file (``experiment`` defaults to the file name's)."""
    path = Path(path)
    exp = experiment or experiment_of(path)
    raw = read_json_config(path, f"{exp} config", PlanError)
    if exp == "em_induction":
        return plan_em_induction(path, **options)
    if exp == "organism_generalization":
        return plan_organism_generalization(path, **options)
    module = importlib.import_module(f"persona_probe.experiments.{exp}")
    cls = next(v for v in vars(module).values()
               if isinstance(v, type) and v.__module__ == module.__name__
               and v.__name__.endswith("Config") and hasattr(v, "from_dict"))
    cfg = cls.from_dict(raw, str(path))
    plan = Plan(str(path), exp, f"experiments/{exp}.py --config {path.name}", _model_of(cfg))
    planner = getattr(module, "plan", None) or _PLANNERS.get(exp)
    if planner is None:
        plan.add("run", "the whole pipeline (this experiment has no stage plan)")
        plan.notes.append(f"{exp} has no planner in persona_probe.experiments.plan")
    else:
        planner(cfg, plan)
    _check_data(raw, plan)
    return plan


# --- shared validation -------------------------------------------------------------------------

def _model_of(cfg: Any) -> str | None:
    induce = getattr(cfg, "induce", None)
    if isinstance(induce, dict) and induce:
        from persona_probe.models import DEFAULT_MODEL
        return induce.get("model", DEFAULT_MODEL)
    return getattr(cfg, "model", None)


def _refs(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj] if obj.startswith("shared:") else []
    if isinstance(obj, dict):
        return [r for k, v in obj.items() if k != "//" for r in _refs(v)]
    if isinstance(obj, (list, tuple)):
        return [r for v in obj for r in _refs(v)]
    return []


def _check_data(raw: Any, plan: Plan) -> None:
    from persona_probe.datasets import shared_data_dir

    root = shared_data_dir()
    for ref in dict.fromkeys(_refs(raw)):
        if any(d["ref"] == ref for d in plan.data):
            continue
        if root is None:
            plan.data.append({"ref": ref, "path": None, "status": "not checked: no shared data"})
            continue
        p = root / ref.removeprefix("shared:")
        plan.data.append({"ref": ref, "path": str(p), "status": "found" if p.is_file()
                          else "MISSING"})
        if not p.is_file():
            plan.problems.append(f"data file {ref} is missing ({p})")


def _check_layer(plan: Plan, model: str | None, layer: int, what: str) -> None:
    n = KNOWN_LAYERS.get(str(model))
    if n is not None and not 0 <= layer < n:
        plan.problems.append(f"{what}: layer {layer} is outside {model} (layers 0..{n - 1})")


def _check_sae(plan: Plan, spec: str | None, model: str | None) -> str:
    """Describe an SAE spec, checking a registry id against sae-lens's bundled directory."""
    if spec is None:
        return "none (stage skipped)"
    if spec == "shipped":
        if model not in (None, "smollm2-135m-instruct"):
            plan.problems.append(f"sae 'shipped' is the embedded model's SAE, not {model}'s")
        return "the shipped SAE (saes/smollm2-135m-instruct)"
    if spec.startswith("sae-lens:"):
        try:
            from persona_probe.sae.io import registry_entry

            release, sae_id, sae_model = registry_entry(spec)
        except ImportError as exc:
            plan.notes.append(f"sae-lens is not importable ({exc}); {spec} not checked")
            return spec
        except PersonaProbeError as exc:
            plan.problems.append(str(exc))
            return spec
        if model and sae_model.lower().split("/")[-1] != str(model).lower().split("/")[-1]:
            plan.problems.append(f"{spec} was trained on {sae_model}, the config's model is "
                                 f"{model}")
        try:
            _check_layer(plan, model, int(sae_id.split("layer_")[1].split("_")[0]), spec)
        except (IndexError, ValueError):
            pass
        plan.notes.append(f"SAE {spec} is downloaded from the hub on first use")
        return f"{release}/{sae_id} (sae-lens registry, trained on {sae_model})"
    if not (Path(spec) / "cfg.json").is_file():
        plan.problems.append(f"sae {spec!r} is not an SAE directory (cfg.json missing)")
    return spec


def _hub_note(plan: Plan, model: str | None) -> None:
    if model and "/" in str(model) and not Path(str(model)).exists():
        plan.notes.append(f"{model} is a Hugging Face id: its weights must be in the HF cache "
                          "(or the hub reachable) where this runs")


def _finetune(ft: Any) -> str:
    batch = ft.batch_size * ft.grad_accum
    chats = "all" if ft.limit is None else str(ft.limit)
    return (f"LoRA r={ft.lora_r} on {ft.data} ({chats} chats from {ft.offset}), {ft.max_steps} "
            f"steps × {batch} chats, lr {ft.lr}, {ft.dtype or 'default dtype'} on "
            f"{ft.device}")


def _induce(plan: Plan, induce: dict, seed: int, prefix: str = "induce") -> Any:
    from persona_probe.training.induce import InductionConfig

    ind = InductionConfig.from_dict({**induce, "seed": seed})
    if ind.kind == "em":
        for arm in ("treatment", "control"):
            plan.add(f"{prefix}/{arm}", _finetune(ind.em_config(arm)))
        tr, ctrl = ind.em_config("treatment"), ind.em_config("control")
        if tr.data == ctrl.data:
            plan.problems.append(f"{prefix}: treatment and control train on the same data")
    else:
        org = ind.organism_config()
        plan.add(f"{prefix}/organism", _organism(org))
    return ind


def _organism(org: Any) -> str:
    ft = org.finetune
    return (f"{org.trait} through {org.domain}: {org.samples_per_question} answer(s) per "
            f"question (filter {org.filter}, keep {org.keep_fraction}), then LoRA "
            f"r={ft.get('lora_r', 16)} treatment and control, {ft.get('max_steps')} steps × "
            f"{ft.get('batch_size')}")


# --- one planner per experiment (the stage order of its ``run``) --------------------------------

def _plan_persona_latents(cfg: Any, plan: Plan) -> None:
    label = "shipped-sae" if cfg.sae == "shipped" else "sae"
    for seed in (cfg.selection_seed, *cfg.eval_seeds):
        role = "selection" if seed == cfg.selection_seed else "evaluation"
        plan.add(f"organism-seed{seed}", f"{role} organism: {_organism(cfg.organism_config(seed))}")
    plan.add("vector", f"persona vector on the {cfg.split} selection questions (base model)")
    plan.add("diff-items", f"base answers ({cfg.diff_max_new_tokens} tokens) to "
             f"{cfg.diff_per_domain} questions per other domain")
    sae = _check_sae(plan, cfg.sae, cfg.model)
    plan.add(f"screen-{label}",
             f"causal screening of {sae} latents ({_non_defaults(cfg.screening)})")
    for seed in cfg.eval_seeds:
        match = (f"{cfg.null_match}, nearest {cfg.null_neighbours} in rank"
                 if cfg.null_neighbours else f"{cfg.null_match} decile")
        plan.add(f"eval-seed{seed}", f"edits vs {cfg.null_draws} matched nulls ({match}) on the "
                 f"evaluation questions; vector edits {', '.join(cfg.vector_edits)}"
                 + ("" if cfg.directional_null else " (no random-direction null)"))
    if cfg.base_null:
        plan.add("base-null", f"the screened set's {cfg.null_draws} null draws ablated in the "
                 "base (the penalized null)")
    plan.add("steer-base", f"steer the base model, alphas {list(cfg.steer_alphas)}")
    plan.add("results", "aggregate (two-way bootstrap), results.json and figures")
    from persona_probe.traits import load_split   # the selection / evaluation split exists

    load_split(cfg.split)
    _hub_note(plan, cfg.model)


def _plan_em_persona_features(cfg: Any, plan: Plan) -> None:
    ind = _induce(plan, cfg.induce, cfg.seed)
    sae = _check_sae(plan, cfg.sae, ind.model)
    plan.add("vector", f"persona vector of {cfg.trait}, every layer, "
             f"{cfg.vector_questions or 'all'} extraction questions")
    plan.add("diff-items", f"base answers to {cfg.diff_per_domain} held-out questions per domain")
    plan.add("diff", f"{sae}: model diffing, top {cfg.top_latents} latents")
    plan.add("steer-base", f"top {cfg.steer_latents} latents and the vector, alphas "
             f"{list(cfg.alphas)}, {cfg.random_controls} random controls, {cfg.ablation_mode}")
    plan.add("ablate-treatment", "the same targets ablated in the treatment model")
    if cfg.steer_generations:
        plan.add("steer-generations", f"{cfg.steer_generations} replies per question, "
                 f"{cfg.generation_tokens} tokens, each edit and its random controls at every "
                 "positive alpha; probe:harmful, probe:refusal, coherence rule")
    plan.add("realign", f"{cfg.realign_steps} SFT steps on good data, measured every "
             f"{cfg.realign_every}")
    plan.add("results", "results.json and figures")
    _hub_note(plan, ind.model)


def _plan_early_warning(cfg: Any, plan: Plan) -> None:
    from persona_probe.training.induce import InductionConfig

    ind = InductionConfig.from_dict(cfg.induce)
    _check_layer(plan, ind.model, cfg.layer, "layer")
    plan.add(f"{cfg.trait}-vector", f"persona vector of {cfg.trait} at layer {cfg.layer}, "
             f"{cfg.vector_questions or 'all'} extraction questions")
    plan.add("probe-set", f"base answers to {cfg.probe_questions or 16} held-out questions")
    plan.add("reference", f"trait / anti answers, {cfg.reference_per_domain} questions per domain")
    for seed in cfg.seeds:
        first = len(plan.stages)
        _induce(plan, cfg.induce, seed, prefix=f"seed{seed}")
        for st in plan.stages[first:]:
            st["what"] += (f"; monitored (z > {cfg.z} on {cfg.consecutive} checks) with the "
                           f"behaviour every {cfg.every_n_steps} steps")
    plan.add("results", "lead times, results.json and timelines")
    _hub_note(plan, ind.model)


def _plan_conscience_dpo(cfg: Any, plan: Plan) -> None:
    ind = _induce(plan, cfg.induce, cfg.seed)
    plan.add("sft", f"SFT re-alignment: {cfg.steps} steps on good data "
             f"({cfg.prompts or 'all'} prompts)")
    plan.add("conscience", f"conscience DPO: {cfg.rounds} rounds × {cfg.steps // cfg.rounds} "
             f"steps ({cfg.conscience or 'defaults'})")
    plan.add("reference", f"base answers, {cfg.reference_per_domain} questions per other domain")
    plan.add("measures", "would-say and answer preference for base, no intervention, SFT, DPO")
    plan.add("conscience-check", "does the conscience tell trait from anti-trait answers")
    _hub_note(plan, ind.model)


def _plan_emergent_alignment(cfg: Any, plan: Plan) -> None:
    from persona_probe.experiments.emergent_alignment import (CONSTITUTIONS, model_names,
                                                              split_prompts)

    pool, reserved = split_prompts(cfg)            # every regime can draw its prompts
    _check_layer(plan, cfg.model, cfg.layer, "layer")
    plan.add("split", f"{len(pool)} training-pool prompts, {len(reserved)} reserved")
    plan.add("vectors", f"a persona vector per dimension ({', '.join(CONSTITUTIONS)}) at layer "
             f"{cfg.layer}")
    ft = cfg.finetune
    for name in model_names(cfg):
        plan.add(f"cai-{name}", f"critique, revise {cfg.train_prompts} prompts, SFT "
                 f"{ft.get('max_steps', 40)} steps")
    for name in ("base", *model_names(cfg)):
        plan.add(f"eval-{name}", "refusal, diagnostic, projections")
    plan.add("projectability", "profile shifts and projectability")
    if cfg.sae is not None:
        sae = _check_sae(plan, cfg.sae, cfg.model)
        plan.add("diff-items", "base answers to the reserved prompts")
        plan.add("latents", f"decompositions and diffing with {sae}")
    _hub_note(plan, cfg.model)


def _plan_line1_measures(cfg: Any, plan: Plan) -> None:
    plan.add("measures", "post-hoc line-1 measures over a finished persona_latents run")


_PLANNERS = {"persona_latents": _plan_persona_latents,
             "em_persona_features": _plan_em_persona_features,
             "early_warning": _plan_early_warning, "conscience_dpo": _plan_conscience_dpo,
             "emergent_alignment": _plan_emergent_alignment,
             "line1_measures": _plan_line1_measures}


# --- the two scripts with their own command lines ------------------------------------------------

def plan_em_induction(path: str | Path, arms: tuple[str, ...] = ("insecure", "secure"),
                      realign_steps: int = 30) -> Plan:
    """experiments/em_induction.py --config-dir DIR --config-suffix SUFFIX: one finetune per
    arm from ``em-<arm>-<suffix>.json``; re-alignment continues the insecure adapter on secure
    chats the control never saw."""
    from persona_probe.training.finetune import FinetuneConfig

    path = Path(path)
    _, arm0, suffix = path.stem.split("-", 2)
    plan = Plan(str(path), "em_induction", f"experiments/em_induction.py --config-dir "
                f"{path.parent} --config-suffix {suffix} --arms {' '.join(arms)}", None)
    if arm0 not in arms:
        arms = (arm0, *arms)
    cfgs = {}
    for arm in arms:
        p = path.parent / f"em-{arm}-{suffix}.json"
        if not p.is_file():
            plan.problems.append(f"arm {arm!r} needs {p.name}, which does not exist")
            continue
        raw = read_json_config(p, f"em {arm} config", PlanError)
        cfgs[arm] = FinetuneConfig.from_dict(raw, str(p))
        plan.add(f"finetune/{arm}", _finetune(cfgs[arm]))
        _check_data(raw, plan)
    models = {c.model for c in cfgs.values()}
    if len(models) > 1:
        plan.problems.append(f"the arms name different models: {sorted(models)}")
    plan.model = next(iter(models), None)
    plan.add("evaluate", "would-say (16 held-out questions) and the EM eval (self-judged) for "
             f"base and {', '.join(cfgs)}")
    if "insecure" in cfgs and realign_steps:
        if not (path.parent / f"em-secure-{suffix}.json").is_file():
            plan.problems.append(f"re-alignment reads em-secure-{suffix}.json, which does not "
                                 "exist")
        else:
            ctrl = cfgs.get("secure") or FinetuneConfig.from_file(
                path.parent / f"em-secure-{suffix}.json")
            plan.add("realign", f"{realign_steps} steps of the insecure adapter on {ctrl.data} "
                     f"from chat {ctrl.limit or 0} (chats the control never saw)")
            if ctrl.limit is None:
                plan.problems.append(f"em-secure-{suffix}.json trains on every secure chat "
                                     "(limit null), so re-alignment would reuse its chats")
    _hub_note(plan, plan.model)
    return plan


def plan_organism_generalization(path: str | Path,
                                 domains: tuple[str, ...] = ("cooking", "travel"),
                                 em_samples: int = 2) -> Plan:
    """experiments/organism_generalization.py --config PATH: per domain, the organism built
    and finetuned (treatment and control, monitored), then measured out of domain."""
    from persona_probe.training.organism import OrganismConfig

    path = Path(path)
    raw = read_json_config(path, "organism config", PlanError)
    base = OrganismConfig.from_dict(raw, str(path))
    plan = Plan(str(path), "organism_generalization",
                f"experiments/organism_generalization.py --config {path} --domains "
                f"{' '.join(domains)}", base.model)
    plan.add("persona vector", f"{base.trait} at layer 15; probe set from held-out questions")
    _check_layer(plan, base.model, 15, "monitored layer")
    for k, domain in enumerate(domains):
        org = OrganismConfig.from_dict({**raw, "domain": domain}, f"{path} ({domain})")
        plan.add(f"{domain}/organism", _organism(org) + "; monitored every 4 steps")
        if k == 0 and em_samples:
            plan.add(f"{domain}/em eval", f"EM eval, {em_samples} samples per paraphrase, "
                     "base and both arms")
    plan.add("results", "results.json and early-warning timelines")
    _check_data(raw, plan)
    _hub_note(plan, base.model)
    return plan


def _non_defaults(cfg: Any) -> str:
    """A nested config's fields that differ from its class's defaults (``defaults`` if none)."""
    changed = {k: v for k, v in asdict(cfg).items() if v != asdict(type(cfg)())[k]}
    return ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "defaults"
