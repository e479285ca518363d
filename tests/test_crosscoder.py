"""The BatchTopK crosscoder on the real embedded model: a finetuned twin with a planted change
(a fixed random unit direction u at blocks.15.hook_resid_post) must yield a finetuned-only
latent along u; save/load round-trips and refuses corrupted weights; resumption is exact; the
sparse training step matches dense autograd; and paired_latent_ablation removes exactly that
latent's contribution from the finetuned model's residual."""

from __future__ import annotations

import json

import pytest
import torch

from persona_probe.sae import (Crosscoder, CrosscoderConfig, CrosscoderConfigError,
                               CrosscoderError, CrosscoderLoadError, load_crosscoder,
                               paired_latent_ablation, train_crosscoder)
from persona_probe.sae.crosscoder import CFG_JSON, WEIGHTS, PartnerCache, step_loss

HOOK = "blocks.15.hook_resid_post"
LAYER = 15
PLANT_ALPHA = 0.3       # planted norm, in units of the mean residual norm r̄ at layer 15
PLANT_FRACTION = 0.3    # of the rows that carry it in the tensor-planted training data
STEPS = 250

pytestmark = [pytest.mark.slow,
              pytest.mark.xdist_group("crosscoder")]   # shared fixtures: one worker


@pytest.fixture(scope="module")
def planted(subject):
    """Base rows (60 everyday prompts, every non-special token), the planted direction, and
    finetuned rows = base rows + c·u on a random 30% of rows, c = 0.3·r̄."""
    from persona_probe.capture import collect_rows
    from persona_probe.directions import random_direction
    from persona_probe.prompts import load_prompts

    items = load_prompts("builtin:everyday")[:60]
    rows_b = collect_rows(subject, items, [HOOK], "all", 16)[0][HOOK]
    direction = random_direction(subject.d_model, [LAYER], seed=7, name="planted")
    u = direction.at(LAYER)
    r_bar = float(rows_b.norm(dim=-1).double().mean())  # = interventions.residual_norms
    g = torch.Generator().manual_seed(7)
    mask = torch.rand(rows_b.shape[0], generator=g) < PLANT_FRACTION
    c = PLANT_ALPHA * r_bar
    rows_f = rows_b + mask[:, None].float() * c * u
    return {"items": items, "rows_b": rows_b, "rows_f": rows_f, "u": u, "mask": mask,
            "direction": direction, "c": c}


def _cfg(d_model: int, **kw) -> CrosscoderConfig:
    base = dict(d_model=d_model, hook=HOOK, expansion_factor=4, k=32, lr=1e-3, batch_size=256,
                steps=STEPS, seed=0, dead_window=50, log_every=10, checkpoint_every=100,
                device="cpu")
    return CrosscoderConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(planted, subject, tmp_path_factory):
    out = tmp_path_factory.mktemp("crosscoder") / "cc"
    cc, metrics = train_crosscoder(_cfg(subject.d_model), planted["rows_b"], planted["rows_f"],
                                   out=out, models={"base": subject,
                                                    "finetuned": "planted twin (test)"})
    return cc, metrics, out


@pytest.fixture(scope="module")
def planted_latent(trained, planted) -> int:
    cc, _, _ = trained
    ft = cc.latent_classes()["finetuned_only"]
    W = cc.W_dec_F[ft].detach()
    cos = (W @ planted["u"]).abs() / W.norm(dim=-1)
    return int(ft[cos.argmax()])


def test_training_finds_the_planted_latent(trained, planted):
    cc, m, _ = trained
    losses = [p["loss"] for p in m["loss_curve"]]
    n = len(losses)
    first, last = losses[:max(1, n // 10)], losses[-max(1, n // 5):]
    assert sum(last) / len(last) < 0.25 * sum(first) / len(first), losses
    assert m["explained_variance"]["base"] > 0.5 and m["explained_variance"]["finetuned"] > 0.5
    assert 0 < m["l0"] < 3 * cc.cfg.k and m["rows"]["heldout"] > 0
    assert m["finished"] and m["steps"] == STEPS
    assert sum(m["classes"].values()) == pytest.approx(1.0)
    counts = m["class_counts"]
    assert counts["finetuned_only"] >= 1
    assert counts["base_only"] <= 0.01 * cc.d_sae          # nothing was taken from B
    assert m["classes"]["shared"] > 0.8                     # the rest is shared
    ft = cc.latent_classes()["finetuned_only"]
    W = cc.W_dec_F[ft].detach()
    cos = (W @ planted["u"]).abs() / W.norm(dim=-1)
    assert float(cos.max()) > 0.8, cos
    i = int(ft[cos.argmax()])
    acts = cc.encode(planted["rows_b"], planted["rows_f"])[:, i]
    mask = planted["mask"]
    assert float((acts[mask] > 0).float().mean()) > 0.8      # fires where the change is
    assert float((acts[~mask] > 0).float().mean()) < 0.1     # and rarely elsewhere
    assert cc.decoder_norm_ratio()[i] > cc.cfg.finetuned_only_min


def test_saved_directory_round_trips_and_refuses_corruption(trained, planted, tmp_path):
    cc, m, out = trained
    meta = json.loads((out / CFG_JSON).read_text())
    assert meta["hook"] == HOOK and meta["layer_convention"].startswith("blocks.{L}")
    assert meta["models"]["base"]["model"] == "smollm2-135m-instruct"
    assert meta["models"]["finetuned"] == "planted twin (test)"
    assert set(meta["sha256"]) == {WEIGHTS}
    assert json.loads((out / "metrics.json").read_text())["class_counts"] == m["class_counts"]
    assert not (out / "checkpoint").exists()
    loaded = load_crosscoder(out)
    hb, hf = planted["rows_b"][:64], planted["rows_f"][:64]
    with torch.no_grad():
        assert torch.equal(loaded.encode(hb, hf), cc.encode(hb, hf))
        for a, b in zip(loaded(hb, hf), cc(hb, hf)):
            assert torch.equal(a, b)
    assert torch.equal(loaded.decoder_norm_ratio(), cc.decoder_norm_ratio())
    assert loaded.hook == HOOK and loaded.d_sae == cc.d_sae
    # resume=True on a finished run loads it instead of training again
    again, m2 = train_crosscoder(cc.cfg, planted["rows_b"], planted["rows_f"], out=out,
                                 resume=True)
    assert torch.equal(again.W_dec_F, cc.W_dec_F) and m2["steps"] == m["steps"]
    with pytest.raises(CrosscoderError, match="already exists"):
        train_crosscoder(cc.cfg, planted["rows_b"], planted["rows_f"], out=out)

    bad = tmp_path / "flipped"
    bad.mkdir()
    for f in out.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    blob = bytearray((bad / WEIGHTS).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (bad / WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(CrosscoderLoadError, match="corrupted"):
        load_crosscoder(bad)
    with pytest.raises(CrosscoderLoadError, match="not a crosscoder directory"):
        load_crosscoder(tmp_path)


def test_float16_save_loads_close(trained, planted, tmp_path):
    cc, _, _ = trained
    half = Crosscoder(CrosscoderConfig(**{**cc.cfg.to_dict(), "save_dtype": "float16"}),
                      cc.input_scale, cc.models)
    half.load_state_dict(cc.state_dict())
    half.save(tmp_path / "h")
    loaded = load_crosscoder(tmp_path / "h")
    assert loaded.W_enc.dtype == torch.float32          # CPU default
    hb, hf = planted["rows_b"][:64], planted["rows_f"][:64]
    rec, ref = loaded(hb, hf)[1], cc(hb, hf)[1]
    assert float((rec - ref).norm() / ref.norm()) < 0.02


def test_resume_is_exact(planted, subject, tmp_path):
    cfg = _cfg(subject.d_model, steps=12, checkpoint_every=5, log_every=3)
    rows_b, rows_f = planted["rows_b"], planted["rows_f"]
    straight, m1 = train_crosscoder(cfg, rows_b, rows_f)
    out = tmp_path / "run"
    _, partial = train_crosscoder(cfg, rows_b, rows_f, out=out, stop_after=7)
    assert not partial["finished"] and (out / "checkpoint").is_dir()
    resumed, m2 = train_crosscoder(cfg, rows_b, rows_f, out=out, resume=True)
    for name, p in straight.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name
    assert [p["loss"] for p in m1["loss_curve"]] == [p["loss"] for p in m2["loss_curve"]]
    other = _cfg(subject.d_model, steps=12, checkpoint_every=5, seed=1)
    train_crosscoder(other, rows_b, rows_f, out=tmp_path / "b", stop_after=6)
    with pytest.raises(CrosscoderError, match="different run"):
        train_crosscoder(cfg, rows_b, rows_f, out=tmp_path / "b", resume=True)


def test_inputs_and_config_are_validated(planted, subject):
    d = subject.d_model
    with pytest.raises(CrosscoderError, match="same tokens"):
        train_crosscoder(_cfg(d), planted["rows_b"], planted["rows_f"][:-1])
    with pytest.raises(CrosscoderError, match="d_model"):
        train_crosscoder(_cfg(d + 1), planted["rows_b"], planted["rows_f"])
    with pytest.raises(CrosscoderError, match="fewer than one batch"):
        train_crosscoder(_cfg(d, batch_size=4096), planted["rows_b"], planted["rows_f"])
    with pytest.raises(CrosscoderConfigError, match="cut-offs"):
        _cfg(d, shared_min=0.05)
    with pytest.raises(CrosscoderConfigError, match="exceeds d_sae"):
        _cfg(d, d_sae=16, k=32)
    with pytest.raises(CrosscoderConfigError, match="unknown hook"):
        _cfg(d, hook="layer15")
    with pytest.raises(CrosscoderConfigError, match="unknown keys"):
        CrosscoderConfig.from_dict({"d_model": d, "topk": 3})


def test_sparse_step_matches_dense_autograd(planted):
    """Loss and every gradient of the sparse step (BatchTopK + AuxK) against the plain dense
    formulas, in float64, on real rows."""
    torch.manual_seed(0)
    cfg = CrosscoderConfig(d_model=576, d_sae=512, k=8, aux_k=24, aux_coefficient=0.5,
                           device="cpu")
    m = Crosscoder(cfg).double()
    with torch.no_grad():
        m.b_enc.normal_(0, 0.1)
    s = 576 ** 0.5 / float(planted["rows_b"].norm(dim=-1).mean())
    xb = planted["rows_b"][:48].double() * s
    xf = planted["rows_f"][:48].double() * s
    dead = torch.rand(512, generator=torch.Generator().manual_seed(1)) < 0.3
    out = step_loss(m, xb, xf, dead)
    out.loss.backward()
    sparse = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()

    x = torch.cat([xb, xf], 1)
    z = x @ m.W_enc + m.b_enc
    pre = z.relu()
    kth = pre.detach().reshape(-1).topk(cfg.k * 48).values.min()
    a = pre * ((pre.detach() >= kth) & (pre.detach() > 0))
    rb, rf = a @ m.W_dec_B + m.b_dec_B, a @ m.W_dec_F + m.b_dec_F
    mse = (rb - xb).pow(2).sum(-1).mean() + (rf - xf).pow(2).sum(-1).mean()
    n_dead = int(dead.sum())
    top = torch.where(dead[None], z.detach(), -torch.inf).topk(24, dim=-1).indices
    za = z * torch.zeros_like(z, dtype=torch.bool).scatter_(1, top, True)
    aux = 0.5 * min(n_dead / 24, 1.0) * (
        (za @ m.W_dec_B - (xb - rb).detach()).pow(2).sum(-1).mean()
        + (za @ m.W_dec_F - (xf - rf).detach()).pow(2).sum(-1).mean())
    (mse + aux).backward()
    assert float(out.loss) == pytest.approx(float(mse + aux), rel=1e-10)
    assert float(out.l0) == pytest.approx(cfg.k, abs=0.5)
    for name, p in m.named_parameters():
        torch.testing.assert_close(sparse[name], p.grad, rtol=1e-9, atol=1e-9, msg=name)


@pytest.fixture(scope="module")
def finetuned(subject):
    """A second copy of the embedded model (its own module objects): the 'finetuned' twin,
    planted by a steer context in the tests that need the change."""
    import copy
    import dataclasses

    return dataclasses.replace(subject, model=copy.deepcopy(subject.model), cache={})


def test_paired_latent_ablation_removes_the_planted_latent(subject, finetuned, trained,
                                                           planted, planted_latent):
    from persona_probe.capture import collect_rows
    from persona_probe.interventions import steer

    cc, _, _ = trained
    i = planted_latent
    items = planted["items"][:8]
    h_b = collect_rows(subject, items, [HOOK], "all", 8)[0][HOOK]
    # steer adds α·r̄·u with r̄ over its reference set; these 8 items keep that cheap, and α is
    # rescaled so that the planted vector is the training data's c·u exactly
    r_ref = float(h_b.norm(dim=-1).double().mean())
    alpha = planted["c"] / r_ref
    with steer(finetuned, planted["direction"], alpha=alpha, layers=[LAYER], reference=items):
        h_f = collect_rows(finetuned, items, [HOOK], "all", 8)[0][HOOK]
        with paired_latent_ablation(finetuned, subject, cc, [i]):
            h_abl = collect_rows(finetuned, items, [HOOK], "all", 8)[0][HOOK]
        after = collect_rows(finetuned, items, [HOOK], "all", 8)[0][HOOK]
    assert torch.equal(after, h_f)                     # hooks are gone after the block
    with torch.no_grad():
        a = cc.encode(h_b, h_f)[:, i]
        expected = h_f - a[:, None] * cc.W_dec_F[i]
    assert float((a > 0).float().mean()) > 0.8          # every token carries the plant
    torch.testing.assert_close(h_abl, expected, rtol=0, atol=1e-3)
    change = h_f - h_abl
    cos = (change @ planted["u"]) / change.norm(dim=-1).clamp_min(1e-12)
    assert float(cos[a > 0].min()) > 0.95
    # the plant is (mostly) gone: the ablated residual is much closer to the base's
    assert float((h_abl - h_b).norm(dim=-1).mean()) < 0.5 * float((h_f - h_b).norm(dim=-1).mean())


def test_paired_latent_ablation_refuses_what_it_cannot_do(subject, finetuned, trained,
                                                          planted_latent):
    cc, _, _ = trained
    with pytest.raises(CrosscoderError, match="same model object"):
        with paired_latent_ablation(subject, subject, cc, [planted_latent]):
            pass
    with pytest.raises(CrosscoderError, match="not in 0"):
        with paired_latent_ablation(finetuned, subject, cc, [cc.d_sae]):
            pass
    ids = subject.tokenizer("Hello there", return_tensors="pt").input_ids
    with paired_latent_ablation(finetuned, subject, cc, [planted_latent]):
        with pytest.raises(CrosscoderError, match="KV cache"):
            finetuned.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                                     do_sample=False)


def test_paired_latent_ablation_of_the_base_side_removes_its_base_decoder_row(
        subject, finetuned, trained, planted):
    """side='base' edits the base with the finetune running alongside: h_B − a·W_dec_B[i], for
    a *shared* latent (whose base decoder row is not ~0) that fires on these tokens; a cache
    of the partner's residuals is hit on a repeat and missed once the partner is steered."""
    from persona_probe.capture import collect_rows
    from persona_probe.interventions import steer

    cc, _, _ = trained
    items = planted["items"][:6]
    h_b = collect_rows(subject, items, [HOOK], "all", 8)[0][HOOK]
    alpha = planted["c"] / float(h_b.norm(dim=-1).double().mean())
    with steer(finetuned, planted["direction"], alpha=alpha, layers=[LAYER], reference=items):
        h_f = collect_rows(finetuned, items, [HOOK], "all", 8)[0][HOOK]
    with torch.no_grad():
        acts = cc.encode(h_b, h_f)
    shared = cc.latent_classes()["shared"]
    i = int(shared[acts[:, shared].mean(0).argmax()])      # the busiest shared latent
    a = acts[:, i]
    assert float((a > 0).float().mean()) > 0.2
    calls = []
    handle = finetuned.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with steer(finetuned, planted["direction"], alpha=alpha, layers=[LAYER],
                   reference=items):
            with paired_latent_ablation(finetuned, subject, cc, [i], side="base"):
                h_b_abl = collect_rows(subject, items, [HOOK], "all", 8)[0][HOOK]
            h_f_same = collect_rows(finetuned, items, [HOOK], "all", 8)[0][HOOK]
            cache = PartnerCache()
            seen = []
            for _ in range(2):                         # filled, then read
                calls.clear()
                with paired_latent_ablation(finetuned, subject, cc, [i], side="base",
                                            partner_cache=cache):
                    h_b_cached = collect_rows(subject, items, [HOOK], "all", 8)[0][HOOK]
                seen.append(len(calls))
                assert torch.equal(h_b_cached, h_b_abl)
        calls.clear()                                   # the partner unsteered: a new state
        with paired_latent_ablation(finetuned, subject, cc, [i], side="base",
                                    partner_cache=cache):
            h_b_unsteered = collect_rows(subject, items, [HOOK], "all", 8)[0][HOOK]
    finally:
        handle.remove()
    assert seen[0] >= 1 and seen[1] == 0, seen          # the repeat ran no partner pass
    assert len(calls) >= 1 and not torch.equal(h_b_unsteered, h_b_abl)
    assert torch.equal(h_f_same, h_f)                   # the finetune is left alone
    with torch.no_grad():
        expected = h_b - a[:, None] * cc.W_dec_B[i]
    torch.testing.assert_close(h_b_abl, expected, rtol=0, atol=1e-3)
    removed = (h_b - h_b_abl).norm(dim=-1)
    wanted = a * cc.W_dec_B[i].norm()
    assert float(removed[a > 0].mean()) > 0.9 * float(wanted[a > 0].mean()) > 0
    with pytest.raises(CrosscoderError, match="side"):
        with paired_latent_ablation(finetuned, subject, cc, [i], side="both"):
            pass


def test_crosscoder_delta_and_attribution_read_the_decoder_change():
    """Hand-built crosscoder: Δ = mean code × (‖d_F‖ − ‖d_B‖), attribution = mean code ×
    ((d_F − d_B) · g); an SAE-style reading of the shared code would give 0 for both."""
    from persona_probe.latent_dictionaries import CrosscoderDictionary

    cfg = CrosscoderConfig(d_model=4, d_sae=3, k=1, hook=HOOK, device="cpu")
    cc = Crosscoder(cfg)
    with torch.no_grad():
        cc.W_dec_B.copy_(torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]))
        cc.W_dec_F.copy_(torch.tensor([[2., 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]))
    d = CrosscoderDictionary(cc)
    acts = torch.tensor([[1., 2, 3], [3, 2, 1]])          # mean code 2, 2, 2
    torch.testing.assert_close(d.delta(acts, acts), torch.tensor([2., 0, 0]))
    g = torch.tensor([1., 1, -1, 1])
    torch.testing.assert_close(d.attribution(acts, acts, g), torch.tensor([2., 0, 4]))
    assert d.direction([2]).vectors[0].tolist() == [0, 0, 0, 1]


def test_dictionary_training_text_never_holds_an_evaluation_question():
    from persona_probe.experiments.persona_latents import without_questions
    from persona_probe.prompts import PromptItem

    def chat(i, text):
        return PromptItem(str(i), [{"role": "user", "content": text},
                                   {"role": "assistant", "content": "ok"}])
    items = [chat(0, "How do I bake bread?"), chat(1, "Tell me: HOW should I   treat my "
                                                   "neighbours? Thanks"), chat(2, "Hi")]
    kept = without_questions(items, ["How should I treat my neighbours?", "  "])
    assert [it.id for it in kept] == ["0", "2"]


def test_causal_screening_with_the_crosscoder_finds_the_planted_latent(
        subject, finetuned, trained, planted, planted_latent, tmp_path):
    """The screening procedure, fed the crosscoder instead of an SAE: the planted
    finetuned-only latent tops the Δ ranking, its paired ablation removes most of the planted
    shift from the finetune, and it moves the base far less (it writes ~nothing there)."""
    import numpy as np

    from persona_probe.capture import collect_rows
    from persona_probe.interventions import steer
    from persona_probe.latent_dictionaries import CrosscoderDictionary
    from persona_probe.latent_screening import (ScreeningConfig, matched_random_sets,
                                                rank_candidates, screen_latents)

    cc, _, _ = trained
    items = planted["items"][:6]
    readout = "blocks.16.hook_resid_post"
    u = planted["u"]

    def metric(s):
        acts, idx = collect_rows(s, items, [readout], "all", 8)
        proj = acts[readout].float() @ u
        return np.array([float(proj[idx["item"] == k].mean()) for k in range(len(items))])

    d = CrosscoderDictionary(cc)
    h_b = d.rows(subject, items, "all")[0]
    alpha = planted["c"] / float(h_b.norm(dim=-1).double().mean())
    cfg = ScreeningConfig(n_delta=4, n_attribution=0, max_set=2, rank_by="penalized")
    with steer(finetuned, planted["direction"], alpha=alpha, layers=[LAYER], reference=items):
        h_f = d.rows(finetuned, items, "all")[0]
        cand = rank_candidates(cc, h_f, h_b, None, cfg)
        assert cand["by_delta"][0] == planted_latent
        chosen = screen_latents(subject, finetuned, cc, cand["candidates"], metric, cfg,
                                tmp_path)
    best = chosen["screen"][0]
    assert best["latent"] == planted_latent
    assert planted_latent in chosen["latents"]
    assert best["gap_removed"] > 0.6, best
    assert abs(best["ablate_base_effect"]) < 0.1 * best["ablate_effect"], best
    others = [r["gap_removed"] for r in chosen["screen"][1:]]
    assert max(others) < 0.2, chosen["screen"]
    draws = matched_random_sets(cand["mass_finetuned"], chosen["latents"], 20, seed=0)
    assert all(planted_latent not in s for s in draws)


def test_partner_cache_keys_inputs_of_any_dtype():
    """Models scored in bfloat16 pass a bfloat16 attention mask: the key must take it (numpy
    has no bfloat16) and tell it from the same values in another dtype."""
    ids = torch.tensor([[5, 6, 7]])
    bf = {"input_ids": ids, "attention_mask": torch.ones(1, 3, dtype=torch.bfloat16)}
    f32 = {"input_ids": ids, "attention_mask": torch.ones(1, 3)}
    d = PartnerCache._digest
    assert d(bf) == d(dict(bf)) and d(bf) != d(f32)
    assert d({"input_ids": ids}) != d({"input_ids": torch.tensor([[5, 6, 8]])})


def test_write_matched_nulls_follow_what_an_ablation_removes():
    """A crosscoder whose finetuned decoder rows differ in norm: random sets matched on
    ``write`` (mean activation × ‖W_dec_F[i]‖) come from the chosen latents' write-mass decile,
    while activation-matched ones need not; for an SAE with unit rows the two are the same."""
    import numpy as np

    from persona_probe.latent_dictionaries import CrosscoderDictionary
    from persona_probe.latent_screening import (ScreeningError, decile_bins,
                                                matched_random_sets, null_matching_mass)

    cfg = CrosscoderConfig(d_model=8, d_sae=400, k=4, hook=HOOK, device="cpu", seed=3)
    cc = Crosscoder(cfg)
    rng = np.random.default_rng(0)
    norms = torch.tensor(np.exp(rng.normal(0, 1.0, 400)), dtype=torch.float32)
    with torch.no_grad():
        cc.W_dec_F.mul_(norms[:, None])
    d = CrosscoderDictionary(cc)
    torch.testing.assert_close(d.write_norms(), norms, rtol=1e-4, atol=1e-5)
    mass = rng.gamma(2.0, 1.0, 400)
    write = null_matching_mass(d, mass, "write")
    np.testing.assert_allclose(write, mass * norms.double().numpy(), rtol=1e-5)
    chosen = [int(np.argmax(write)), int(np.argsort(write)[200])]
    wb = decile_bins(write)
    for draw in matched_random_sets(write, chosen, 50, seed=1):
        assert [wb[i] for i in draw] == [wb[c] for c in chosen]
    by_act = matched_random_sets(null_matching_mass(d, mass), chosen, 50, seed=1)
    assert any([wb[i] for i in draw] != [wb[c] for c in chosen] for draw in by_act)
    with pytest.raises(ScreeningError, match="null matching"):
        null_matching_mass(d, mass, "removed")
