"""The notebooks run top to bottom on the embedded model (executed with nbclient in a scratch
directory, their small settings as committed): a notebook that no longer runs fails here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "experiments" / "notebooks").glob("*.ipynb"))


def test_notebooks_are_generated_from_their_source():
    """The committed .ipynb files match build_notebooks.py (edit there, regenerate)."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location(
        "build_notebooks", ROOT / "experiments" / "notebooks" / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert sorted(mod.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        committed = nbformat.read(path, as_version=4)
        built = mod.build(mod.NOTEBOOKS[path.name])
        assert [c.source for c in committed.cells] == [c.source for c in built.cells], path.name
        assert all(not c.get("outputs") for c in committed.cells), f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PERSONA_PROBE_REPO", str(ROOT))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    last = nb.cells[-1]["outputs"]
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in last), \
        "the last cell shows a plotly figure"
    nbformat.write(nb, tmp_path / path.name)     # kept for a look when a test fails
