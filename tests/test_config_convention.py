"""One config convention: every value check lives in ``__post_init__``, so a config built in
Python is refused exactly as the same values read from a file (the file's error names it)."""

from __future__ import annotations

import dataclasses

import pytest

from persona_probe.errors import PersonaProbeError
from persona_probe.experiments.early_warning import EarlyWarningConfig
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
    (PoisoningDoseConfig, {"doses": [0.5, 1.0]}, "start at 0.0"),
]


@pytest.mark.parametrize("cls, bad, match", CASES, ids=[f"{c.__name__}-{m[:12]}"
                                                       for c, _, m in CASES])
def test_direct_construction_and_files_are_refused_alike(cls, bad, match):
    with pytest.raises(PersonaProbeError, match=match):
        cls(**bad)
    with pytest.raises(PersonaProbeError, match=match) as exc:
        cls.from_dict(bad, "my.json")
    assert str(exc.value).startswith("my.json: ")       # the file's error names the file


def test_every_field_of_a_hand_written_config_is_documented_and_listed_by_the_cli():
    """``persona-probe fields NAME`` prints each field with its default and the comment the
    class gives it; a field without one fails here, so --help cannot fall behind the code."""
    import dataclasses

    from typer.testing import CliRunner

    from persona_probe.cli import app
    from persona_probe.cli.configs import CONFIG_CLASSES, config_class
    from persona_probe.configs import field_docs

    runner = CliRunner()
    for name in CONFIG_CLASSES:
        cls = config_class(name)
        docs = field_docs(cls)
        assert set(docs) == {f.name for f in dataclasses.fields(cls)}
        assert not [k for k, v in docs.items() if not v], f"{name}: undocumented fields"
        res = runner.invoke(app, ["fields", name])
        assert res.exit_code == 0, res.output
        for f, doc in docs.items():
            assert f"{f} (default" in res.output and doc[:40] in res.output
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
