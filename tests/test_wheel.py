"""The package works from an installed wheel, not only from a git checkout: the shipped SAE,
the built-in traits, splits, probe judges and coherence data are package data, found without
the repository beside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = r"""
import json, sys
from pathlib import Path
import persona_probe
site = Path(sys.argv[1]).resolve()
assert Path(persona_probe.__file__).resolve().is_relative_to(site), persona_probe.__file__
from persona_probe.sae.io import load_sae, shipped_sae_path
assert shipped_sae_path().resolve().is_relative_to(site), shipped_sae_path()
sae = load_sae("shipped")                      # sha256 of the weights checked on load
from persona_probe.traits import load_split, load_trait, trait_questions
split = load_split("evil-line1-pairs")
from persona_probe.evals.coherence import coherence_data_path
print(json.dumps({"d_sae": sae.cfg.d_sae, "hook": sae.cfg.metadata.hook_name,
                  "evil_replies": len(load_trait("evil").trait_replies),
                  "evaluation_questions": len(split.evaluation[1]),
                  "extract": len(trait_questions("extract")),
                  "coherence_rule": coherence_data_path("rule.json").is_file()}))
"""


@pytest.mark.slow
def test_shipped_files_load_from_an_installed_wheel(tmp_path):
    import shutil

    py = sys.executable
    # build from a copy of the sources, so no stale build/ directory of the checkout (which
    # setuptools never prunes) can slip removed files into the wheel
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in ("persona_probe", "saes/smollm2-135m-instruct"):
        shutil.copytree(ROOT / rel, src / rel, symlinks=True, ignore=ignore)
    for rel in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / rel, src / rel)
    build = subprocess.run([py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", str(src), "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("persona_probe-*.whl"))
    site = tmp_path / "site"
    inst = subprocess.run([py, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, cwd=tmp_path)
    assert inst.returncode == 0, inst.stderr[-2000:]
    assert not (site / "persona_probe" / "data" / "saes" / "smollm2-135m-instruct").is_symlink()
    env = {**os.environ, "PYTHONPATH": str(site), "PERSONA_PROBE_DATA": str(tmp_path / "none"),
           "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([py, "-c", CHECK, str(site)], capture_output=True, text=True,
                         cwd=tmp_path, env=env)        # far from the checkout
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == {"d_sae": 2304, "hook": "blocks.15.hook_resid_post", "evil_replies": 6,
                   "evaluation_questions": 40, "extract": 24, "coherence_rule": True}
