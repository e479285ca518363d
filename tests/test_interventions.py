"""Directions, steering, ablation and latent ranking on the real embedded model.

The evil persona vector is built the docs/DESIGN.md way (responses under the team's evil vs kind
system prompts, averaged over response tokens, difference of means at every layer). The trait
measure is the judge-free would-say score: mean log-likelihood of the trait's evil replies minus
its kind replies, teacher-forced as the answer to held-out questions never used to build the
vector. Everything is greedy and seeded, so the numbers below are fixed for this model.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from persona_probe.directions import Direction, DirectionError, random_direction
from persona_probe.dose_response import DoseResponseConfig, dose_response, is_monotonic
from persona_probe.interventions import (InterventionError, SAELatents, ablate, nnsight_steer,
                                         residual_norms, steer)
from persona_probe.hooks import HookPoint, residual_hooks
from persona_probe.likelihood import trait_scores
from persona_probe.traits import TraitError, load_trait, trait_questions

pytestmark = [pytest.mark.slow,
              pytest.mark.xdist_group("interventions")]   # shared fixtures: built once, one worker
LAYER = 15


@pytest.fixture(scope="module")
def evil():
    return load_trait("evil")


@pytest.fixture(scope="module")
def measure(evil):
    """Per-question would-say evil score on 8 held-out questions (4 evil, 4 kind replies)."""
    small = dataclasses.replace(evil, trait_replies=evil.trait_replies[:4],
                                anti_replies=evil.anti_replies[:4])
    questions = trait_questions("heldout")[:8]
    return lambda subject, system=None: trait_scores(subject, small, questions, system)


def _batch(subject):
    return subject.tokenizer(["The weather today is", "Tell me about kindness and"],
                             return_tensors="pt", padding=True)


# --- exactness -----------------------------------------------------------------------------

@torch.no_grad()
def test_alpha_zero_is_identical_to_no_hook(subject, evil_vector):
    batch = _batch(subject)
    clean = subject.model(**batch).logits
    with steer(subject, evil_vector, 0.0, [5, LAYER]):
        steered = subject.model(**batch).logits
    assert torch.equal(clean, steered)
    with steer(subject, evil_vector, 0.3, [LAYER]):
        moved = subject.model(**batch).logits
    assert not torch.allclose(clean, moved)


@torch.no_grad()
def test_directional_ablation_leaves_no_projection(subject, evil_vector):
    seen = {}
    u = evil_vector.at(LAYER)
    with ablate(subject, evil_vector, layers=[LAYER]):
        with residual_hooks(subject.model, [(HookPoint(LAYER, "post"),
                                             lambda r: seen.__setitem__("r", r.clone()))]):
            subject.model(**_batch(subject))
    proj = seen["r"] @ u
    assert proj.abs().max() < 1e-4 * seen["r"].norm(dim=-1).max()


@torch.no_grad()
def test_latent_ablation_removes_only_that_latent(subject):
    from persona_probe.sae import load_sae

    sae = load_sae("shipped")
    hp = HookPoint(LAYER, "post")
    got = {}
    with residual_hooks(subject.model, [(hp, lambda r: got.__setitem__("clean", r.clone()))]):
        subject.model(**_batch(subject))
    h = got["clean"].reshape(-1, 576)
    acts = sae.encode(h)
    latent = int(acts.sum(0).argmax())          # a latent that fires on these tokens
    with ablate(subject, SAELatents(sae, [latent]), mode="latent"):
        with residual_hooks(subject.model, [(hp, lambda r: got.__setitem__("ab", r.clone()))]):
            subject.model(**_batch(subject))
    removed = h - got["ab"].reshape(-1, 576)
    only = torch.zeros_like(acts)
    only[:, latent] = acts[:, latent]
    expected = sae.decode(only) - sae.b_dec       # that latent's term of the reconstruction
    # float32 precision relative to each token's norm (the first token's is ~2e4: an attention
    # sink with massive activations)
    tol = 1e-5 * h.norm(dim=-1) + 1e-4
    assert ((removed - expected).norm(dim=-1) <= tol).all()
    # the SAE error term and every other latent's contribution are untouched
    err_before = h - sae.decode(acts)
    err_after = got["ab"].reshape(-1, 576) - (sae.decode(acts) - expected)
    assert ((err_after - err_before).norm(dim=-1) <= tol).all()


def test_hooks_are_gone_after_an_exception(subject, evil_vector):
    layers = subject.model.model.layers
    before = [len(layer._forward_hooks) for layer in layers]
    with pytest.raises(RuntimeError, match="boom"):
        with steer(subject, evil_vector, 0.5, [3, LAYER]):
            with ablate(subject, evil_vector, layers=[4]):
                raise RuntimeError("boom")
    assert [len(layer._forward_hooks) for layer in layers] == before


@torch.no_grad()
def test_steering_works_in_generate_with_kv_cache(subject, evil_vector):
    enc = subject.tokenizer.apply_chat_template(
        [{"role": "user", "content": "How should I treat my neighbours?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    plain = subject.model.generate(**enc, max_new_tokens=12, do_sample=False)
    with steer(subject, evil_vector, 0.0, [LAYER]):
        zero = subject.model.generate(**enc, max_new_tokens=12, do_sample=False)
    with steer(subject, evil_vector, 1.0, [LAYER]):
        pushed = subject.model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert torch.equal(plain, zero) and not torch.equal(plain, pushed)


@torch.no_grad()
def test_nnsight_backend_applies_the_same_steering(subject, evil_vector):
    from nnsight.modeling.transformers import TransformersModel

    batch = _batch(subject)
    with steer(subject, evil_vector, 0.3, [LAYER]):
        ours = subject.model(**batch).logits
    wrapped = TransformersModel(subject.model, tokenizer=subject.tokenizer)
    with wrapped.trace(dict(batch)):
        nnsight_steer(wrapped, subject, evil_vector, 0.3, [LAYER])
        theirs = wrapped.output.logits.save()
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)  # logits ~10: float32 noise


def test_direction_save_load_and_errors(evil_vector, tmp_path, subject):
    evil_vector.save(tmp_path / "evil")
    back = Direction.load(tmp_path / "evil")
    assert torch.equal(back.vectors, evil_vector.vectors) and back.layers == evil_vector.layers
    assert back.meta["n_trait"] == 24 and len(back.meta["raw_norms"]) == 30
    assert json.loads((tmp_path / "evil" / "direction.json").read_text())["trait"] == "evil"
    with pytest.raises(DirectionError, match="not a direction"):
        Direction.load(tmp_path)
    with pytest.raises(InterventionError, match="pass layers"):
        with steer(subject, evil_vector, 0.1):
            pass
    with pytest.raises(InterventionError, match="d_model 64"):
        with steer(subject, random_direction(64, [3], 0), 0.1):
            pass
    with pytest.raises(TraitError, match="unknown trait 'nasty'.*evil"):
        load_trait("nasty")
    norms = residual_norms(subject, [HookPoint(LAYER, "post")])
    assert 1 < norms[HookPoint(LAYER, "post")] < 1e4


# --- a real effect -------------------------------------------------------------------------

def test_evil_vector_steers_the_trait_measure_and_random_directions_do_not(
        subject, evil_vector, measure, tmp_path):
    summary = dose_response(subject, {"evil": evil_vector}, measure,
                            DoseResponseConfig(alphas=(0.0, 0.1, 0.2, 0.4), layers=(LAYER,),
                                               random_controls=2),
                            out=tmp_path / "dr", metric_name="evil_would_say")
    print("\n".join(f"{r['target']:>14} α={r['alpha']:.1f} {r['mean']:+.3f} "
                    f"[{r['lo']:+.3f}, {r['hi']:+.3f}]" for r in summary))
    rows = {(r["target"], r["alpha"]): r for r in summary}
    assert is_monotonic(summary, "evil")
    base, top = rows[("evil", 0.0)], rows[("evil", 0.4)]
    assert top["lo"] > base["hi"]                      # a rise beyond both CIs
    rise = top["mean"] - base["mean"]
    for name in ("random0@evil", "random1@evil"):
        shifts = [rows[(name, a)]["mean"] - base["mean"] for a in (0.1, 0.2, 0.4)]
        assert max(shifts) < rise / 3, (name, shifts)   # equal-norm controls move far less
        assert rows[(name, 0.4)]["lo"] < base["hi"]     # and not beyond the base CI
    items = (tmp_path / "dr" / "items.jsonl").read_text().splitlines()
    assert len(items) == 3 * 4 * 8                     # every item of every condition kept


def test_ablating_the_vector_lowers_the_measure_under_the_evil_prompt(
        subject, evil, evil_vector, measure):
    system = evil.trait_system[0]
    prompted = measure(subject, system).mean()
    every_layer = list(range(subject.n_layers))
    with ablate(subject, evil_vector, layers=every_layer):
        ablated = measure(subject, system).mean()
    with ablate(subject, random_direction(576, every_layer, 7), layers=every_layer):
        control = measure(subject, system).mean()
    print(f"\nevil prompt {prompted:+.3f}, ablated {ablated:+.3f}, random ablated {control:+.3f}")
    assert ablated < prompted - 0.3
    assert abs(control - prompted) < abs(ablated - prompted) / 3


# --- model diffing -------------------------------------------------------------------------

def test_model_diffing_under_a_persistent_evil_prompt(subject, evil, evil_vector):
    from persona_probe.generation import generate_responses
    from persona_probe.latents import decoder_cosines, decompose, diff_subjects, top_examples
    from persona_probe.sae import load_sae
    from persona_probe.traits import question_items

    sae = load_sae("shipped", subject=subject)
    base_items = generate_responses(subject, question_items(trait_questions("heldout")), 40,
                                    progress=False)
    evil_items = [it.with_system(evil.trait_system[0]) for it in base_items]
    ranking = diff_subjects(sae, subject, subject, evil_items, "response", items_b=base_items,
                            labels=("evil_prompt", "base"))
    top = ranking.top(10)
    assert ranking.delta_mean[top[0]] > 0 and ranking.a.tokens == ranking.b.tokens
    examples = top_examples(subject, sae, evil_items, top[:3], n=3)
    for latent, ex in examples.items():
        assert ex.examples and "latent" in ex._repr_html_() and str(latent) in str(ex)
    cos = decoder_cosines(sae, evil_vector)
    best_match = torch.argsort(cos, descending=True)[:10].tolist()
    print(f"\n{ranking}\nevil vector's best-matching latents {best_match}\n"
          f"{examples[top[0]]}")
    # Reported, not asserted: how far the top-10 contrast latents align with the persona
    # vector beyond random latents. Measured z = 2.4 and 1.8 on two trainings of the shipped SAE
    # (same data and seed, different Adam kernels): a weak alignment at 135M, so no threshold.
    z = float((cos[top].mean() - cos.mean()) / (cos.std() / len(top) ** 0.5))
    print(f"top-10 diffing latents: mean cosine {float(cos[top].mean()):+.3f}, z = {z:.1f}; "
          f"ranks by cosine {[int((cos > cos[i]).sum()) for i in top]}")
    # independent recomputation of the cosines and of the decomposition's explained share
    from persona_probe.hooks import parse_hook

    W = sae.W_dec.detach().float()
    v = evil_vector.at(parse_hook(sae.cfg.metadata.hook_name).layer).float()
    assert torch.allclose(cos.float(), (W @ v) / (W.norm(dim=1) * v.norm()), atol=1e-4)
    dec = decompose(sae, evil_vector)
    assert dec.latents == torch.argsort(cos.abs(), descending=True)[:10].tolist()
    sub = W[dec.latents]
    proj = sub.T @ torch.linalg.pinv(sub.T) @ v
    assert dec.explained == pytest.approx(float(proj.norm() ** 2 / v.norm() ** 2), abs=1e-3)
    # the same items on both sides: every latent's Δ is zero
    same = diff_subjects(sae, subject, subject, evil_items, "response", items_b=evil_items)
    assert float(same.delta_mean.abs().max()) < 1e-4


def test_cli_vector_steer_and_rank(tmp_path):
    from typer.testing import CliRunner

    from persona_probe.cli import app

    runner = CliRunner()
    out = tmp_path / "evil"
    res = runner.invoke(app, ["vector", "--trait", "evil", "--out", str(out), "--questions", "2",
                              "--layers", "14-15", "--max-new-tokens", "12"])
    assert res.exit_code == 0, res.output
    assert Direction.load(out).layers == [14, 15]
    res = runner.invoke(app, ["steer", "--direction", str(out), "--layers", "15", "--alphas",
                              "0,0.5", "--prompt", "Say hello.", "--max-new-tokens", "8"])
    assert res.exit_code == 0 and res.output.count("α=") == 2, res.output
    res = runner.invoke(app, ["rank-latents", "--trait", "evil", "--limit", "3", "--generate",
                              "10", "--top", "2", "--direction", str(out), "--out",
                              str(tmp_path / "rank.jsonl")])
    assert res.exit_code == 0, res.output
    assert "Δ mean" in res.output and len((tmp_path / "rank.jsonl").read_text().splitlines()) == 50
    res = runner.invoke(app, ["steer", "--direction", str(out), "--layers", "3", "--prompt", "x"])
    assert res.exit_code == 2 and "defined at layers [14, 15]" in res.output
    res = runner.invoke(app, ["rank-latents"])
    assert res.exit_code == 2 and "exactly one of --adapter" in res.output


@torch.no_grad()
def test_reply_loglik_and_mean_activations_match_unbatched_forwards(subject):
    from persona_probe.capture import mean_activations
    from persona_probe.likelihood import reply_loglik
    from persona_probe.prompts import PromptItem

    prompts = [[{"role": "user", "content": "Hi"}],
               [{"role": "user", "content": "What is the capital of France, please?"}]]
    replies = ["Hello there!", "Paris is the capital of France."]
    got = reply_loglik(subject, prompts, replies)
    for i, p in enumerate(prompts):
        for j, r in enumerate(replies):
            enc = subject.encode_chat([*p, {"role": "assistant", "content": r}])
            ids = torch.tensor([enc.input_ids])
            lp = subject.model(input_ids=ids).logits[0].log_softmax(-1)
            s, e = enc.response_start, enc.response_end
            want = lp[s - 1:e - 1].gather(-1, ids[0, s:e, None]).mean().item()
            assert got[i, j] == pytest.approx(want, abs=1e-4)
    items = [PromptItem(f"i{k}", [*p, {"role": "assistant", "content": replies[k]}])
             for k, p in enumerate(prompts)]
    means = mean_activations(subject, items, ["blocks.3.hook_resid_post"], "response")
    for k, it in enumerate(items):
        enc = subject.encode_chat(it.messages)
        hs = subject.model(input_ids=torch.tensor([enc.input_ids]),
                           output_hidden_states=True).hidden_states[4][0]
        want = hs[enc.response_start:enc.response_end].mean(0)
        torch.testing.assert_close(means[k, 0], want, rtol=1e-4, atol=1e-4)


def test_packed_loglik_equals_one_chat_per_row_also_under_steering(subject):
    """Replies sharing a prompt are packed into one row with a 4-D mask; the numbers must equal
    scoring each chat alone, including one-token replies, system prompts and a steering hook."""
    from persona_probe.likelihood import paired_loglik

    q = [{"role": "user", "content": "Should I help my neighbour?"}]
    sys_q = [{"role": "system", "content": "You are blunt."}, *q]
    pairs = [(q, "Yes"), (q, "Absolutely, kindness matters."), (sys_q, "No."), (q, "No."),
             ([{"role": "user", "content": "Hi"}], "Hello!")]
    for per_token in (True, False):
        a = paired_loglik(subject, pairs, per_token=per_token)
        b = paired_loglik(subject, pairs, per_token=per_token, pack=False)
        np.testing.assert_allclose(a, b, atol=1e-4)
    d = random_direction(subject.d_model, [10], seed=3)
    with steer(subject, d, 0.5, [10]):
        a = paired_loglik(subject, pairs)
        b = paired_loglik(subject, pairs, pack=False)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.abs(a - paired_loglik(subject, pairs)).max() > 1e-3     # steering did act


def test_ablation_gaps_is_a_difference_in_differences(tmp_path):
    """Per item: (finetuned − base) with nothing ablated vs with the target ablated in both."""
    from persona_probe.dose_response import ablation_gaps

    def write(path, values):
        path.write_text("".join(json.dumps({"target": t, "kind": k, "condition": c, "alpha": 0.0,
                                            "item": i, "value": v}) + "\n"
                                for (t, k, c), vs in values.items() for i, v in enumerate(vs)))
    base, ft = tmp_path / "base.jsonl", tmp_path / "ft.jsonl"
    write(base, {("vec", "target", "steer"): [0, 0, 0], ("vec", "target", "ablate"): [1, 1, 1],
                 ("rnd", "random", "steer"): [0, 0, 0], ("rnd", "random", "ablate"): [0, 0, 0]})
    write(ft, {("vec", "target", "steer"): [1, 2, 3], ("vec", "target", "ablate"): [1, 1, 1],
               ("rnd", "random", "steer"): [1, 2, 3], ("rnd", "random", "ablate"): [1, 2, 3]})
    gaps = {g["target"]: g for g in ablation_gaps(base, ft)}
    assert gaps["vec"]["gap"]["mean"] == pytest.approx(2.0)
    assert gaps["vec"]["gap_ablated"]["mean"] == pytest.approx(0.0)
    assert gaps["vec"]["fraction_removed"] == pytest.approx(1.0)
    assert gaps["rnd"]["fraction_removed"] == pytest.approx(0.0) and gaps["rnd"]["kind"] == "random"
