"""README result tables are rendered from the committed results: a number in the README that
its results file does not say fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_probe.experiments.readme_tables import RENDERERS, check_readme, render_readme

ROOT = Path(__file__).resolve().parent.parent


def test_every_readme_table_matches_its_results_file():
    status = check_readme(ROOT)
    assert status and all(status.values()), (
        f"README blocks out of date: {[k for k, ok in status.items() if not ok]}; run "
        "python experiments/render_readme.py")


def test_a_changed_number_is_caught(tmp_path):
    """The check is not vacuous: edit one rendered number and it fails; re-render and it
    passes."""
    import shutil

    for results, _ in RENDERERS.values():
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
