"""The stage runner: reuse only from the same inputs, refuse a stale output naming the fix,
resume an interrupted stage, and say whether a run came from one clean commit."""

from __future__ import annotations

import json

import pytest

from persona_probe import stages as stages_mod
from persona_probe.stages import StageMismatchError, Stages, fingerprint


def _counting_build(calls: list, value: str = "out"):
    def build(d):
        calls.append(d)
        d.mkdir(parents=True, exist_ok=True)
        (d / "x.txt").write_text(value)
        return (d / "x.txt").read_text()
    return build


def test_reuses_a_finished_stage_with_the_same_inputs(tmp_path):
    calls: list = []
    s = Stages(tmp_path)
    assert s.run("a", {"k": 1}, _counting_build(calls)) == "out"
    again = Stages(tmp_path)                       # a new session over the same directory
    assert again.run("a", {"k": 1}, _counting_build(calls),
                     load=lambda d: (d / "x.txt").read_text()) == "out"
    assert len(calls) == 1
    rec = json.loads((tmp_path / "a" / "stage.json").read_text())
    assert rec["status"] == "done" and rec["fingerprint"] == fingerprint({"k": 1})
    assert rec["compute_seconds"] >= 0 and rec["attempts"] == 1


def test_refuses_other_inputs_naming_overwrite_and_the_changed_key(tmp_path):
    calls: list = []
    Stages(tmp_path).run("a", {"k": 1, "same": 0}, _counting_build(calls))
    with pytest.raises(StageMismatchError, match=r"--overwrite") as exc:
        Stages(tmp_path).run("a", {"k": 2, "same": 0}, _counting_build(calls))
    assert "k" in str(exc.value) and "same" not in str(exc.value).split("differ in:")[1]
    assert (tmp_path / "a" / "x.txt").read_text() == "out"      # nothing already written lost
    Stages(tmp_path, overwrite=True).run("a", {"k": 2, "same": 0},
                                         _counting_build(calls, "new"))
    assert (tmp_path / "a" / "x.txt").read_text() == "new" and len(calls) == 2


def test_changed_keys_compares_inputs_as_stored():
    """The one rule every "same inputs?" check uses (stages, distill, DPO, finetune)."""
    from pathlib import Path

    from persona_probe.artifacts import changed_keys

    recorded = json.loads(json.dumps({"a": 1, "b": [1, 2], "p": "/x/y", "gone": 3}))
    same = {"a": 1, "b": (1, 2), "p": Path("/x/y"), "gone": 3}   # tuple / Path as stored
    assert changed_keys(recorded, same) == []
    assert changed_keys(recorded, {**same, "b": (1, 3), "new": None}) == ["b"]  # None = absent
    assert changed_keys(recorded, {**same, "a": 2, "new": 0}) == ["a", "new"]
    assert changed_keys(recorded, {"a": 1}) == ["b", "gone", "p"]     # missing on one side
    assert changed_keys(recorded, {"a": 1}, keys=["a"]) == []      # only the keys asked about


def test_changed_fields_ignores_a_new_field_at_its_default():
    from dataclasses import asdict, dataclass, field

    from persona_probe.training.finetune import changed_fields

    @dataclass
    class Cfg:
        z: int = 0
        a: tuple[int, ...] = (1, 2)
        extra: list[str] = field(default_factory=list)

    old = json.loads(json.dumps(asdict(Cfg())))
    assert changed_fields(old, Cfg()) == []
    assert changed_fields(old, Cfg(z=1, a=(1,))) == ["z", "a"]       # field order, not sorted
    del old["extra"]                       # a record written before the field existed
    assert changed_fields(old, Cfg()) == []
    assert changed_fields(old, Cfg(extra=["x"])) == ["extra"]

def test_refuses_a_directory_nothing_says_produced(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "stray.json").write_text("{}")
    with pytest.raises(StageMismatchError, match="stage.json"):
        Stages(tmp_path).run("a", {}, _counting_build([]))


def test_an_interrupted_stage_resumes_with_its_partial_output(tmp_path):
    def crash(d):
        d.mkdir(parents=True, exist_ok=True)
        (d / "part1").write_text("done")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        Stages(tmp_path).run("a", {"k": 1}, crash)
    assert json.loads((tmp_path / "a" / "stage.json").read_text())["status"] == "running"
    seen = []

    def resume(d):
        seen.append((d / "part1").is_file())
        return "ok"
    s = Stages(tmp_path)
    assert s.run("a", {"k": 1}, resume) == "ok" and seen == [True]
    assert s.records["a"].attempts == 2
    with pytest.raises(StageMismatchError):     # a partial output under other inputs: refused
        (tmp_path / "a" / "stage.json").write_text(json.dumps(
            {**json.loads((tmp_path / "a" / "stage.json").read_text()), "status": "running"}))
        Stages(tmp_path).run("a", {"k": 3}, resume)


def test_downstream_fingerprint_changes_when_upstream_is_rebuilt(tmp_path):
    s = Stages(tmp_path)
    s.run("up", {"v": 1}, _counting_build([]))
    s.run("down", {"up": s.fingerprint_of("up")}, _counting_build([]))
    s2 = Stages(tmp_path, overwrite=False)
    s2.run("up", {"v": 1}, _counting_build([]))
    s2.run("down", {"up": s2.fingerprint_of("up")}, _counting_build([]))   # same: reused
    s3 = Stages(tmp_path, overwrite=True)
    s3.run("up", {"v": 2}, _counting_build([]))
    with pytest.raises(StageMismatchError):
        Stages(tmp_path).run("down", {"up": s3.fingerprint_of("up")}, _counting_build([]))


@pytest.mark.parametrize("shas, expected", [
    (["abc", "abc"], True), (["abc", "abd"], False), (["abc-dirty", "abc-dirty"], False),
    ([None], False)])
def test_from_scratch_needs_one_clean_commit(tmp_path, monkeypatch, shas, expected):
    s = Stages(tmp_path)
    for i, sha in enumerate(shas):
        monkeypatch.setattr(stages_mod, "git_sha", lambda sha=sha: sha)
        s.run(f"s{i}", {}, lambda d: None)
    assert s.from_scratch() is expected


def test_a_stage_resumed_under_other_code_is_not_from_scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(stages_mod, "git_sha", lambda: "aaa")
    with pytest.raises(KeyboardInterrupt):
        Stages(tmp_path).run("a", {}, lambda d: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr(stages_mod, "git_sha", lambda: "bbb")
    s = Stages(tmp_path)
    s.run("a", {}, lambda d: None)
    assert s.records["a"].git_sha.startswith("mixed:") and not s.from_scratch()


# --- the two-way bootstrap -----------------------------------------------------------------

def test_crossed_bootstrap_width_matches_a_known_simulated_design():
    """cells = seed effect + item effect + noise: the CI of the grand mean must have the width
    that design implies (sd² = σs²/S + σq²/Q + σe²/SQ), not the width of S·Q independent
    cells, which is what resampling rows as if independent would give."""
    import numpy as np

    from persona_probe.stats import bootstrap, crossed_bootstrap

    rng = np.random.default_rng(0)
    S, Q, ss, sq, se = 30, 40, 1.0, 1.0, 0.5
    widths, naive = [], []
    for rep in range(20):
        cells = (rng.normal(0, ss, (S, 1)) + rng.normal(0, sq, (1, Q))
                 + rng.normal(0, se, (S, Q)))
        est = crossed_bootstrap(cells, n_boot=1000, seed=rep)
        widths.append(est.hi - est.lo)
        naive.append(bootstrap(cells.ravel(), n_boot=1000, seed=rep).hi
                     - bootstrap(cells.ravel(), n_boot=1000, seed=rep).lo)
        assert est.n_seeds == S and est.n_items == Q and "two-way" in est.method
    true_sd = np.sqrt(ss ** 2 / S + sq ** 2 / Q + se ** 2 / (S * Q))
    expected = 2 * 1.96 * true_sd
    assert 0.8 * expected < np.mean(widths) < 1.1 * expected
    assert np.mean(naive) < 0.3 * expected             # the naive CI is far too narrow here


def test_crossed_ratio_and_per_seed_signs():
    import numpy as np

    from persona_probe.stats import crossed_bootstrap

    num = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [3.0, 2.0, 1.0]])
    den = np.full((3, 3), 4.0)
    est = crossed_bootstrap(num, den, n_boot=500)
    assert est.mean == pytest.approx(0.5) and est.lo <= 0.5 <= est.hi
    assert est.per_seed == pytest.approx((0.5, 0.5, 0.5)) and est.signs_agree
    # a ratio of means, not a mean of ratios; seeds are rows (S=2 != Q=4)
    n2 = np.array([[1.0, 1.0, 1.0, 1.0], [4.0, 4.0, 4.0, 4.0]])
    d2 = np.array([[1.0, 1.0, 1.0, 1.0], [8.0, 8.0, 8.0, 8.0]])
    r = crossed_bootstrap(n2, d2, n_boot=500)
    assert r.mean == pytest.approx(5 / 9) and r.per_seed == pytest.approx((1.0, 0.5))
    assert r.n_seeds == 2 and r.n_items == 4
    assert set(est.to_dict()) >= {"mean", "lo", "hi", "n_seeds", "n_items", "method"}
    one = crossed_bootstrap(num[:1])
    assert one.n_seeds == 1 and "one seed" in one.method
    with pytest.raises(ValueError, match="shape"):
        crossed_bootstrap(num, den[:2])


def test_cluster_bootstrap_resamples_questions_not_answers():
    """Twenty answers per question that agree within a question: the interval over questions
    is far wider than one that treats the 400 answers as independent."""
    import numpy as np

    from persona_probe.stats import bootstrap, cluster_bootstrap

    rng = np.random.default_rng(0)
    per_q = rng.random(20) < 0.5
    values = np.repeat(per_q, 20).astype(float)
    clusters = np.repeat(np.arange(20), 20)
    est = cluster_bootstrap(values, clusters, seed=0)
    naive = bootstrap(values, seed=0)
    assert est.mean == naive.mean and est.n == 20
    assert (est.hi - est.lo) > 3 * (naive.hi - naive.lo)
