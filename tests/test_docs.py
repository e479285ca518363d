"""The design document lives in the repository and names only code that exists.

docs/DESIGN.md is checked for every ``persona_probe/….py`` path and every dotted
``persona_probe.x.y`` name it mentions (a module, a package, or one attribute defined at the top
level of a module; an all-capitals component such as ``NAME.py`` is a placeholder and
skipped), and README.md must send readers to it rather than to a file outside the
repository.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"

_PATH_RE = re.compile(r"persona_probe/[\w/]*\w\.py\b")
_DIR_RE = re.compile(r"persona_probe/[\w/]*/(?![\w.])")
_DOTTED_RE = re.compile(r"(?<![\w/.])persona_probe(?:\.[A-Za-z_]\w*)+")
_FILE_SUFFIXES = ("json", "jsonl")  # persona_probe.json is an artifact file name, not a module
_PLACEHOLDER_RE = re.compile(r"(?:^|/)[A-Z][A-Z0-9_]*(?:/|\.py$)")  # persona_probe/x/NAME.py


def _design_text() -> str:
    assert DESIGN.is_file(), "docs/DESIGN.md is missing"
    return DESIGN.read_text(encoding="utf-8")


def _top_level_names(module: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def _resolves(dotted: str) -> bool:
    """A module or package of the repository, or such a module plus one top-level name."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:n])
        module = base.with_suffix(".py")
        package = base / "__init__.py"
        rest = parts[n:]
        found = module if module.is_file() else package if package.is_file() else None
        if found is None:
            continue
        return not rest or (len(rest) == 1 and rest[0] in _top_level_names(found))
    return False


def test_design_doc_names_only_existing_files_and_modules():
    text = _design_text()
    paths = sorted(p for p in set(_PATH_RE.findall(text)) if not _PLACEHOLDER_RE.search(p))
    dirs = sorted(d for d in set(_DIR_RE.findall(text)) if not _PLACEHOLDER_RE.search(d))
    dotted = sorted({d for d in _DOTTED_RE.findall(text)
                     if d.rsplit(".", 1)[-1] not in _FILE_SUFFIXES})
    assert paths and dotted, "the pattern found nothing: has the document's style changed?"
    missing = [p for p in paths if not (ROOT / p).is_file()]
    missing += [d for d in dirs if not (ROOT / d).is_dir()]
    missing += [d for d in dotted if not _resolves(d)]
    assert not missing, f"docs/DESIGN.md names what the repository does not have: {missing}"


def test_readme_links_the_design_doc_inside_the_repository():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/DESIGN.md" in readme
    assert "../shared/DESIGN.md" not in readme
    assert "shared/DESIGN.md" not in readme and "shared/STYLE.md" not in readme
