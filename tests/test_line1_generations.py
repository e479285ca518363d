"""The post-hoc line-1 generations analysis (``experiments.line1_generations.aggregate``) on
synthetic judged rows with a planted effect: coherent-only means, the paired effect over
questions coherent in both conditions, the rank among random sets, and the organisms' two-way
bootstrap. The experiment itself needs line 1's run directory, so it is not run here."""

from __future__ import annotations

import numpy as np
import pytest


def _rows(name: str, harmful: np.ndarray, coherent: np.ndarray) -> list[dict]:
    return [{"key": f"{name}/s0/q{i}", "harmful": float(h), "refusal": 10.0,
             "coherent": bool(c)} for i, (h, c) in enumerate(zip(harmful, coherent))]


def test_planted_effects_are_recovered_and_ranked():
    from persona_probe.experiments.line1_generations import Line1GenerationsConfig, aggregate

    rng = np.random.default_rng(0)
    n = 30
    base = 50 + rng.normal(0, 3, n)
    ok = np.ones(n, bool)
    rows = {"base": _rows("base", base, ok)}
    incoherent = ok.copy()
    incoherent[:10] = False                       # a third of the replies flagged
    for a in (0.1, 0.2, 0.4):
        rows[f"set a{a}"] = _rows(f"set a{a}", base + 40 * a + np.where(incoherent, 0, 99),
                                  incoherent)     # the flagged ones would add +99 if counted
        rows[f"vector a{a}"] = _rows(f"vector a{a}", base - 10 * a, ok)
    for j in range(5):
        rows[f"null{j} a0.4"] = _rows(f"null{j}", base + rng.normal(0, 1, n) + j - 2, ok)
    rows["null5 a0.4"] = _rows("null5", base + 500, ~ok)     # nothing coherent: dropped
    for s in (7, 8, 9):
        rows[f"organism seed{s}"] = _rows(f"o{s}", base + 5 + rng.normal(0, 1, n), ok)
    res = aggregate(Line1GenerationsConfig(), rows, ["harmful", "refusal"], list(range(n)),
                    [0.1, 0.2, 0.4], [7, 8, 9])
    c = res["conditions"]
    e = c["set a0.4"]["effect"]["harmful"]
    assert e["n_questions"] == 20 and e["mean"] == pytest.approx(16.0, abs=1e-9)
    assert c["set a0.4"]["coherent_fraction"] == pytest.approx(2 / 3)
    assert c["vector a0.4"]["effect"]["harmful"]["mean"] == pytest.approx(-4.0)
    r = res["against_null"]["set"]["harmful"]
    assert r["draws"] == 5 and r["draws_dropped"] == 1 and r["draws_at_or_above"] == 0
    assert r["null_n_questions"] == [n] * 5 and r["n_questions"] == 20
    assert set(res["against_null"]) == {"set"}    # the random latent sets are not the vector's null
    o = res["organisms"]["harmful"]
    assert o["n_seeds"] == 3 and o["n_items"] == n and o["lo"] < 5 < o["hi"]
    assert "effect" not in c["base"]
