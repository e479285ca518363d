"""The shipped SAE: present, loadable, small, and documented with the numbers it has."""

from __future__ import annotations

import json
import re
from pathlib import Path

from persona_probe.sae import load_sae
from persona_probe.sae.io import shipped_sae_path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_sae_loads_and_is_small():
    path = shipped_sae_path()
    sae = load_sae("shipped")
    assert sae.cfg.d_in == 576 and sae.cfg.d_sae == 2304 and sae.cfg.k == 32
    assert sae.cfg.metadata.hook_name == "blocks.15.hook_resid_post"
    assert sae.cfg.metadata.model_name == "smollm2-135m-instruct"
    assert sae.W_enc.dtype.is_floating_point and str(sae.W_enc.dtype) == "torch.float32"  # CPU
    assert json.loads((path / "cfg.json").read_text())["dtype"] == "float16"
    assert (path / "sae_weights.safetensors").stat().st_size < 6_000_000


def test_write_norms_are_what_an_ablation_removes_per_unit_of_activation():
    """Line 1's SAE runs match their nulls on activation, which equals matching on write mass
    when every latent writes a unit row per unit of activation. The shipped TopK SAE rescales
    its activations by the decoder norm, so that holds whatever W_dec's norms; its raw rows
    are unit-norm too. Without the rescaling, a row's norm is what it writes."""
    import copy

    import numpy as np
    import torch

    from persona_probe.latent_dictionaries import SAEDictionary
    from persona_probe.latent_screening import matched_random_sets, null_matching_mass

    sae = load_sae("shipped")
    assert float((sae.W_dec.detach().norm(dim=-1) - 1).abs().max()) < 2e-3
    d = SAEDictionary(sae)
    torch.testing.assert_close(d.write_norms(), torch.ones(d.d_sae), atol=1e-5, rtol=0)
    mass = np.random.default_rng(0).gamma(2.0, 1.0, d.d_sae)
    chosen = [int(np.argmax(mass)), 7, 300]
    assert matched_random_sets(null_matching_mass(d, mass, "write"), chosen, 100, seed=2026) \
        == matched_random_sets(mass, chosen, 100, seed=2026)
    plain = copy.deepcopy(sae)
    plain.cfg.rescale_acts_by_decoder_norm = False
    scale = torch.linspace(0.5, 2.0, d.d_sae)
    with torch.no_grad():
        plain.W_dec.mul_(scale[:, None])
    got = SAEDictionary(plain).write_norms()
    torch.testing.assert_close(got, plain.W_dec.detach().norm(dim=-1), atol=1e-4, rtol=1e-4)
    assert matched_random_sets(null_matching_mass(plain, mass, "write"), chosen, 100, 2026) \
        != matched_random_sets(mass, chosen, 100, seed=2026)


def test_readme_numbers_are_the_measured_ones():
    metrics = json.loads((shipped_sae_path() / "metrics.json").read_text())
    text = (ROOT / "saes" / "README.md").read_text()

    def cell(label: str) -> str:
        m = re.search(rf"^\| {re.escape(label)} \| ([^|]+) \|$", text, re.M)
        assert m, f"saes/README.md has no row {label!r}"
        return m.group(1).strip()

    a, d = metrics["activation"], metrics["downstream"]
    assert cell("explained variance") == f"{a['explained_variance']:.4f}"
    assert cell("L0") == f"{a['l0']:.2f}"
    assert cell("dead latents (never fire on held-out rows)") == f"{a['dead_fraction']:.2%}"
    assert cell("CE delta") == f"{d['ce_delta']:+.4f}"
