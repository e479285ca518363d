"""One config convention: every value check lives in ``__post_init__``, so a config built in
Python is refused exactly as the same values read from a file (the file's error names it)."""

from __future__ import annotations

import dataclasses

import pytest

from persona_probe.errors import PersonaProbeError
from persona_probe.experiments.conscience_dpo import ConscienceExperimentConfig
from persona_probe.experiments.early_warning import EarlyWarningConfig
from persona_probe.experiments.em_persona_features import EMPersonaFeaturesConfig
from persona_probe.experiments.emergent_alignment import EmergentAlignmentConfig
from persona_probe.experiments.persona_latents import PersonaLatentsConfig
from persona_probe.experiments.poisoning_dose import PoisoningDoseConfig
from persona_probe.training.finetune import FinetuneConfig
from persona_probe.training.induce import InductionConfig
from persona_probe.training.organism import OrganismConfig

CASES = [
    (FinetuneConfig, {"data": "x.jsonl", "method": "qlora"}, "use 'lora' or 'full'"),
    (FinetuneConfig, {"data": "x.jsonl", "max_steps": 0}, "max_steps"),
    (OrganismConfig, {"keep_fraction": 0}, "keep_fraction"),
    (OrganismConfig, {"domain": "knitting"}, "knitting"),
    (InductionConfig, {"kind": "rlhf"}, "use 'organism' or 'em'"),
    (InductionConfig, {"kind": "em"}, "one finetune config per arm"),
    (EarlyWarningConfig, {"seeds": [1, 1]}, "distinct"),
    (EarlyWarningConfig, {"induce": {"kind": "rlhf"}}, "induce: kind"),
    (EmergentAlignmentConfig, {"regimes": ["wide"]}, "narrow and/or broad"),
    (EmergentAlignmentConfig, {"finetune": {"data": "x"}}, "may not set 'data'"),
    (PersonaLatentsConfig, {"null_draws": 5}, ">= 100"),
    (PersonaLatentsConfig, {"organism": {"model": "gpt2"}}, r"organism may not set \['model'\]"),
    (PersonaLatentsConfig, {"screening": {"max_set": 0}}, "screening: max_set"),
    (PersonaLatentsConfig, {"null_neighbours": -1}, "null_neighbours"),
    (InductionConfig, {"organism": {"seed": 3}}, r"induce.organism may not set \['seed'\]"),
    (PoisoningDoseConfig, {"doses": [0.5, 1.0]}, "start at 0.0"),
    (ConscienceExperimentConfig, {"steps": 5, "rounds": 2}, "positive multiple of rounds"),
    (ConscienceExperimentConfig, {"conscience": {"seed": 1}}, r"conscience may not set \['seed'\]"),
    (EMPersonaFeaturesConfig, {"induce": {"seed": 1}}, r"induce may not set \['seed'\]"),
]


@pytest.mark.parametrize("cls, bad, match", CASES, ids=[f"{c.__name__}-{m[:12]}"
                                                       for c, _, m in CASES])
def test_direct_construction_and_files_are_refused_alike(cls, bad, match):
    with pytest.raises(PersonaProbeError, match=match):
        cls(**bad)
    with pytest.raises(PersonaProbeError, match=match) as exc:
        cls.from_dict(bad, "my.json")
    assert str(exc.value).startswith("my.json: ")       # the file's error names the file


def _config_names() -> list[str]:
    from persona_probe.cli.configs import CONFIG_CLASSES

    return list(CONFIG_CLASSES)


#: Config classes documented like the hand-written ones but not listed by ``fields``: the
#: experiment pipelines' configs (and the condition records one of them takes), and the
#: distillation and DPO settings.
DOCUMENTED_CONFIGS = [
    "persona_probe.experiments.persona_latents:PersonaLatentsConfig",
    "persona_probe.experiments.line1_measures:Line1MeasuresConfig",
    "persona_probe.experiments.emergent_alignment:EmergentAlignmentConfig",
    "persona_probe.experiments.poisoning_dose:PoisoningDoseConfig",
    "persona_probe.experiments.monitor_actions:MonitorActionsConfig",
    "persona_probe.experiments.behaviour_validation:BehaviourValidationConfig",
    "persona_probe.experiments.behaviour_validation:Condition",
    "persona_probe.experiments.early_warning:EarlyWarningConfig",
    "persona_probe.experiments.em_persona_features:EMPersonaFeaturesConfig",
    "persona_probe.experiments.conscience_dpo:ConscienceExperimentConfig",
    "persona_probe.experiments.helpful_only:HelpfulOnlyExperimentConfig",
    "persona_probe.experiments.constitution_distill:ConstitutionDistillExperimentConfig",
    "persona_probe.experiments.diagnostic_validity:DiagnosticValidityConfig",
    "persona_probe.experiments.line1_generations:Line1GenerationsConfig",
    "persona_probe.experiments.conscience_validity:ConscienceValidityConfig",
    "persona_probe.training.distill:ConstitutionDistillConfig",
    "persona_probe.training.dpo:DPOSettings",
]


def _undocumented(cls: type) -> list[str]:
    from persona_probe.configs import field_docs

    docs = field_docs(cls)
    assert list(docs) == [f.name for f in dataclasses.fields(cls)]
    return [k for k, v in docs.items() if not v]


@pytest.mark.parametrize("name", _config_names())
def test_every_field_of_a_hand_written_config_is_documented_and_listed_by_the_cli(name):
    """``persona-probe fields NAME`` prints each field with its default and the comment the
    class gives it; a field without one fails here, so --help cannot fall behind the code."""
    from typer.testing import CliRunner

    from persona_probe.cli import app
    from persona_probe.cli.configs import config_class
    from persona_probe.configs import field_docs

    cls = config_class(name)
    assert dataclasses.is_dataclass(cls)
    assert not _undocumented(cls), f"{name}: undocumented fields {_undocumented(cls)}"
    res = CliRunner().invoke(app, ["fields", name])
    assert res.exit_code == 0, res.output
    for f, doc in field_docs(cls).items():
        assert f"{f} (default" in res.output and doc[:40] in res.output


@pytest.mark.parametrize("spec", DOCUMENTED_CONFIGS, ids=[s.split(":")[1]
                                                          for s in DOCUMENTED_CONFIGS])
def test_every_field_of_an_experiment_config_is_documented(spec):
    import importlib

    module, name = spec.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert not _undocumented(cls), f"{name}: undocumented fields {_undocumented(cls)}"


def test_fields_lists_every_config_and_refuses_an_unknown_name():
    from typer.testing import CliRunner

    from persona_probe.cli import app
    from persona_probe.cli.configs import CONFIG_CLASSES

    runner = CliRunner()
    res = runner.invoke(app, ["fields"])
    assert res.exit_code == 0, res.output
    listed = [line.split()[0] for line in res.output.splitlines() if line.strip()]
    assert listed == list(CONFIG_CLASSES)
    res = runner.invoke(app, ["fields", "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0 and all(n in res.output for n in CONFIG_CLASSES)
    res = runner.invoke(app, ["fields", "nope"])
    assert res.exit_code == 2 and "no config named 'nope'" in res.output


@dataclasses.dataclass
class _Documented:
    a: int = 1              # on its line
    # above it,
    # on two lines
    b: str = "x"
    c: float = 0.5          # a trailing comment
                            # that goes on
    d: bool = False


def test_field_docs_reads_trailing_and_preceding_comments():
    from persona_probe.configs import config_reference, field_docs

    assert field_docs(_Documented) == {"a": "on its line", "b": "above it, on two lines",
                                       "c": "a trailing comment that goes on", "d": ""}
    assert config_reference(_Documented).splitlines()[1] == \
        "b (default 'x'): above it, on two lines"


@dataclasses.dataclass
class _Extended(_Documented):
    d: bool = True          # redocumented here
    e: int = 0              # its own


def test_field_docs_of_a_subclass_take_the_base_class_docs():
    from persona_probe.configs import field_docs

    assert field_docs(_Extended) == {"a": "on its line", "b": "above it, on two lines",
                                     "c": "a trailing comment that goes on",
                                     "d": "redocumented here", "e": "its own"}


def test_a_nested_config_is_typed_from_files_and_from_python_alike():
    """A field that holds a whole config (PersonaLatentsConfig.screening) is built into its
    class from a JSON object and from a dict passed in Python; its errors name the path; its
    fields are listed one level in by ``config_reference``; and it round-trips through asdict."""
    from dataclasses import asdict

    from persona_probe.configs import config_reference
    from persona_probe.experiments.persona_latents import PersonaLatentsConfig
    from persona_probe.latent_screening import ScreeningConfig

    small = {"tiny": True, "eval_seeds": [1], "null_draws": 2}
    from_file = PersonaLatentsConfig.from_dict({**small, "screening": {"n_delta": 7}})
    direct = PersonaLatentsConfig(**small, screening={"n_delta": 7})
    for cfg in (from_file, direct):
        assert isinstance(cfg.screening, ScreeningConfig) and cfg.screening.n_delta == 7
        assert cfg.screening.max_set == ScreeningConfig().max_set
    assert PersonaLatentsConfig.from_dict(asdict(from_file)) == from_file
    with pytest.raises(PersonaProbeError, match=r"screening: unknown keys \['n_deltas'\]"):
        PersonaLatentsConfig.from_dict({**small, "screening": {"n_deltas": 7}})
    with pytest.raises(PersonaProbeError, match="screening.*max_set must be in 1..20"):
        PersonaLatentsConfig(**small, screening={"max_set": 0})
    with pytest.raises(PersonaProbeError, match="screening must be a ScreeningConfig"):
        PersonaLatentsConfig(**small, screening=[1, 2])
    ref = config_reference(PersonaLatentsConfig)
    assert "screening (ScreeningConfig)" in ref and "  screening.rank_by (default" in ref
