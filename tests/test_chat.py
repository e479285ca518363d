"""Role spans from the chat template are exact."""

from __future__ import annotations

import pytest

from persona_probe.chat import ROLE_CODES
from persona_probe.errors import PromptSetError


def test_role_spans_decode_to_message_contents(subject):
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour of the sky."},
            {"role": "assistant", "content": "Blue, on a clear day."}]
    enc = subject.encode_chat(msgs)
    tok = subject.tokenizer
    for m in msgs:
        ids = [t for t, r in zip(enc.input_ids, enc.roles) if r == ROLE_CODES[m["role"]]]
        assert tok.decode(ids) == m["content"]
    assert tok.decode(enc.input_ids[enc.response_start:enc.response_end]) == msgs[-1]["content"]
    # the last prompt token is the newline that ends the assistant header
    prompt_ids = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    assert enc.input_ids[: enc.response_start] == tok(prompt_ids, add_special_tokens=False)[
        "input_ids"]
    assert enc.roles[enc.prompt_last] == ROLE_CODES["template"]


def test_prompt_only_chat_ends_with_generation_prompt(subject):
    enc = subject.encode_chat([{"role": "user", "content": "Hi there"}])
    assert not enc.has_response and enc.response_start == len(enc)
    assert subject.tokenizer.decode(enc.input_ids[-3:]).endswith("assistant\n")


def test_real_multiturn_chats_have_exact_spans(subject, real_chats):
    tok = subject.tokenizer
    for item in real_chats:
        enc = subject.encode_chat(item.messages, on_overflow="truncate")
        if enc.truncated:
            continue
        assert tok.decode(enc.input_ids[enc.response_start:enc.response_end]) == \
            item.messages[-1]["content"]


def test_overflow_errors_or_truncates(subject):
    msgs = [{"role": "user", "content": "word " * 200}]
    with pytest.raises(PromptSetError, match="longer than the limit of 50.*truncate"):
        subject.encode_chat(msgs, max_tokens=50)
    with pytest.warns(UserWarning, match="truncated to 50"):
        enc = subject.encode_chat(msgs, max_tokens=50, on_overflow="truncate")
    assert len(enc) == 50 and enc.truncated


@pytest.mark.parametrize("msgs,match", [
    ([], "at least one message"),
    ([{"role": "robot", "content": "x"}], "role 'robot'"),
    ([{"role": "user", "content": "  "}], "empty content"),
    ([{"role": "user"}], "'role' and 'content'"),
])
def test_bad_messages(subject, msgs, match):
    with pytest.raises(PromptSetError, match=match):
        subject.encode_chat(msgs)
