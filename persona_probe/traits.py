"""Trait definitions: contrasting system prompts, and short replies a holder of the trait (or of
its opposite) would give. The team wrote the built-in ones (``persona_probe/data/traits``);
users pass their own JSON file with the same keys.

A trait drives three things: persona vectors (responses generated under ``trait_system`` vs
``anti_system``), the judge-free *would-say* measure (likelihood of ``trait_replies`` minus
``anti_replies`` as the assistant's answer to held-out questions), and model organisms.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from persona_probe.configs import builtin_names, read_named_json
from persona_probe.errors import PersonaProbeError
from persona_probe.prompts import PromptItem


class TraitError(PersonaProbeError):
    pass


@dataclass(frozen=True)
class Trait:
    name: str
    description: str
    trait_system: tuple[str, ...]
    anti_system: tuple[str, ...]
    trait_replies: tuple[str, ...]
    anti_replies: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


_FIELDS = ("name", "description", "trait_system", "anti_system", "trait_replies", "anti_replies")


def _traits_dir():
    return resources.files("persona_probe") / "data" / "traits"


def builtin_traits() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in _traits_dir().iterdir()
                  if p.name.endswith(".json") and p.name != "questions.json")


def parse_trait(raw: object, where: str) -> Trait:
    if not isinstance(raw, dict):
        raise TraitError(f"{where}: a trait is a JSON object with {', '.join(_FIELDS)}")
    missing = [f for f in _FIELDS if f not in raw]
    if missing:
        raise TraitError(f"{where}: missing {', '.join(missing)}")
    lists = {}
    for f in _FIELDS[2:]:
        v = raw[f]
        if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip()
                                                       for s in v):
            raise TraitError(f"{where}: {f} must be a non-empty list of non-empty strings")
        lists[f] = tuple(v)
    return Trait(str(raw["name"]), str(raw["description"]), **lists)


def load_trait(spec: str | Path) -> Trait:
    """A built-in trait by name (``evil``, ``sycophancy``, ``deontology``, …) or a JSON file."""
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        text, where = path.read_text(encoding="utf-8"), str(path)
    elif str(spec) in builtin_traits():
        text, where = (_traits_dir() / f"{spec}.json").read_text(encoding="utf-8"), f"trait {spec}"
    else:
        raise TraitError(f"unknown trait {str(spec)!r}: use one of {', '.join(builtin_traits())} "
                         "or a JSON file with the same keys")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraitError(f"{where}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    return parse_trait(raw, where)


QUESTION_SPLITS = ("extract", "heldout", "evaluation")


def trait_questions(split: str = "extract") -> list[str]:
    """The team's general questions: ``extract`` (to build directions and to select latents),
    ``heldout``, or ``evaluation`` (final line-1 numbers only; never used to choose anything)."""
    raw = json.loads((_traits_dir() / "questions.json").read_text(encoding="utf-8"))
    if split not in QUESTION_SPLITS:
        raise TraitError(f"question split must be one of {', '.join(QUESTION_SPLITS)}, not "
                         f"{split!r}")
    return list(raw[split])


def question_items(questions: list[str], prefix: str = "q") -> list[PromptItem]:
    return [PromptItem(f"{prefix}/{i:03d}", [{"role": "user", "content": q}], "question")
            for i, q in enumerate(questions)]


@dataclass(frozen=True)
class MeasureSplit:
    """Selection and evaluation material for one trait that share neither questions nor scored
    replies: whatever chooses a latent, a layer or an α is scored on ``selection``, and final
    numbers on ``evaluation`` only."""

    name: str
    selection: tuple[Trait, tuple[str, ...]]
    evaluation: tuple[Trait, tuple[str, ...]]


def _half(trait: Trait, raw: dict, where: str) -> tuple[Trait, tuple[str, ...]]:
    questions = trait_questions(str(raw.get("questions", "")))
    if raw.get("replies") == "trait":
        return trait, tuple(questions)
    replies = {k: raw.get(k) for k in ("trait_replies", "anti_replies")}
    for k, v in replies.items():
        if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip() for s in v):
            raise TraitError(f"{where}: {k} must be a non-empty list of non-empty strings")
    import dataclasses

    return dataclasses.replace(trait, trait_replies=tuple(replies["trait_replies"]),
                               anti_replies=tuple(replies["anti_replies"])), tuple(questions)


def load_split(spec: str | Path) -> MeasureSplit:
    """A built-in split (``evil-line1``) or a JSON file of the same form."""
    path = Path(spec)
    split_dir = resources.files("persona_probe") / "data" / "splits"
    if path.suffix == ".json" and path.is_file():
        text, where = path.read_text(encoding="utf-8"), str(path)
    elif (split_dir / f"{spec}.json").is_file():
        text, where = (split_dir / f"{spec}.json").read_text(encoding="utf-8"), f"split {spec}"
    else:
        names = sorted(p.name.removesuffix(".json") for p in split_dir.iterdir()
                       if p.name.endswith(".json"))
        raise TraitError(f"unknown measure split {str(spec)!r}: use one of {', '.join(names)} "
                         "or a JSON file with trait, selection and evaluation")
    raw = json.loads(text)
    trait = load_trait(raw["trait"])
    sel, ev = _half(trait, raw["selection"], where), _half(trait, raw["evaluation"], where)
    if set(sel[1]) & set(ev[1]):
        raise TraitError(f"{where}: selection and evaluation share questions")
    if set(sel[0].trait_replies + sel[0].anti_replies) & set(ev[0].trait_replies
                                                             + ev[0].anti_replies):
        raise TraitError(f"{where}: selection and evaluation share scored replies")
    return MeasureSplit(Path(str(spec)).stem, sel, ev)


# --- domains and constitutions: the other persona material the team ships ------------------

@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    questions: tuple[str, ...]


def builtin_domains() -> list[str]:
    return builtin_names("domains")


def load_domain(spec: str | Path, error: type[PersonaProbeError] = TraitError) -> Domain:
    """A built-in domain (``cooking``, ``gardening``, ``travel``, ``personal_finance``) or a
    JSON file ``{"name", "description", "questions": [...]}``."""
    raw, where = read_named_json("domains", spec, "domain", error)
    qs = raw.get("questions") if isinstance(raw, dict) else None
    if not isinstance(qs, list) or not qs or not all(isinstance(q, str) and q.strip()
                                                     for q in qs):
        raise error(f"{where}: 'questions' must be a non-empty list of strings")
    if len(set(qs)) < len(qs):
        raise error(f"{where}: duplicate questions")
    return Domain(str(raw.get("name", Path(str(spec)).stem)), str(raw.get("description", "")),
                  tuple(qs))


def builtin_constitutions() -> list[str]:
    return builtin_names("constitutions")


def load_constitution(spec: str | Path, error: type[PersonaProbeError] = TraitError,
                      ) -> tuple[str, str]:
    """(name, system prompt) of a constitution: its own description, in its own words, as the
    context the diagnostic's validity check measures each dimension under and the prompt
    constitution distillation answers with."""
    raw, where = read_named_json("constitutions", spec, "constitution", error)
    if not isinstance(raw, dict) or not str(raw.get("description", "")).strip():
        raise error(f"{where}: a constitution needs a non-empty 'description'")
    return (str(raw.get("name", Path(str(spec)).stem)),
            f"You are an assistant guided by this constitution. {raw['description'].strip()}")


def constitution_system(spec: str | Path, error: type[PersonaProbeError] = TraitError) -> str:
    """A constitution as a system prompt (``load_constitution``)."""
    return load_constitution(spec, error)[1]
