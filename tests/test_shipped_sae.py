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


def test_shipped_sae_decoder_rows_are_unit_norm_so_write_matching_equals_activation():
    """Line 1's SAE runs match their nulls on activation; that equals matching on the mass an
    ablation removes only because the decoder rows have unit norm, checked here."""
    import numpy as np

    from persona_probe.latent_dictionaries import SAEDictionary
    from persona_probe.latent_screening import matched_random_sets, null_matching_mass

    d = SAEDictionary(load_sae("shipped"))
    norms = d.write_norms()
    assert float((norms - 1).abs().max()) < 2e-3
    mass = np.random.default_rng(0).gamma(2.0, 1.0, d.d_sae)
    chosen = [int(np.argmax(mass)), 7, 300]
    assert matched_random_sets(null_matching_mass(d, mass, "write"), chosen, 100, seed=2026) \
        == matched_random_sets(mass, chosen, 100, seed=2026)


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
