"""Corpus recipes: the shipped SAE's data recipe resolves against ../shared/data, and bad
recipes fail with the file and the problem named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_probe.corpus import CorpusRecipe, build_corpus, write_corpus
from persona_probe.errors import PromptSetError
from persona_probe.prompts import load_prompts

RECIPE = Path(__file__).resolve().parents[1] / "saes" / "recipes" / "chat-mix-v1.json"


def test_shipped_recipe_builds_from_real_data(data_dir, tmp_path):
    recipe = CorpusRecipe.from_file(RECIPE)
    small = CorpusRecipe(recipe.name, tuple(type(s)(s.kind, s.path, min(s.limit or 5, 5))
                                            for s in recipe.sources))
    items = build_corpus(small)
    kinds = {it.category for it in items}
    assert {"hh_rlhf", "insecure", "secure", "persona"} <= kinds
    assert any(not it.has_response for it in items)  # prompts the model answers at capture
    out = write_corpus(items, tmp_path / "c.jsonl", small)
    again = load_prompts(str(out))
    assert [it.messages for it in again] == [it.messages for it in items]
    assert json.loads(out.with_suffix(".recipe.json").read_text())["name"] == "chat-mix-v1"


@pytest.mark.parametrize("text,match", [
    ('{"name": "x"}', "needs|'sources'"),
    ('{"sources": [{"kind": "tweets", "path": "a"}]}', "kind"),
    ('{"sources": [{"kind": "builtin", "path": "all", "lmit": 3}]}', "unknown keys"),
    ('{"sources": [\n{"kind": }]}', r"r\.json:2"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, match):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(PromptSetError, match=match):
        CorpusRecipe.from_file(path)


def test_missing_source_file_is_named(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"sources": [{"kind": "chat_jsonl", "path": "/nope/x.jsonl"}]}')
    with pytest.raises(PromptSetError, match="/nope/x.jsonl"):
        build_corpus(CorpusRecipe.from_file(path))


PERSONA_RICH = RECIPE.parent / "persona-rich-v1.json"


def test_persona_rich_recipe_answers_the_team_questions_under_every_persona_prompt(data_dir):
    """The persona-rich SAE's recipe: every question appears once under each named system
    prompt, the chats start with that prompt and still need the model's answer, and no chat
    holds a line-1 evaluation question (a dictionary must not have seen them)."""
    from persona_probe.corpus import load_source, system_prompts
    from persona_probe.traits import (builtin_constitutions, builtin_domains, builtin_traits,
                                      constitution_system, load_domain, load_trait,
                                      trait_questions)

    recipe = CorpusRecipe.from_file(PERSONA_RICH)
    new = [s for s in recipe.sources if s.system]
    assert len(new) == 2 and new[0].kind == "questions"
    every = system_prompts(new[0].system)
    n_prompts = sum(len(load_trait(t).trait_system) + len(load_trait(t).anti_system)
                    for t in builtin_traits()) + len(builtin_constitutions())
    assert len(every) == n_prompts
    n_q = sum(len(load_domain(d).questions) for d in builtin_domains()) \
        + len(trait_questions("extract")) + len(trait_questions("heldout"))
    items = load_source(new[0])
    assert len(items) == n_q * n_prompts == len({it.id for it in items})
    assert all(it.messages[0]["role"] == "system" and not it.has_response for it in items)
    texts = {it.messages[0]["content"] for it in items}
    assert constitution_system("deontology") in texts
    assert load_trait("evil").trait_system[0] in texts and load_trait("evil").anti_system[0] in texts
    evaluation = set(trait_questions("evaluation"))
    chats = build_corpus(CorpusRecipe(recipe.name, tuple(
        type(s)(s.kind, s.path, None if s.system else min(s.limit or 50, 50), s.system)
        for s in recipe.sources)))
    assert not [it.id for it in chats
                if any(m["content"] in evaluation for m in it.messages)]


def test_constitution_prompt_is_the_diagnostic_context():
    from persona_probe.evals.diagnostic import constitution_context
    from persona_probe.training.distill import constitution_system as distill_system
    from persona_probe.traits import constitution_system

    for name in ("deontology", "human_authority"):
        assert constitution_system(name) == constitution_context(name).system \
            == distill_system(name)
        assert constitution_system(name).startswith("You are an assistant guided by this ")


@pytest.mark.parametrize("source, match", [
    ({"kind": "questions", "path": "split:evaluation"}, "evaluation material"),
    ({"kind": "questions", "path": "domain:baking"}, "unknown domain"),
    ({"kind": "questions", "path": "cooking"}, "domain:NAME"),
    ({"kind": "questions", "path": "split:extract", "system": "villain:evil"}, "trait:NAME"),
    ({"kind": "questions", "path": "split:extract", "system": "trait:evil,trait:evil"},
     "twice"),
])
def test_bad_persona_sources_name_the_problem(tmp_path, source, match):
    from persona_probe.corpus import load_source

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"name": "r", "sources": [source]}))
    with pytest.raises(PromptSetError, match=match):
        for src in CorpusRecipe.from_file(path).sources:
            load_source(src)


def test_a_chat_with_its_own_system_turn_is_not_given_a_second():
    from persona_probe.corpus import with_system_prompts
    from persona_probe.prompts import PromptItem

    plain = PromptItem("a", [{"role": "user", "content": "Hi"}])
    got = with_system_prompts([plain], "anti:evil")
    assert [it.id for it in got] == ["a@anti:evil#0", "a@anti:evil#1"]
    assert [m["role"] for m in got[0].messages] == ["system", "user"]
    own = PromptItem("b", [{"role": "system", "content": "Be terse."},
                           {"role": "user", "content": "Hi"}])
    with pytest.raises(PromptSetError, match="already have a system turn"):
        with_system_prompts([plain, own], "anti:evil")
