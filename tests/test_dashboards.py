"""Feature dashboards (``persona_probe.figures.dashboards``): data for two latents of the shipped
SAE on six real prompts with the embedded model (top examples, histogram, logit effects, evil
steering on two questions), pages rendered from the saved JSON alone, and opened in headless
Chromium with no network (the helpers of ``test_figures_offline``): the screenshots must show a
drawn page, and no page may point at a CDN."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

QUESTIONS_N = 2
ALPHAS = (0.0, 0.2, 0.4)


@pytest.fixture(scope="module")
def sae(subject):
    from persona_probe.sae import load_sae

    return load_sae("shipped", subject=subject)


@pytest.fixture(scope="module")
def items():
    from persona_probe.prompts import load_prompts

    return load_prompts("builtin:everyday")[::10][:6]      # six prompts, several topics


@pytest.fixture(scope="module")
def reference(subject, sae, items):
    """Every latent's activation on every token of the items, computed here independently,
    and the two latents shown: the one with the largest activation, and the one firing on the
    most tokens (another one where the first is also that)."""
    from persona_probe.latents import encode_rows, token_activations

    rows, where = token_activations(subject, sae, items, "all")
    acts = encode_rows(sae, rows)
    first = int(acts.max(0).values.argmax())
    by_count = torch.argsort((acts > 0).sum(0), descending=True).tolist()
    second = next(i for i in by_count if i != first)
    return acts, where, [first, second]


@pytest.fixture(scope="module")
def saved(subject, sae, items, reference, tmp_path_factory):
    from persona_probe.latent_dashboards import (compute_latent_dashboard_data,
                                                 save_dashboard_data)
    from persona_probe.traits import load_trait, trait_questions

    _, _, latents = reference
    ranking = [{"latent": latents[0], "delta_mean": 0.8, "delta_freq": 0.02},
               {"latent": latents[1], "delta_mean": 0.3, "delta_freq": -0.01}]
    data = compute_latent_dashboard_data(
        subject, sae, latents, items, trait=load_trait("evil"),
        questions=trait_questions("extract")[:QUESTIONS_N], alphas=ALPHAS, top_k=8,
        ranking=ranking, sae_spec="shipped")
    out = tmp_path_factory.mktemp("dash")
    return data, save_dashboard_data(data, out)


def test_data_is_json_with_provenance(saved, reference):
    from persona_probe.artifacts import read_json

    data, path = saved
    assert path.name == "dashboard.json"
    assert read_json(path) == json.loads(json.dumps(data))    # plain JSON, no str() fallbacks
    prov = data["provenance"]
    assert prov["model"]["model"] == "smollm2-135m-instruct"
    assert prov["model"]["revision"].startswith("gguf-sha256:")
    assert prov["sae"]["hook_name"] == "blocks.15.hook_resid_post"
    assert prov["sae"]["spec"] == "shipped" and len(prov["sae"]["weights_sha256"]) == 64
    assert prov["layer_convention"]["name"] == prov["sae"]["layer_convention"] == (
        "transformer_lens")
    assert "resid_post" in prov["layer_convention"]["meaning"]
    assert [e["latent"] for e in data["latents"]] == reference[2]
    assert [e["rank"] for e in data["latents"]] == [1, 2]
    assert data["latents"][0]["ranking"]["delta_mean"] == 0.8


def test_top_examples_and_histogram_match_the_activations(saved, reference, items):
    acts, where, latents = reference
    data, _ = saved
    context = data["items"]["context"]
    for j, e in enumerate(data["latents"]):
        col = acts[:, latents[j]]
        s = e["summary"]
        assert s["n_tokens"] == col.numel() == len(where)
        assert s["n_nonzero"] == int((col > 0).sum()) > 0
        assert s["max"] == pytest.approx(float(col.max()), rel=1e-5)
        exs = e["top_examples"]
        assert 1 <= len(exs) <= 8
        top = exs[0]
        assert top["peak_act"] == pytest.approx(float(col.max()), rel=1e-5)
        peaks = [x["peak_act"] for x in exs]
        assert peaks == sorted(peaks, reverse=True) and min(peaks) > 0
        assert len({x["item"] for x in exs}) == len(exs)             # one example per item
        for x in exs:
            n = len(x["tokens"])
            assert n == len(x["acts"]) == len(x["positions"]) == len(x["token_ids"])
            assert x["acts"][x["peak"]] == x["peak_act"] == max(x["acts"])
            assert x["positions"][x["peak"]] == x["peak_position"]
            assert all(abs(p - x["peak_position"]) <= context for p in x["positions"])
        h = e["histogram"]
        assert sum(h["counts"]) == s["n_nonzero"]
        assert len(h["edges"]) == len(h["counts"]) + 1
        assert h["edges"][0] == pytest.approx(float(col[col > 0].min()), rel=1e-5)
        assert h["edges"][-1] == pytest.approx(float(col.max()), rel=1e-5)


def test_logit_effects_are_the_direct_path(saved, subject, sae):
    from persona_probe.hooks import final_norm

    data, _ = saved
    assert "LlamaRMSNorm weight" in data["logit_effects"]
    W_U = subject.model.get_output_embeddings().weight.detach().float()
    gamma = final_norm(subject.model).weight.detach().float()
    for e in data["latents"]:
        lg = e["logits"]
        assert len(lg["positive"]) == len(lg["negative"]) == 10
        pos = [r["value"] for r in lg["positive"]]
        neg = [r["value"] for r in lg["negative"]]
        assert pos == sorted(pos, reverse=True) and neg == sorted(neg)
        assert min(pos) > max(neg)
        row = sae.W_dec[e["latent"]].detach().float()
        eff = (row / row.norm() * gamma) @ W_U.T
        assert lg["positive"][0]["id"] == int(eff.argmax())
        assert lg["negative"][0]["id"] == int(eff.argmin())
        assert lg["positive"][0]["value"] == pytest.approx(float(eff.max()), rel=1e-4)
        assert sum(lg["histogram"]["counts"]) == W_U.shape[0]


def test_steering_effect_on_the_trait(saved, subject):
    from persona_probe.likelihood import trait_scores
    from persona_probe.traits import load_trait, trait_questions

    data, _ = saved
    st = data["steering"]
    assert st["trait"] == "evil" and st["alphas"] == list(ALPHAS)
    assert len(st["questions"]) == QUESTIONS_N and st["reference_norm"] > 0
    unsteered = trait_scores(subject, load_trait("evil"), trait_questions("extract")[:QUESTIONS_N])
    for e in data["latents"]:
        rows = e["steering"]
        assert [r["alpha"] for r in rows] == list(ALPHAS)
        assert all(len(r["scores"]) == QUESTIONS_N for r in rows)
        assert rows[0]["scores"] == pytest.approx(unsteered.tolist(), abs=1e-5)
        assert all(r["mean"] == pytest.approx(np.mean(r["scores"])) for r in rows)
        assert abs(rows[-1]["mean"] - rows[0]["mean"]) > 1e-4      # the edit did something


def _srcs(text: str) -> list[str]:
    return re.findall(r'<script[^>]*\ssrc="([^"]+)"', text)


def test_pages_render_from_the_saved_json_alone(saved, tmp_path):
    from persona_probe.figures.dashboards import write_latent_dashboards
    from persona_probe.figures.export import PLOTLYJS, plotlyjs_bundle

    data, path = saved
    pages = write_latent_dashboards(path, tmp_path)                 # the file, no model
    latents = [e["latent"] for e in data["latents"]]
    assert [p.name for p in pages] == ["index.html"] + [f"latent-{i}.html" for i in latents]
    assert (tmp_path / PLOTLYJS).read_bytes() == plotlyjs_bundle()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in pages] + [PLOTLYJS])
    index = pages[0].read_text()
    for i in latents:
        assert f'href="latent-{i}.html"' in index or f"href='latent-{i}.html'" in index
    assert index.index(f"latent-{latents[0]}.html") < index.index(f"latent-{latents[1]}.html")
    for page, e in zip(pages[1:], data["latents"]):
        text = page.read_text()
        assert _srcs(text) == [PLOTLYJS]
        assert "cdn" not in text.lower() and not re.search(r"https?://", text)
        assert len(text) < 200_000                                  # plotly.js not embedded
        n_tokens = sum(len(x["tokens"]) for x in e["top_examples"])
        assert text.count('<span title="') + text.count('<span class="peak" title="') == n_tokens
        for fig in ("hist", "logits", "steer"):
            assert f'id="{fig}-{e["latent"]}"' in text

    # token text is escaped: a token that looks like markup stays text
    evil = json.loads(json.dumps(data))
    ex = evil["latents"][0]["top_examples"][0]
    ex["tokens"][ex["peak"]] = '<script>alert("x")</script>&'
    pages = write_latent_dashboards(evil, tmp_path / "escaped")
    text = pages[1].read_text()
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in text


def _screenshot(browser: str, html, tmp, size: str = "1100,2000") -> np.ndarray:
    """``test_figures_offline``'s headless Chromium with every host unresolvable and no route
    out, in a window tall enough for a whole latent page."""
    import subprocess

    from test_figures_offline import _png_pixels

    png = tmp / f"{html.stem}.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--proxy-server=http://127.0.0.1:9", f"--user-data-dir={tmp / f'profile-{html.stem}'}",
           f"--screenshot={png}", f"--window-size={size}", "--virtual-time-budget=5000",
           html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert png.is_file() and png.stat().st_size > 0, (
        f"Chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-800:]}")
    return _png_pixels(png)


def _share_near(pixels: np.ndarray, hex_colour: str, tol: int = 12) -> float:
    rgb = np.array([int(hex_colour[k:k + 2], 16) for k in (1, 3, 5)])
    return float((np.abs(pixels.astype(int) - rgb).max(axis=2) < tol).mean())


def test_dashboards_open_offline_in_headless_chromium(saved, tmp_path):
    from test_figures_offline import _drawn

    from persona_probe.figures import PALETTE
    from persona_probe.figures.dashboards import write_latent_dashboards
    from persona_probe.figures.export import find_browser

    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome on PATH or in BROWSER_PATH (Debian: apt-get install "
                    "chromium); the offline rendering check needs one")
    _, path = saved
    index, latent_page = write_latent_dashboards(path, tmp_path / "site")[:2]
    shares = {}
    for page in (index, latent_page):
        pixels = _screenshot(browser, page, tmp_path)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1, f"{page.name}: one colour"
        assert _drawn(pixels) > 0.01, f"{page.name} looks blank offline"
        shares[page.name] = {c: _share_near(pixels, c) for c in PALETTE[:3]}
    # plotly drew offline: the index's ranking bars (blue); on a latent page the lowered-logit
    # bars (blue) and the steering curve (green), which only the charts use
    blue, green = PALETTE[0], PALETTE[2]
    assert shares[index.name][blue] > 0.01, shares
    assert shares[latent_page.name][blue] > 0.005, shares
    assert shares[latent_page.name][green] > 0.0001, shares


def test_cli_renders_from_saved_data_and_rejects_ambiguous_input(saved, tmp_path):
    from typer.testing import CliRunner

    from persona_probe.cli import app

    _, path = saved
    runner = CliRunner()
    res = runner.invoke(app, ["dashboards", "--data", str(path), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "index.html").is_file() and "2 latent pages" in res.output
    res = runner.invoke(app, ["dashboards", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--latents" in res.output
    res = runner.invoke(app, ["dashboards", "--ranking", str(tmp_path / "none.jsonl"),
                              "--out", str(tmp_path)])
    assert res.exit_code == 2 and "rank-latents" in res.output
