"""Causal screening on the real embedded model: a latent planted in a 'finetuned' copy is
found, its ablation removes the planted shift, and matched random sets do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona_probe.latent_screening import (ScreeningConfig, ScreeningError, activation_mass,
                                            decile_bins, matched_random_sets, measure_gradient,
                                            rank_candidates, screen_latents)

pytestmark = pytest.mark.slow
READOUT = "blocks.16.hook_resid_post"


def test_matched_random_sets_come_from_the_same_decile_and_repeat():
    rng = np.random.default_rng(0)
    mass = np.concatenate([np.zeros(50), rng.exponential(1.0, 950)])
    chosen = [int(np.argmax(mass)), int(np.argsort(mass)[500])]
    bins = decile_bins(mass)
    draws = matched_random_sets(mass, chosen, n_draws=200, seed=3)
    assert draws == matched_random_sets(mass, chosen, n_draws=200, seed=3)
    assert draws != matched_random_sets(mass, chosen, n_draws=200, seed=4)
    for d in draws:
        assert len(set(d)) == len(chosen) and not set(d) & set(chosen)
        assert [bins[i] for i in d] == [bins[c] for c in chosen]
    assert bins[chosen[0]] == 9 and (bins[:50] == -1).all()
    with pytest.raises(ScreeningError, match="fire"):
        decile_bins(np.zeros(100))


def test_decile_draws_are_pinned_to_those_the_committed_runs_used():
    """neighbours=0 must keep giving the draws the committed line-1 runs were evaluated
    against (their stage fingerprints do not change, so a drift would reuse stale nulls); the
    expected lists were produced by the implementation at b944325."""
    mass = np.concatenate([np.zeros(20), np.linspace(0.01, 2.0, 180)])
    assert matched_random_sets(mass, [199, 120, 3], 4, seed=11) == [
        [184, 112, 16], [190, 121, 12], [194, 110, 10], [184, 116, 18]]


def test_nearest_rank_matching_draws_close_neighbours_and_matches_mass_at_the_top():
    """With ``neighbours=k`` each member comes from the k latents nearest its chosen latent in
    rank (silent ones from silent ones), so a set holding the most active latent is matched by
    far more mass than its decile gives (the coarse-top problem the option exists for)."""
    rng = np.random.default_rng(0)
    mass = np.concatenate([np.zeros(50), rng.lognormal(0, 1.5, 950)])
    order = [int(i) for i in np.argsort(-mass, kind="stable") if mass[i] > 0]
    chosen = [order[0], order[400], 7]                 # the top, the middle, a silent latent
    draws = matched_random_sets(mass, chosen, n_draws=300, seed=5, neighbours=10)
    assert draws == matched_random_sets(mass, chosen, n_draws=300, seed=5, neighbours=10)
    rank = {i: r for r, i in enumerate(order)}
    for d in draws:
        assert len(set(d)) == 3 and not set(d) & set(chosen)
        assert 1 <= rank[d[0]] <= 10                   # the top's neighbours are just below it
        assert abs(rank[d[1]] - 400) <= 5              # 10 nearest: 5 on each side
        assert mass[d[2]] == 0
    near = np.median([mass[d].sum() for d in draws])
    by_decile = np.median([mass[d].sum() for d in matched_random_sets(mass, chosen, 300, 5)])
    assert near > 2 * by_decile and near <= mass[chosen].sum()
    with pytest.raises(ScreeningError, match="raise neighbours"):
        matched_random_sets(mass, chosen, 5, neighbours=2)


@pytest.fixture(scope="module")
def planted(subject):
    """A second copy of the model whose layer-15 residual gets half a mean residual norm of
    one SAE latent's decoder direction at every token: a finetune whose whole shift is one
    latent."""
    from persona_probe.hooks import parse_hook
    from persona_probe.interventions import decoder_rows, residual_norms
    from persona_probe.latents import token_activations
    from persona_probe.models import load_subject
    from persona_probe.prompts import load_prompts
    from persona_probe.sae.io import load_sae

    sae = load_sae("shipped", subject=subject, device="cpu")
    items = load_prompts("builtin:everyday")[:4]
    rows_b, _ = token_activations(subject, sae, items, positions="all")
    mass = activation_mass(sae, rows_b)
    alive = (mass > 0).nonzero().flatten()
    star = int(alive[torch.argsort(mass[alive])[len(alive) // 2]])   # an ordinary latent
    d = decoder_rows(sae, [star])[0].float()
    u = d / d.norm()
    hp = parse_hook("blocks.15.hook_resid_post")
    c = 0.5 * residual_norms(subject, [hp])[hp]
    ft = load_subject("smollm2-135m-instruct", device="cpu")

    def add(module, inputs, output):
        return (output[0] + c * u, *output[1:]) if isinstance(output, tuple) else output + c * u
    ft.model.model.layers[15].register_forward_hook(add)
    rows_f, _ = token_activations(ft, sae, items, positions="all")

    def metric(s):
        from persona_probe.capture import collect_rows

        acts, idx = collect_rows(s, items, [READOUT], "all", 16)
        proj = acts[READOUT].float() @ u
        return np.array([float(proj[idx["item"] == k].mean()) for k in range(len(items))])
    return {"sae": sae, "ft": ft, "star": star, "rows_b": rows_b, "rows_f": rows_f,
            "metric": metric}


def test_screening_finds_the_planted_latent(subject, planted, tmp_path):
    cfg = ScreeningConfig(n_delta=4, n_attribution=0, max_set=2)
    sae = planted["sae"]
    cand = rank_candidates(sae, planted["rows_f"], planted["rows_b"], None, cfg)
    assert cand["by_delta"][0] == planted["star"]
    chosen = screen_latents(subject, planted["ft"], sae, cand["candidates"], planted["metric"],
                            cfg, tmp_path)
    best = chosen["screen"][0]
    assert best["latent"] == planted["star"] and planted["star"] in chosen["latents"]
    assert best["gap_removed"] > 0.5 and best["steer_effect"] > 0
    others = [r["gap_removed"] for r in chosen["screen"][1:]]
    assert max(others) < 0.1                          # no other candidate removes the shift
    # resumable: a second call reads chosen.json instead of measuring again
    calls = []
    again = screen_latents(subject, planted["ft"], sae, cand["candidates"],
                           lambda s: calls.append(1) or planted["metric"](s), cfg, tmp_path)
    assert again["latents"] == chosen["latents"] and not calls
    # the matched null: random sets from the planted latent's decile remove ~nothing
    from persona_probe.interventions import SAELatents, ablate

    m_b, m_f = planted["metric"](subject), planted["metric"](planted["ft"])
    gap = (m_f - m_b).mean()
    mass = activation_mass(sae, planted["rows_f"])
    for draw in matched_random_sets(mass, [planted["star"]], n_draws=3, seed=0):
        with ablate(planted["ft"], SAELatents(sae, draw), "latent"):
            assert abs((m_f - planted["metric"](planted["ft"])).mean() / gap) < 0.1


def test_screening_refuses_a_finetune_with_no_shift(subject, planted, tmp_path):
    with pytest.raises(ScreeningError, match="no shift"):
        screen_latents(subject, subject, planted["sae"], [planted["star"]],
                       planted["metric"], ScreeningConfig(max_set=1), tmp_path)


def test_measure_gradient_points_where_the_trait_rises(subject):
    """Steering along the gradient of the would-say measure raises it; against it, lowers it."""
    from persona_probe.directions import Direction
    from persona_probe.interventions import steer
    from persona_probe.likelihood import trait_scores
    from persona_probe.traits import load_trait, trait_questions

    trait, qs = load_trait("evil"), trait_questions("extract")[:2]
    g = measure_gradient(subject, trait, qs, "blocks.10.hook_resid_post")
    assert g.shape == (subject.d_model,) and torch.isfinite(g).all() and g.norm() > 0
    d = Direction("gradient", [10], g[None])
    m0 = trait_scores(subject, trait, qs).mean()
    with steer(subject, d, 0.05, [10]):
        up = trait_scores(subject, trait, qs).mean()
    with steer(subject, d, -0.05, [10]):
        down = trait_scores(subject, trait, qs).mean()
    assert up > m0 > down


def test_cli_screen_latents_refuses_a_finetune_that_did_not_move(tmp_path):
    """`persona-probe screen-latents` end to end on a real (untrained, so zero-effect) LoRA
    adapter: the selection gap is ~0, and the command stops with one line naming why."""
    from peft import LoraConfig, get_peft_model
    from typer.testing import CliRunner

    from persona_probe.cli import app
    from persona_probe.models import load_subject

    fresh = load_subject("smollm2-135m-instruct", device="cpu")
    peft_model = get_peft_model(fresh.model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    res = CliRunner().invoke(app, ["screen-latents", "--adapter", str(tmp_path / "adapter"),
                                   "--out", str(tmp_path / "screen"), "--diff-per-domain", "1",
                                   "--n-delta", "2", "--n-attribution", "0", "--max-set", "1",
                                   "--dtype", "float32"])
    assert res.exit_code == 2, res.output
    assert "no shift to screen for" in res.output


def test_specific_ranking_subtracts_what_the_same_ablation_does_to_the_base(subject, planted,
                                                                            tmp_path):
    """rank_by specific_removed ablates every candidate in the base too: each row's specific
    share equals (finetune effect − base effect) / gap, the base effect measured here
    independently, and the planted latent still comes first."""
    from persona_probe.interventions import SAELatents, ablate

    cfg = ScreeningConfig(n_delta=3, n_attribution=0, max_set=1, rank_by="specific_removed")
    sae = planted["sae"]
    cand = rank_candidates(sae, planted["rows_f"], planted["rows_b"], None, cfg)
    chosen = screen_latents(subject, planted["ft"], sae, cand["candidates"], planted["metric"],
                            cfg, tmp_path)
    assert chosen["chosen_by"] == "specific_removed" and chosen["latents"] == [planted["star"]]
    m_b, m_f = planted["metric"](subject), planted["metric"](planted["ft"])
    gap = float((m_f - m_b).mean())
    for row in chosen["screen"]:
        with ablate(subject, SAELatents(sae, [row["latent"]]), "latent"):
            base_effect = float((m_b - planted["metric"](subject)).mean())
        assert row["ablate_base_effect"] == pytest.approx(base_effect, abs=1e-6)
        assert row["specific_removed"] == pytest.approx(
            (row["ablate_effect"] - base_effect) / gap, abs=1e-6)
    with pytest.raises(ScreeningError, match="rank_by"):
        ScreeningConfig(rank_by="biggest")
