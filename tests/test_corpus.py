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
