"""Hook points resolve to exactly the residuals HF reports (the classic off-by-one check)."""

from __future__ import annotations

import pytest
import torch

from persona_probe.errors import HookPointError
from persona_probe.hooks import HookPoint, nnsight_residual, parse_hook, residual_hooks


def test_parse_hook_names_and_errors():
    assert parse_hook("blocks.15.hook_resid_post") == HookPoint(15, "post")
    assert parse_hook("blocks.0.hook_resid_pre").depth == 0
    assert parse_hook("blocks.3.hook_resid_mid").depth == 4
    with pytest.raises(HookPointError, match="unknown hook point.*blocks.15.hook_resid_post"):
        parse_hook("blocks.15.resid_post")
    with pytest.raises(HookPointError, match="out of range.*30 layers.*0..29"):
        parse_hook("blocks.30.hook_resid_post", n_layers=30)


def _batch(subject, texts):
    tok = subject.tokenizer
    return tok(texts, return_tensors="pt", padding=True)


@torch.no_grad()
def test_resid_post_and_pre_equal_hidden_states_exactly(subject):
    batch = _batch(subject, ["The cat sat on the mat because it was warm.", "Hello"])
    hidden = subject.model(**batch, output_hidden_states=True).hidden_states
    layers = [0, 7, 15, 29]
    got: dict[str, torch.Tensor] = {}
    fns = {}
    for L in layers:
        for site in ("pre", "post"):
            hp = HookPoint(L, site)
            fns[hp] = (lambda name: lambda r: got.__setitem__(name, r.clone()))(hp.name)
    with residual_hooks(subject.model, fns):
        subject.model(**batch)
    last = subject.n_layers - 1
    for L in layers:
        post = got[f"blocks.{L}.hook_resid_post"]
        # HF applies the final norm to its last hidden state; TransformerLens's resid_post does not
        expected = hidden[L + 1] if L < last else None
        if expected is None:
            assert torch.equal(subject.model.model.norm(post), hidden[L + 1])
        else:
            assert torch.equal(post, expected), L
        assert torch.equal(got[f"blocks.{L}.hook_resid_pre"], hidden[L]), L


@torch.no_grad()
def test_nnsight_addresses_the_same_points(subject):
    from nnsight.modeling.transformers import TransformersModel

    batch = _batch(subject, ["A short test sentence for nnsight."])
    ours: dict[str, torch.Tensor] = {}
    hps = [HookPoint(4, "pre"), HookPoint(4, "mid"), HookPoint(4, "post")]
    with residual_hooks(subject.model,
                        {hp: (lambda n: lambda r: ours.__setitem__(n, r.clone()))(hp.name)
                         for hp in hps}):
        subject.model(**batch)
    wrapped = TransformersModel(subject.model, tokenizer=subject.tokenizer)
    saved = {}
    with wrapped.trace(dict(batch)):
        for hp in hps:
            saved[hp.name] = nnsight_residual(wrapped, hp).save()
    for hp in hps:
        assert torch.equal(saved[hp.name], ours[hp.name]), hp.name
    # resid_mid lies between pre and post: it is neither of them
    assert not torch.equal(ours["blocks.4.hook_resid_mid"], ours["blocks.4.hook_resid_post"])


def test_hooks_removed_after_exception(subject):
    layer = subject.model.model.layers[3]
    before = (len(layer._forward_hooks), len(layer._forward_pre_hooks))
    with pytest.raises(RuntimeError, match="boom"):
        with residual_hooks(subject.model, {HookPoint(3, "post"): lambda r: None,
                                            HookPoint(3, "pre"): lambda r: None}):
            assert len(layer._forward_hooks) == before[0] + 1
            raise RuntimeError("boom")
    assert (len(layer._forward_hooks), len(layer._forward_pre_hooks)) == before


@torch.no_grad()
def test_write_hook_changes_residual_and_mid_is_read_only(subject):
    batch = _batch(subject, ["Steering check."])
    clean = subject.model(**batch).logits
    with residual_hooks(subject.model, {HookPoint(10, "post"): lambda r: r * 0}):
        zeroed = subject.model(**batch).logits
    assert not torch.allclose(clean, zeroed)
    with pytest.raises(HookPointError, match="read-only"):
        with residual_hooks(subject.model, {HookPoint(2, "mid"): lambda r: r}):
            subject.model(**batch)
