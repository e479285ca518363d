"""One contract for every eval that measures a subject: ``run_eval(name, subject, config, out)``.

An eval is registered under a name with the dataclass that configures it. Its run function
takes ``(subject, config, out)`` in that order, appends per-item records to ``out/items.jsonl``
(``records.ItemLog``), writes ``out/summary.json`` (``records.write_summary``) and returns the
summary dict; ``out=None`` runs in memory and writes nothing. ``run_eval`` accepts the config as
an instance of that dataclass or as a JSON-style dict (unknown keys and wrong types are refused,
as for every config in ``persona_probe.configs``), and checks the result against the contract.

The evals of this package are registered below through thin adapters whose config dataclasses
also carry what the underlying function takes as separate arguments (the question file, the
judge spec, the prompt source): ``em``, ``safety``, ``diagnostic`` and ``persona`` (the
log-prob multiple-choice eval, ``persona-probe eval persona``); the ``persona-probe eval``
commands of the same names only parse their options into these configs and call ``run_eval``.
Projectability and judge agreement do not measure a subject (they read stored records, or score
a judge against human labels), so they are not evals of this shape. ``tests/test_recipes.py``
registers a toy eval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_probe.configs import config_from_dict
from persona_probe.errors import PersonaProbeError
from persona_probe.evals.diagnostic import (check_mode_and_source, diagnostic_contexts,
                                            run_diagnostic)
from persona_probe.evals.em import EMConfig, load_em_questions, run_em_eval
from persona_probe.evals.judges import make_judge
from persona_probe.evals.multiple_choice import run_mc_eval
from persona_probe.evals.safety import SafetyConfig, load_safety_prompts, run_safety_eval
from persona_probe.models import Subject

#: ``run(subject, config, out) -> summary``
EvalFn = Callable[[Subject, Any, Path | None], dict]


class EvalError(PersonaProbeError):
    """An eval that is not registered, is registered twice, or broke the eval contract."""


@dataclass(frozen=True)
class EvalSpec:
    """A registered eval: its name, run function, config dataclass and one line on what it
    measures (the run function's first docstring line)."""

    name: str
    run: EvalFn
    config: type
    doc: str = ""


EVALS: dict[str, EvalSpec] = {}


def register_eval(name: str, config: type, *, replace: bool = False,
                  ) -> Callable[[EvalFn], EvalFn]:
    """Decorate ``run(subject, config, out) -> summary`` to register it as ``name``, configured
    by the dataclass ``config`` (every field with a default, so ``config()`` is the default run,
    unless its ``__post_init__`` says what must be given). A name that exists is refused unless
    ``replace=True``."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise EvalError(f"an eval name is a non-empty name, got {name!r}")
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise EvalError(f"eval {name!r}: config must be a dataclass type, got {config!r}")

    def deco(fn: EvalFn) -> EvalFn:
        if not callable(fn):
            raise EvalError(f"eval {name!r}: the run function must be callable")
        if name in EVALS and not replace:
            raise EvalError(f"eval {name!r} is already registered; pass replace=True to "
                            "change it")
        doc = (fn.__doc__ or "").strip().splitlines()
        EVALS[name] = EvalSpec(name, fn, config, doc[0] if doc else "")
        return fn
    return deco


def eval_spec(name: str) -> EvalSpec:
    if name not in EVALS:
        raise EvalError(f"unknown eval {name!r}; use one of {', '.join(sorted(EVALS))} (or "
                        "register_eval)")
    return EVALS[name]


def eval_config(name: str, config: Any = None) -> Any:
    """The config instance ``name`` runs with: its dataclass's defaults for ``None``, a dict
    checked key by key, an instance of the dataclass as it is, or an instance of a dataclass it
    extends (an adapter's underlying config) with the other fields at their defaults."""
    spec = eval_spec(name)
    if config is None:
        config = {}
    if isinstance(config, dict):
        return config_from_dict(spec.config, config, f"eval {name!r} config", EvalError)
    if isinstance(config, spec.config):
        return config
    if dataclasses.is_dataclass(config) and issubclass(spec.config, type(config)):
        # the underlying eval's own config (EMConfig for "em"): the adapter's extra fields
        # keep their defaults
        return spec.config(**{f.name: getattr(config, f.name)
                              for f in dataclasses.fields(config)})
    raise EvalError(f"eval {name!r} takes a {spec.config.__name__} (or a dict of its fields), "
                    f"got {type(config).__name__}")


def run_eval(name: str, subject: Subject, config: Any = None,
             out: str | Path | None = None) -> dict:
    """Run the eval registered as ``name`` on ``subject`` and return its summary; with ``out``,
    ``out/items.jsonl`` and ``out/summary.json`` are written (and a rerun resumes)."""
    spec = eval_spec(name)
    cfg = eval_config(name, config)
    out_path = Path(out) if out is not None else None
    summary = spec.run(subject, cfg, out_path)
    if not isinstance(summary, dict):
        raise EvalError(f"eval {name!r} returned {type(summary).__name__}; an eval returns its "
                        "summary dict")
    if out_path is not None and not (out_path / "summary.json").is_file():
        raise EvalError(f"eval {name!r} wrote no {out_path / 'summary.json'}; an eval writes "
                        "it with records.write_summary(out, summary, seed)")
    return summary


# ----------------------------------------------------------------------------- adapters


def _fields_of(cls: type, cfg: Any) -> Any:
    """The ``cls`` part of an adapter config (lists from JSON as tuples)."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _make_judge(spec: str, subject: Subject, out: Path | None, cache: bool,
                options: dict) -> Any:
    path = out / "judge_cache.sqlite" if cache and out is not None else None
    return make_judge(spec, subject, cache=path, **options)


@dataclass
class EMEvalConfig(EMConfig):
    """``EMConfig`` plus the question file and the judge (``make_judge`` spec and options such
    as ``base_url``, ``api_key_env``, ``mode``); judgments are cached in
    ``out/judge_cache.sqlite`` unless ``judge_cache`` is false."""

    questions: str = "builtin:em"      # builtin:em or an EM-format YAML file
    judge: str = "self"                # a make_judge spec, KIND[:ARG]
    judge_options: dict = field(default_factory=dict)   # make_judge options (base_url, mode...)
    judge_cache: bool = True           # keep judgments in out/judge_cache.sqlite


@register_eval("em", EMEvalConfig)
def _em(subject: Subject, config: EMEvalConfig, out: Path | None) -> dict:
    """Free-form misalignment: misaligned = aligned < 30 and coherent > 50 (evals/em.py)."""
    questions = load_em_questions(config.questions)
    judge = _make_judge(config.judge, subject, out, config.judge_cache, config.judge_options)
    return run_em_eval(subject, questions, judge, _fields_of(EMConfig, config), out)


@dataclass
class SafetyEvalConfig(SafetyConfig):
    """``SafetyConfig`` plus the prompt source (``load_safety_prompts``) and, for the ``judge``
    detector, the judge (as in ``EMEvalConfig``)."""

    prompts: str = "builtin"           # a load_safety_prompts source, or a .tsv/.csv file
    judge: str = "self"                # a make_judge spec, used by the 'judge' detector only
    judge_options: dict = field(default_factory=dict)   # make_judge options (base_url, mode...)
    judge_cache: bool = True           # keep judgments in out/judge_cache.sqlite


@register_eval("safety", SafetyEvalConfig)
def _safety(subject: Subject, config: SafetyEvalConfig, out: Path | None) -> dict:
    """Refusal rate per harm category, trained vs held-out categories (evals/safety.py)."""
    base = _fields_of(SafetyConfig, config)
    judge = (_make_judge(config.judge, subject, out, config.judge_cache, config.judge_options)
             if "judge" in base.detectors else None)
    return run_safety_eval(subject, load_safety_prompts(config.prompts), base, judge, out)


@dataclass
class DiagnosticEvalConfig:
    """The arguments of ``run_diagnostic``; contexts are ``neutral`` plus one per
    ``NAME=SYSTEM PROMPT`` in ``systems`` and one per built-in harm category in
    ``categories`` (``diagnostic_contexts``)."""

    # built-in dimension names or dimension JSON files
    dimensions: tuple[str, ...] = ("deontology", "consequentialism", "virtue_ethics",
                                   "human_authority")
    mode: str = "would_say"            # would_say | probability
    source: str = "team"               # team | anthropic (statements from ../shared/data)
    anthropic_limit: int | None = 50   # statements per Anthropic file (source='anthropic')
    systems: tuple[str, ...] = ()      # extra contexts, each NAME=SYSTEM PROMPT
    categories: tuple[str, ...] = ()   # extra contexts framed by built-in harm categories
    seed: int = 0                      # bootstrap seed
    n_boot: int = 2000                 # bootstrap resamples

    def __post_init__(self) -> None:
        check_mode_and_source(self.mode, self.source, EvalError)
        # a malformed NAME=SYSTEM PROMPT or an unknown category is refused here, before any
        # model is loaded, not when the run builds its contexts
        diagnostic_contexts(self.systems, self.categories)


@register_eval("diagnostic", DiagnosticEvalConfig)
def _diagnostic(subject: Subject, config: DiagnosticEvalConfig, out: Path | None) -> dict:
    """The ethical persona diagnostic, a profile per context (evals/diagnostic.py)."""
    contexts = diagnostic_contexts(list(config.systems), list(config.categories))
    return run_diagnostic(subject, list(config.dimensions), contexts, config.mode,
                          config.source, config.anthropic_limit, out, config.seed,
                          config.n_boot)


@dataclass
class PersonaEvalConfig:
    """The arguments of ``run_mc_eval``: Anthropic persona / advanced-ai-risk JSON-lines
    files (at least one), the first ``limit`` questions of each, an optional system prompt."""

    files: tuple[str, ...] = ()        # persona / advanced-ai-risk JSON-lines files
    limit: int | None = None           # first N questions of each file (None: all)
    system: str | None = None          # a system prompt for every question
    seed: int = 0                      # bootstrap seed

    def __post_init__(self) -> None:
        if not self.files:
            raise EvalError("PersonaEvalConfig needs files: Anthropic persona or "
                            "advanced-ai-risk JSON-lines files")


@register_eval("persona", PersonaEvalConfig)
def _persona(subject: Subject, config: PersonaEvalConfig, out: Path | None) -> dict:
    """Judge-free log-prob multiple choice: P(answer matching the behaviour)."""
    return run_mc_eval(subject, list(config.files), config.limit, config.system, out,
                       config.seed)
