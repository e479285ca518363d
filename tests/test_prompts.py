"""Built-in prompt sets and user prompt files."""

from __future__ import annotations

import pytest

from persona_probe.errors import PromptSetError
from persona_probe.prompts import builtin_set_names, load_jsonl, load_prompts


def test_builtin_sets_cover_the_needed_ground():
    items = load_prompts("builtin:all")
    assert len(items) >= 300
    assert set(builtin_set_names()) == {"advice", "code", "ethical_dilemmas", "everyday",
                                        "harmful_requests"}
    harmful = {it.subcategory for it in items if it.category == "harmful_requests"}
    assert {"harassment", "illegal_behaviour"} <= harmful and len(harmful) >= 6
    assert len({it.id for it in items}) == len(items)
    assert len({it.messages[0]["content"] for it in items}) == len(items)


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(PromptSetError, match=r"p.jsonl:2: not valid JSON"):
        load_jsonl(f)
    f.write_text('{"prompt": "ok"}\n\n{"messages": [{"role": "user", "content": ""}]}\n')
    with pytest.raises(PromptSetError, match=r"p.jsonl:3: message 0 \(user\) has empty"):
        load_jsonl(f)
    f.write_text('{"text": "x"}\n')
    with pytest.raises(PromptSetError, match="p.jsonl:1: needs 'messages' or 'prompt'"):
        load_jsonl(f)
    f.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y", "response": "z"}\n')
    with pytest.raises(PromptSetError, match="duplicate item id 'a'"):
        load_prompts(str(f))
    with pytest.raises(PromptSetError, match="unknown built-in prompt set 'nope'"):
        load_prompts("builtin:nope")
    with pytest.raises(PromptSetError, match="empty"):
        load_prompts("builtin:code", limit=0)
    with pytest.raises(PromptSetError, match="limit must be 0 or more"):
        load_prompts("builtin:code", limit=-1)


def test_limit_stops_reading(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": \n')  # line 3 is broken
    assert [it.messages[0]["content"] for it in load_prompts(str(f), limit=2)] == ["a", "b"]
    with pytest.raises(PromptSetError, match="p.jsonl:3"):
        load_prompts(str(f))


def test_real_em_and_hh_files_load(data_dir):
    from persona_probe.datasets import load_chat_jsonl, load_hh_rlhf

    em = load_chat_jsonl(data_dir / "emergent_misalignment/train/secure.jsonl", limit=5)
    assert len(em) == 5 and em[0].has_response
    hh = load_hh_rlhf(data_dir / "hh_rlhf/harmless_base_test.jsonl.gz", limit=5)
    assert all(it.messages[0]["role"] == "user" and it.has_response for it in hh)
