"""Safe artifacts, checked on the source itself: nothing unpickles a file (torch.load only with
weights_only=True, no pickle/dill/joblib loads, no numpy allow_pickle), remote code is never
trusted by default, and every artifact the package writes is safetensors or JSON. The API-key
scan of a real run is in test_judges (it needs the loopback server)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import persona_probe

PACKAGE = Path(persona_probe.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def test_sources_were_found():
    assert len(SOURCES) > 40 and (PACKAGE / "store.py") in SOURCES


def _unpickling(sources: dict[str, str]) -> list[str]:
    problems = []
    for path, text in sources.items():
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""])
                bad = [m for m in mods if m.split(".")[0] in UNSAFE_MODULES]
                if bad:
                    problems.append(f"{path}:{node.lineno} imports {bad}")
        for call in _calls(tree):
            name = _name(call.func)
            if name.endswith("torch.load"):
                wo = _kw(call, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{path}:{call.lineno} torch.load without "
                                    "weights_only=True")
            if name.endswith(("np.load", "numpy.load")):
                ap = _kw(call, "allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{path}:{call.lineno} np.load(allow_pickle=...)")
            if name.endswith(("pd.read_pickle", "read_pickle")):
                problems.append(f"{path}:{call.lineno} {name}")
    return problems


def _texts() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text(encoding="utf-8") for p in SOURCES}


def test_no_unpickling_anywhere():
    assert not _unpickling(_texts())


def test_the_scan_catches_what_it_looks_for():
    bad = {"x.py": "import pickle\nimport torch\nfrom joblib import load\n"
                   "torch.load('f')\ntorch.load('f', weights_only=False)\n"
                   "torch.load('f', weights_only=True)\nnp.load('f', allow_pickle=True)\n"}
    found = _unpickling(bad)
    assert len(found) == 5, found   # two imports, two torch.loads, one np.load


def test_remote_code_is_never_trusted_by_default():
    from persona_probe.models import load_subject

    assert inspect.signature(load_subject).parameters["trust_remote_code"].default is False
    problems = []
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            v = _kw(call, "trust_remote_code")
            if isinstance(v, ast.Constant) and v.value is True:
                problems.append(f"{path.name}:{call.lineno} {_name(call.func)}")
    assert not problems, problems


#: persona_vectors' own file format is a torch.save'd tensor: ``interop.save_persona_vectors_pt``
#: writes one plain float tensor there for other tools (it is read back with weights_only=True).
ALLOWED_TORCH_SAVE = {"interop.py": 1}


def test_artifacts_are_written_as_safetensors_or_json():
    """No torch.save / np.save / pickle.dump: tensors go through safetensors' save_file (or
    save_pretrained, which writes safetensors), everything else through JSON writers."""
    problems = []
    allowed = dict(ALLOWED_TORCH_SAVE)
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            name = _name(call.func)
            if name == "torch.save" and allowed.get(path.name, 0) > 0:
                allowed[path.name] -= 1     # the one documented exception, counted
                continue
            if name in ("torch.save", "np.save", "np.savez", "numpy.save", "pickle.dump",
                        "pickle.dumps"):
                problems.append(f"{path.name}:{call.lineno} {name}")
            if name.endswith("save_pretrained"):
                ss = _kw(call, "safe_serialization")
                if ss is not None and not (isinstance(ss, ast.Constant) and ss.value is True):
                    problems.append(f"{path.name}:{call.lineno} save_pretrained without "
                                    "safetensors")
    assert not problems, problems
