"""The diagnostic's own validity check (line 2): a context that raises its intended dimension
more than the others passes, one that raises every dimension alike does not, and the check runs
on the real model's scores."""

from __future__ import annotations

import numpy as np
import pytest

from persona_probe.evals.diagnostic import DiagnosticError, diagnostic_validity


def _records(shifts: dict[str, dict[str, float]], n: int = 20, seed: int = 0) -> list[dict]:
    """would_say-style records: per dimension n holder ('pos') and n non-holder ('neg')
    statements with their own baselines; a context adds ``shifts[ctx][dim]`` to its holder
    statements (plus small noise)."""
    rng = np.random.default_rng(seed)
    base = {d: rng.normal(-2, 0.5, 2 * n) for d in ("a", "b", "c")}
    base["a"][:n] += 1.5        # a's holder statements are likelier to begin with
    recs = []
    for ctx, by_dim in shifts.items():
        for d, vals in base.items():
            for k, v in enumerate(vals):
                pos = k < n
                recs.append({"context": ctx, "dimension": d, "statement": f"{d}{k}",
                             "group": "pos" if pos else "neg",
                             "value": float(v + (by_dim.get(d, 0.0) if pos else 0.0)
                                            + rng.normal(0, 0.01))})
    return recs


def test_a_context_that_raises_its_own_dimension_passes_and_a_general_one_does_not():
    recs = _records({"neutral": {}, "to_a": {"a": 0.5}, "all": {"a": 0.5, "b": 0.5, "c": 0.5}})
    v = diagnostic_validity(recs, {"to_a": "a", "all": "a"}, n_boot=500)
    assert v["to_a"]["passes"] and v["to_a"]["margin"]["mean"] == pytest.approx(0.5, abs=0.02)
    assert not v["all"]["passes"] and abs(v["all"]["margin"]["mean"]) < 0.02
    # the raw margin keeps the statement sets' baselines (a's holders start 1.5 higher)
    assert v["to_a"]["raw_margin"]["mean"] > v["to_a"]["margin"]["mean"] + 1.0
    assert v["to_a"]["others"] == ["b", "c"]
    assert v["to_a"]["intended_shift"]["mean"] == pytest.approx(0.5, abs=0.02)
    # lowering the others is not seeing the intended dimension: margin up, own shift ~0
    low = diagnostic_validity(_records({"neutral": {}, "down": {"b": -0.5, "c": -0.5}}),
                              {"down": "a"}, n_boot=500)["down"]
    assert low["margin"]["lo"] > 0 and not low["passes"]
    with pytest.raises(DiagnosticError, match="no records for context"):
        diagnostic_validity(recs, {"missing": "a"})


def test_validity_on_the_real_model_under_constitution_prompts(subject, tmp_path):
    """On the real model's would-say scores the margin equals its definition recomputed by
    hand from the stored items (holders' mean minus non-holders', shift from neutral)."""
    from persona_probe.evals.diagnostic import Context, constitution_context, run_diagnostic
    from persona_probe.evals.records import read_items

    ctxs = [Context(), constitution_context("deontology"), constitution_context("virtue_ethics")]
    run_diagnostic(subject, ["deontology", "virtue_ethics"], ctxs, "would_say", out=tmp_path,
                   n_boot=50)
    recs = read_items(tmp_path / "items.jsonl")
    v = diagnostic_validity(recs, {"constitution:deontology": "deontology",
                                   "constitution:virtue_ethics": "virtue_ethics"}, n_boot=200)

    def score(ctx, dim):
        vals = {g: [r["value"] for r in recs if r["context"] == ctx and r["dimension"] == dim
                    and r["group"] == g] for g in ("pos", "neg")}
        assert len(vals["pos"]) == len(vals["neg"]) == 22
        return np.mean(vals["pos"]) - np.mean(vals["neg"])

    for ctx, dim, other in (("constitution:deontology", "deontology", "virtue_ethics"),
                            ("constitution:virtue_ethics", "virtue_ethics", "deontology")):
        want = ((score(ctx, dim) - score("neutral", dim))
                - (score(ctx, other) - score("neutral", other)))
        m = v[ctx]["margin"]
        assert m["mean"] == pytest.approx(want, abs=1e-9) and m["lo"] <= m["mean"] <= m["hi"]
        assert v[ctx]["passes"] == (m["lo"] > 0 and v[ctx]["intended_shift"]["lo"] > 0)


def test_cli_eval_diagnostic_validate_prints_the_check(tmp_path):
    from typer.testing import CliRunner

    from persona_probe.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["eval", "diagnostic", "--out", str(tmp_path), "--validate",
                              "--dimensions", "deontology,human_authority"])
    assert res.exit_code == 0, res.output
    lines = [x.strip() for x in res.output.splitlines() if "margin" in x or "sees" in x]
    assert "deontology: margin" in lines[0]
    assert "human_authority: margin" in lines[1]
    seen = sum("-> seen" in line for line in lines[:2])
    assert lines[-1].endswith(f"the diagnostic sees {seen} of 2 dimensions")
    bad = runner.invoke(app, ["eval", "diagnostic", "--out", str(tmp_path / "x"), "--validate",
                              "--system", "a=b"])
    assert bad.exit_code == 2 and "drop --system" in bad.output
    nocon = runner.invoke(app, ["eval", "diagnostic", "--out", str(tmp_path / "y"),
                                "--validate", "--dimensions", "sycophancy"])
    assert nocon.exit_code == 2 and "no constitution" in nocon.output


def test_validate_diagnostic_without_out_leaves_no_temporary_directory(tmp_path, monkeypatch):
    """Without ``out`` the items live in a temporary directory that is gone when the call
    returns, and the check is the same as with an ``out`` that keeps them."""
    import tempfile

    from persona_probe.evals.diagnostic import validate_diagnostic
    from persona_probe.models import load_subject

    from tiny_models import build_tiny

    tiny = load_subject(str(build_tiny("llama", tmp_path / "tiny")), device="cpu",
                        dtype="float32")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    dims = ["deontology", "human_authority"]
    got = validate_diagnostic(tiny, dims, n_boot=200)
    assert list(scratch.iterdir()) == []
    kept = validate_diagnostic(tiny, dims, out=tmp_path / "kept", n_boot=200)
    assert got == kept and set(got) == set(dims)
    assert (tmp_path / "kept" / "items.jsonl").is_file()
    with pytest.raises(DiagnosticError, match="unknown statement source"):
        validate_diagnostic(tiny, dims, source="nope")
    assert list(scratch.iterdir()) == []        # a refused run cleans up too
