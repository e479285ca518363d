"""No module imports a later step of the pipeline (docs/DESIGN.md §1): the step of every
module is read from DESIGN.md's module table, so the document and the code cannot drift."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "persona_probe"
#: (importer prefix, imported prefix): why the later step may be imported
ALLOWED = {("experiments", "figures"): "an experiment's draw(out) calls the figure builders on "
                                      "the results it saved"}


def _steps() -> dict[str, int | None]:
    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    steps: dict[str, int | None] = {}
    for m in re.finditer(r"^\| (\d|–) \| (.+?) \|", text, re.M):
        for mod in re.findall(r"`persona_probe/([\w/]+?)(?:\.py|/)`", m.group(2)):
            steps[mod.replace("/", ".").removesuffix(".__init__")] = (
                None if m.group(1) == "–" else int(m.group(1)))
    return steps


def _step_of(mod: str, steps: dict[str, int | None]) -> int | None | str:
    parts = mod.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in steps:
            return steps[".".join(parts[:i])]
    return "?"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for p in sorted(PACKAGE.rglob("*.py")):
        if p.name == "__init__.py" and p.parent != PACKAGE / "experiments":
            continue      # package inits re-export their own modules
        out.append((".".join(p.relative_to(PACKAGE).with_suffix("").parts)
                    .removesuffix(".__init__"), p))
    return out


def test_every_module_has_a_step_in_the_design():
    steps = _steps()
    missing = [m for m, _ in _modules() if _step_of(m, steps) == "?"]
    assert not missing, f"add these modules to docs/DESIGN.md's table: {missing}"


def _violations(sources: list[tuple[str, str]], steps: dict[str, int | None]) -> list[str]:
    bad = []
    for mod, text in sources:
        mine = _step_of(mod, steps)
        if mine in (None, "?"):
            continue
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("persona_probe.")):
                continue
            target = node.module.removeprefix("persona_probe.")
            theirs = _step_of(target, steps)
            if theirs in (None, "?") or theirs <= mine:
                continue
            if any(mod.startswith(a) and target.startswith(b) for a, b in ALLOWED):
                continue
            bad.append(f"{mod} (step {mine}) imports {target} (step {theirs}) at line "
                       f"{node.lineno}")
    return bad


def test_no_module_imports_a_later_step():
    sources = [(m, p.read_text(encoding="utf-8")) for m, p in _modules()]
    bad = _violations(sources, _steps())
    assert not bad, bad


def test_the_check_sees_a_planted_violation():
    steps = _steps()
    assert _step_of("capture", steps) == 2 and _step_of("figures.bars", steps) == 8
    planted = [("capture", "def f():\n    from persona_probe.evals.judges import make_judge\n"),
               ("evals.em", "from persona_probe.capture import capture\n"),
               ("experiments.x", "from persona_probe.figures.export import write_html\n")]
    assert _violations(planted, steps) == [
        "capture (step 2) imports evals.judges (step 5) at line 2"]
