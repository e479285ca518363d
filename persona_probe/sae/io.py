"""Load SAEs (any sae-lens directory, or sae-lens's pretrained registry) and check that an SAE
fits the subject it is applied to.

A pretrained release is named ``sae-lens:RELEASE/SAE_ID`` (e.g.
``sae-lens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical``); the release's model is
checked against the subject *before* anything is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from persona_probe.artifacts import sha256_file
from persona_probe.conventions import LAYER_CONVENTION, check_convention
from persona_probe.errors import PersonaProbeError
from persona_probe.models import Subject

REGISTRY_PREFIX = "sae-lens:"


class SAELoadError(PersonaProbeError):
    pass


class SAEMismatchError(PersonaProbeError):
    """An SAE applied to a subject or hook point it was not trained for."""


def _norm_model(name: str | None) -> str:
    """Compare model names across conventions: 'google/gemma-2-2b' ~ 'gemma-2-2b',
    'HuggingFaceTB/SmolLM2-135M-Instruct' ~ 'smollm2-135m-instruct'."""
    base = (name or "").rstrip("/").split("/")[-1].lower()
    return re.sub(r"\.gguf$", "", base)


def registry_entry(spec: str) -> tuple[str, str, str]:
    """``sae-lens:RELEASE/SAE_ID`` → (release, sae_id, model name), from the bundled registry."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    body = spec.removeprefix(REGISTRY_PREFIX)
    directory = get_pretrained_saes_directory()
    release = next((r for r in sorted(directory, key=len, reverse=True)
                    if body.startswith(r + "/")), None)
    if release is None:
        close = [r for r in directory if body.split("/")[0][:8] in r][:5]
        raise SAELoadError(f"{spec}: no sae-lens release matches; write sae-lens:RELEASE/SAE_ID"
                           + (f" (similar releases: {', '.join(close)})" if close else ""))
    sae_id = body[len(release) + 1:]
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        some = list(lookup.saes_map)[:3]
        raise SAELoadError(f"{spec}: release {release} has no SAE {sae_id!r} (e.g. "
                           f"{', '.join(some)})")
    return release, sae_id, lookup.model


def load_sae(spec: str | Path, device: str = "cpu", dtype: str | None = None,
             subject: Subject | None = None):
    """A sae-lens ``SAE`` from a directory (``cfg.json`` + ``sae_weights.safetensors``), from
    ``sae-lens:RELEASE/SAE_ID``, or ``shipped`` (this project's SAE for the embedded model).
    With ``subject``, a model or width mismatch is an error (checked before downloading for
    registry SAEs). ``dtype`` None means float32 on CPU (half-precision matmuls are slow
    there) and the saved dtype elsewhere."""
    from sae_lens import SAE

    if dtype is None and str(device).startswith("cpu"):
        dtype = "float32"
    if str(spec) == "shipped":
        spec = shipped_sae_path()

    spec_s = str(spec)
    if spec_s.startswith(REGISTRY_PREFIX):
        release, sae_id, model = registry_entry(spec_s)
        if subject is not None and _norm_model(model) != _norm_model(subject.spec):
            raise SAEMismatchError(f"SAE {spec_s} was trained on {model}, but the subject is "
                                   f"{subject.spec}; load {model} or pick an SAE for "
                                   f"{subject.spec}")
        sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype or "float32")
    else:
        path = Path(spec_s)
        if not (path / "cfg.json").is_file() or not (path / "sae_weights.safetensors").is_file():
            raise SAELoadError(f"{path} is not an SAE directory (needs cfg.json and "
                               "sae_weights.safetensors, the sae-lens format)")
        verify_sae_files(path)
        try:
            sae = SAE.load_from_disk(path, device=device, dtype=dtype)
        except Exception as exc:  # safetensors, json and sae-lens each raise their own types
            raise SAELoadError(f"{path}: cannot load as a sae-lens SAE ({type(exc).__name__}: "
                               f"{exc}); re-download or retrain it") from None
    record_convention(sae, where=spec_s)
    if subject is not None:
        check_compatible(sae, subject)
    return sae


def record_convention(sae, where: str = "SAE"):
    """Every SAE records the layer convention its ``hook_name`` is read in. sae-lens names hook
    points in TransformerLens's vocabulary, so an SAE saved without the field (by sae-lens, or
    here before it existed) is in that convention; a convention this version does not know is
    an error, never a silent shift of the layer."""
    md = sae.cfg.metadata
    if "layer_convention" not in md or md.layer_convention is None:
        md.layer_convention = LAYER_CONVENTION
    try:
        check_convention(md.layer_convention, where)
    except PersonaProbeError as exc:
        raise SAELoadError(str(exc)) from None
    return sae


def verify_sae_files(path: Path) -> None:
    """Check the sha256 that ``train_sae`` recorded in ``persona_probe.json`` for each file (an
    SAE from elsewhere has none, and is loaded as it is)."""
    info = path / "persona_probe.json"
    if not info.is_file():
        return
    try:
        digests = json.loads(info.read_text(encoding="utf-8")).get("sha256") or {}
    except (ValueError, AttributeError) as exc:
        raise SAELoadError(f"{info} is unreadable ({exc}); retrain the SAE or delete that file "
                           "to load the sae-lens files unchecked") from None
    for name, digest in digests.items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise SAELoadError(f"{path / name} is corrupted or truncated (sha256 differs from "
                               "the one recorded at training); restore it from git or retrain "
                               "the SAE")


SHIPPED = "saes/smollm2-135m-instruct/blocks.15.hook_resid_post/topk-2304"


def shipped_sae_path() -> Path:
    """The SAE this project trained for the embedded model: package data in an installed
    wheel (``persona_probe/data/saes/``, a link to ``saes/`` in the checkout, so git holds the
    files once), else ``saes/`` beside the package in a checkout."""
    from importlib import resources

    rel = SHIPPED.removeprefix("saes/")
    packaged = Path(str(resources.files("persona_probe") / "data" / "saes" / rel))
    checkout = Path(__file__).resolve().parents[2] / SHIPPED
    for path in (packaged, checkout):
        if (path / "cfg.json").is_file():
            return path
    raise SAELoadError(f"the shipped SAE is in neither {packaged} nor {checkout}; reinstall "
                       "the package, or rebuild it in a checkout with `make shipped-sae`")


def check_compatible(sae, subject: Subject, hook: str | None = None) -> None:
    """Raise SAEMismatchError naming both sides if width, hook point or model differ."""
    name = sae.cfg.metadata.model_name
    if sae.cfg.d_in != subject.d_model:
        raise SAEMismatchError(f"SAE d_in is {sae.cfg.d_in}, but {subject.spec} has d_model "
                               f"{subject.d_model}; use an SAE trained on this model")
    sae_hook = sae.cfg.metadata.hook_name
    if hook is not None and sae_hook is not None and sae_hook != hook:
        raise SAEMismatchError(f"SAE was trained at {sae_hook}, but it is applied at {hook}; "
                               f"use hook {sae_hook} or an SAE for {hook}")
    if name and _norm_model(name) != _norm_model(subject.spec):
        raise SAEMismatchError(f"SAE was trained on {name}, but the subject is {subject.spec}; "
                               "load that model or an SAE trained on this one")
    if sae_hook:
        from persona_probe.hooks import parse_hook

        parse_hook(sae_hook, subject.n_layers)  # a layer beyond the model is an error too
