"""Is the line-1 trait measure valid, and did each organism move on it? A check run after
``persona_latents`` on its organisms (post hoc, and labelled so: nothing here chose anything).

For three sets of material — *selection* (``extract`` questions, ``evil.json``'s replies),
*evaluation* (the 40 ``evaluation`` questions, ``splits/evil-line1.json``'s replies) and the
exploratory run's *heldout* (16 ``heldout`` questions, ``evil.json``'s replies) — it reports

- validity: the base model's would-say under the trait's system prompt minus under the anti-trait
  prompt (a measure that cannot tell those apart cannot see a persona shift);
- the organisms: treatment − base for every organism seed, and over the evaluation seeds with
  the two-way bootstrap.

    python experiments/line1_measures.py [--runs runs/persona_latents]
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from persona_probe.errors import PersonaProbeError
from persona_probe.models import DEFAULT_MODEL


@dataclass
class Line1MeasuresConfig:
    model: str = DEFAULT_MODEL                      # base model the organisms were trained on
    dtype: str = "bfloat16"                         # float32 | bfloat16 | float16 for scoring
    organism_runs: str = "runs/persona_latents"     # the persona_latents --runs directory
    seeds: tuple[int, ...] = (0, 1, 2, 3)           # organism seeds measured (organism-seedN)
    eval_seeds: tuple[int, ...] = (1, 2, 3)         # of seeds, pooled by the two-way bootstrap
    split: str = "evil-line1"                       # measure split: a data/splits name or a JSON
    # free-form notes kept in the results' config (the run itself never reads them)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.seeds, self.eval_seeds = tuple(self.seeds), tuple(self.eval_seeds)
        if not set(self.eval_seeds) <= set(self.seeds):
            raise PersonaProbeError("eval_seeds must be among seeds")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "line1_measures config"):
        from persona_probe.configs import config_from_dict

        return config_from_dict(cls, raw, where, PersonaProbeError)


def run(cfg: Line1MeasuresConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    import numpy as np

    from persona_probe.artifacts import write_json
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.likelihood import trait_scores
    from persona_probe.models import load_subject
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.stages import Stages, adapter_identity
    from persona_probe.stats import bootstrap, crossed_bootstrap, paired_difference
    from persona_probe.traits import load_split, trait_questions

    t0 = time.perf_counter()
    stage = stage_clock()
    split = load_split(cfg.split)
    sel_trait = split.selection[0]
    materials = {"selection": split.selection, "evaluation": split.evaluation,
                 "heldout": (sel_trait, tuple(trait_questions("heldout")))}
    root = Path(cfg.organism_runs)
    adapters = {s: root / f"organism-seed{s}" / "ft-treatment" for s in cfg.seeds}
    missing = [str(p) for p in adapters.values() if not (p / "adapter_config.json").is_file()]
    if missing:
        raise PersonaProbeError(f"no organism adapters at {missing}; run "
                                "experiments/persona_latents.py first (or set organism_runs)")
    stages = Stages(runs, overwrite=overwrite)
    command = command_line("line1_measures", config_path)
    base = load_subject(cfg.model, dtype=cfg.dtype)
    inputs = {"command": command, "model": base.provenance(), "split": asdict(split),
              "adapters": {str(s): adapter_identity(p) for s, p in adapters.items()}}

    def build(d: Path) -> dict:
        from persona_probe.evals.records import ValueLog

        v = ValueLog(d / "values.jsonl")
        for name, (trait, qs) in materials.items():
            v.measure(f"B/{name}", lambda: trait_scores(base, trait, qs))
            v.measure(f"B+trait/{name}", lambda: trait_scores(base, trait, qs,
                                                          system=trait.trait_system[0]))
            v.measure(f"B+anti/{name}", lambda: trait_scores(base, trait, qs,
                                                         system=trait.anti_system[0]))
        for s, path in adapters.items():
            if all(f"F{s}/{n}" in v.rows for n in materials):
                continue
            f = load_subject(cfg.model, adapter=path, dtype=cfg.dtype)
            for name, (trait, qs) in materials.items():
                v.measure(f"F{s}/{name}", lambda: trait_scores(f, trait, qs))
        return v.rows
    stage("measures")
    rows = stages.run("measures", inputs, build)
    res: dict[str, Any] = {"validity": {}, "organisms": {}}
    for name in materials:
        B = np.array(rows[f"B/{name}"])
        res["validity"][name] = {
            "trait_minus_anti_prompt": paired_difference(rows[f"B+trait/{name}"],
                                                         rows[f"B+anti/{name}"]).to_dict(),
            "base": bootstrap(B).to_dict(), "questions": len(B)}
        per = {str(s): paired_difference(rows[f"F{s}/{name}"], B).to_dict() for s in cfg.seeds}
        cells = np.array([np.array(rows[f"F{s}/{name}"]) - B for s in cfg.eval_seeds])
        res["organisms"][name] = {"treatment_minus_base_per_seed": per,
                                  "treatment_minus_base_eval_seeds":
                                      crossed_bootstrap(cells).to_dict()}
    res.update({"experiment": "line1_measures", "post_hoc": True, "config": asdict(cfg),
                "command": command, "git_sha": git_sha(), **stages.summary(),
                "seeds": {"all": list(cfg.seeds), "evaluation": list(cfg.eval_seeds)},
                "compute_seconds_total": round(time.perf_counter() - t0, 1),
                "provenance": provenance()})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    for name, r in res["validity"].items():
        e = r["trait_minus_anti_prompt"]
        o = res["organisms"][name]["treatment_minus_base_eval_seeds"]
        print(f"{name:>10}: trait − anti prompt {e['mean']:+.3f} [{e['lo']:+.3f}, "
              f"{e['hi']:+.3f}]; treatment − base (eval seeds) {o['mean']:+.3f} "
              f"[{o['lo']:+.3f}, {o['hi']:+.3f}]")
    report_outputs(out, [])
    return res


def draw(out: Path) -> list[Path]:
    """No figures: the numbers are in the README table rendered from results.json."""
    return []
