"""README result tables are rendered from the committed results: a number in the README that
its results file does not say fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_probe.experiments.readme_tables import RENDERERS, check_readme, render_readme

ROOT = Path(__file__).resolve().parent.parent


def test_every_readme_table_matches_its_results_file():
    status = check_readme(ROOT)
    assert status and not [k for k, ok in status.items() if ok is False], (
        f"README blocks out of date: {[k for k, ok in status.items() if ok is False]}; run "
        "python experiments/render_readme.py")
    assert sum(ok is True for ok in status.values()) >= 4      # the committed experiments


def test_a_pending_experiment_claims_nothing_and_a_stray_block_fails(tmp_path):
    """An experiment that has not run (no results, no block) is pending, not passing; a block
    whose results file is missing fails."""
    import shutil

    for results, _ in RENDERERS.values():
        if (ROOT / results).is_file():
            (tmp_path / Path(results).parent).mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / results, tmp_path / results)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    name, (results, _) = next(iter(RENDERERS.items()))
    (tmp_path / results).unlink()
    text = (tmp_path / "README.md").read_text()
    assert check_readme(tmp_path)[name] is False               # block, no file
    start, end = text.index(f"<!-- results:{name} "), text.index(f"<!-- /results:{name} -->")
    (tmp_path / "README.md").write_text(text[:start]
                                        + text[end + len(f"<!-- /results:{name} -->"):])
    assert check_readme(tmp_path)[name] is None                # neither: pending


def test_a_changed_number_is_caught(tmp_path):
    """The check is not vacuous: edit one rendered number and it fails; re-render and it
    passes."""
    import shutil

    for results, _ in RENDERERS.values():
        if (ROOT / results).is_file():
            (tmp_path / Path(results).parent).mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / results, tmp_path / results)
    name = next(iter(RENDERERS))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert check_readme(tmp_path)[name]
    text = (tmp_path / "README.md").read_text()
    start = text.index(f"<!-- results:{name} ")
    i = next(j for j in range(start, len(text)) if text[j].isdigit() and text[j] != "0")
    (tmp_path / "README.md").write_text(text[:i] + str((int(text[i]) % 9) + 1) + text[i + 1:])
    assert not check_readme(tmp_path)[name]
    render_readme(tmp_path)
    assert check_readme(tmp_path)[name]


def test_missing_results_file_is_a_clear_error(tmp_path):
    from persona_probe.errors import PersonaProbeError

    (tmp_path / "README.md").write_text("<!-- results:persona_latents x -->\nold\n"
                                        "<!-- /results:persona_latents -->\n")
    with pytest.raises(PersonaProbeError, match="run the experiment first"):
        render_readme(tmp_path)


def test_a_summary_block_reads_every_file_it_names(tmp_path):
    """The line-1 summary is rendered from several results files: a change in any of them makes
    the README block stale, and a run without a file is listed as not run, not invented."""
    import json
    import shutil

    from persona_probe.experiments.readme_tables import ALSO, LINE1_RUNS, rendered

    assert ALSO["line1_summary"] == tuple(p for _, p in LINE1_RUNS[1:])
    main, second = LINE1_RUNS[0][1], LINE1_RUNS[1][1]
    for p in (main, second):
        (tmp_path / Path(p).parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / p, tmp_path / p)
    before = rendered("line1_summary", tmp_path)
    not_run = ", ".join(label for label, _ in LINE1_RUNS[2:])
    assert "fourth run" in before and f"Not run yet: {not_run}." in before
    res = json.loads((tmp_path / second).read_text())
    row = next(r for r in res["screening"] if r["primary"])
    row["gap_removed"]["mean"] = 0.123
    (tmp_path / second).write_text(json.dumps(res))
    after = rendered("line1_summary", tmp_path)
    assert after != before and "+12% [" in after
    (tmp_path / second).unlink()
    assert "fourth run" not in rendered("line1_summary", tmp_path).split("Not run yet")[0]
