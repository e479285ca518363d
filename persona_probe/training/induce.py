"""Treatment and control finetunes for the experiments, from one config block.

Two kinds: a trait-distillation **organism** (the CPU default: on SmolLM2-135M the EM datasets
moved nothing measurable, docs/DESIGN.md) or the **em** datasets (insecure vs secure code, the
papers' setting and the GPU-scale configs). Either way the experiment gets one adapter per arm,
the data that re-aligns the treatment (good data it never saw), and the held-out questions on
which to read the persona, so diffing, steering, monitoring and re-alignment code does not care
which organism it is handed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from persona_probe.configs import config_from_dict, refuse_fixed
from persona_probe.errors import PersonaProbeError
from persona_probe.models import DEFAULT_MODEL, Subject
from persona_probe.training.finetune import FinetuneConfig, finetune_once
from persona_probe.training.organism import (ARMS, OrganismConfig, builtin_domains,
                                             heldout_questions, load_domain, run_organism)
from persona_probe.traits import trait_questions


class InductionError(PersonaProbeError):
    pass


@dataclass
class InductionConfig:
    kind: str = "organism"                                   # organism | em
    model: str = DEFAULT_MODEL                               # base model every arm trains on
    organism: dict[str, Any] = field(default_factory=dict)   # OrganismConfig fields
    em: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> FinetuneConfig fields
    seed: int = 0                                            # overrides the arms' seeds

    def __post_init__(self) -> None:
        if self.kind not in ("organism", "em"):
            raise InductionError(f"kind {self.kind!r}; use 'organism' or 'em'")
        refuse_fixed(self.organism, ("model", "seed"), "induce.organism",
                     "induce's model and seed", InductionError)
        for arm, fields in self.em.items():
            refuse_fixed(fields, ("model", "seed"), f"induce.em.{arm}",
                         "induce's model and seed", InductionError)
        if self.kind == "organism":
            self.organism_config()                 # fail on bad keys before any model loads
        else:
            if set(self.em) != set(ARMS):
                raise InductionError(f"em needs one finetune config per arm {list(ARMS)}, "
                                     f"got {sorted(self.em)}")
            for arm in ARMS:
                self.em_config(arm)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "induce") -> InductionConfig:
        return config_from_dict(cls, raw, where, InductionError)

    def organism_config(self) -> OrganismConfig:
        return OrganismConfig.from_dict({**self.organism, "model": self.model,
                                         "seed": self.seed}, "induce.organism")

    def em_config(self, arm: str) -> FinetuneConfig:
        return FinetuneConfig.from_dict({**self.em[arm], "model": self.model,
                                         "seed": self.seed}, f"induce.em.{arm}")

    def with_seed(self, seed: int) -> InductionConfig:
        return InductionConfig(self.kind, self.model, dict(self.organism),
                               {k: dict(v) for k, v in self.em.items()}, seed)


def induce(base: Subject, cfg: InductionConfig, out: str | Path,
           callbacks: dict[str, list] | None = None) -> dict[str, Path]:
    """One finished adapter per arm under ``out`` (resumable; a finished arm is reused).
    ``callbacks`` maps an arm to TrainerCallbacks (a monitor, a periodic metric)."""
    out = Path(out)
    if cfg.kind == "organism":
        res = run_organism(base, cfg.organism_config(), out, evaluate=False, callbacks=callbacks)
        return {arm: Path(p) for arm, p in res["adapters"].items()}
    return {arm: finetune_once(cfg.em_config(arm), out / f"ft-{arm}",
                               callbacks=(callbacks or {}).get(arm, [])) for arm in ARMS}


def induced_adapters(out: str | Path) -> dict[str, Path]:
    """The adapters a finished ``induce(..., out)`` left, by arm, without touching them (what
    a finished stage reuses; ``induce`` itself would re-check each finetune's recorded
    config, paths included)."""
    return {arm: Path(out) / f"ft-{arm}" for arm in ARMS}


def good_data(cfg: InductionConfig, out: str | Path) -> dict[str, Any]:
    """FinetuneConfig fields of the re-alignment data: the organism's control answers (same
    narrow domain, anti-trait persona), or the secure chats after those the control used."""
    if cfg.kind == "organism":
        from persona_probe.training.organism import finetune_config

        ft = finetune_config(cfg.organism_config(), out, "control")
        return {"data": ft.data, "limit": ft.limit, "offset": 0}
    ctrl = cfg.em_config("control")
    return {"data": ctrl.data, "limit": ctrl.limit, "offset": ctrl.offset + (ctrl.limit or 0)}


def treatment_finetune_fields(cfg: InductionConfig) -> dict[str, Any]:
    """The treatment arm's training settings without its data (FinetuneConfig fields), so a
    re-alignment run continues the treatment adapter with the hyperparameters it was made with."""
    if cfg.kind == "organism":
        return dict(cfg.organism_config().finetune)
    return {k: v for k, v in asdict(cfg.em_config("treatment")).items()
            if k not in ("data", "limit", "offset")}


def heldout(cfg: InductionConfig, per_domain: int = 8) -> list[str]:
    """Questions the persona is read on: none from the organism's training domain (the other
    domains' last ``per_domain`` + the team's held-out general questions); for EM every
    built-in domain's last ``per_domain`` + the general ones (code is the training domain)."""
    if cfg.kind == "organism":
        return heldout_questions(cfg.organism_config().domain, per_domain)
    return [q for d in builtin_domains() for q in load_domain(d).questions[-per_domain:]] \
        + trait_questions("heldout")
