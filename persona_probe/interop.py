"""Other tools' persona vectors and SAEs, read into this project's types (and vectors written
back out), with every layer index translated explicitly and recorded.

Formats (each read from its project's own saving code; none of their code is imported):

- **persona_vectors** (safety-research/persona_vectors): one ``torch.save``'d tensor of shape
  ``[n_layers + 1, d_model]``, e.g. ``evil_response_avg_diff.pt``, row ``i`` computed from HF
  ``hidden_states[i]``. So their "layer 20" is the output of ``model.layers[19]``, our
  ``blocks.19.hook_resid_post``; row 0 is the embeddings (``blocks.0.hook_resid_pre``); and row
  ``n_layers`` is taken *after the final norm*, which no residual hook point is, so it is never
  imported, and ``blocks.{n_layers-1}.hook_resid_post`` is never exported into it. Read with
  ``torch.load(weights_only=True)`` only: a file that pickles anything but tensors is refused.
  Written in the same layout; rows we have no vector for are NaN (default, so a consumer that
  uses one fails loudly instead of steering by zero) or zeros, and a JSON sidecar
  (``FILE.pt.json``) records the mapping, which rows are real, and what the values are.
- **dictionary_learning** (saprmarks/dictionary_learning): a directory with ``ae.pt`` (a
  state dict) and ``config.json`` (``{"trainer": {...}, "buffer": {...}}``). The trainer's
  ``layer`` L is read as the output of ``model.layers[L]`` (buffer ``io`` "out", the default)
  → ``blocks.L.hook_resid_post``, or its input (``io`` "in") → ``blocks.L.hook_resid_pre``; the
  label is the trainer's, so a ``submodule_name`` naming an MLP or attention output is refused
  rather than guessed, and ``hook=`` overrides. sae-lens converts this format only from the
  Hugging Face Hub (``dictionary_learning_sae_huggingface_loader_1``), so the directory reader
  here is our own; its mapping of dictionary classes to sae-lens architectures follows that
  converter's.
- **sparsify** (EleutherAI/sparsify): one folder per hookpoint holding ``cfg.json`` and
  ``sae.safetensors``; the folder name is the hooked module, ``layers.15`` (or
  ``model.layers.15``) being the output of ``model.layers[15]`` → ``blocks.15.hook_resid_post``
  and ``embed_tokens`` the embedding output → ``blocks.0.hook_resid_pre``. Loaded through
  sae-lens's own converter (``sparsify_disk_loader``) with two corrections, both checked against
  sparsify's encode/decode in the tests: sparsify stores ``W_dec`` as ``[num_latents, d_in]``
  (sae-lens's layout already; the converter transposes it, which cannot load), and sparsify
  subtracts ``b_dec`` before encoding in every SAE (the converter applies it only when
  ``normalize_decoder`` is false).

Every imported artifact says where it came from: a Direction's ``meta["source"]`` (file, sha256,
the index mapping, which rows were read and which skipped and why); an SAE's metadata
(``layer_convention``, ``source_format``, ``source_hookpoint``, ``source_layer_mapping``,
``source_sha256``). ``check_against_subject`` then checks either against the model it will be
used on, for an SAE by reconstructing real activations of that model.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from persona_probe.artifacts import atomic_write, read_json, sha256_file, write_json
from persona_probe.conventions import CONVENTIONS, LAYER_CONVENTION
from persona_probe.directions import Direction, DirectionError
from persona_probe.errors import PersonaProbeError
from persona_probe.hooks import HookPoint, parse_hook
from persona_probe.models import Subject
from persona_probe.provenance import provenance
from persona_probe.sae.io import (SAELoadError, SAEMismatchError, _norm_model, check_compatible,
                                  record_convention)


class InteropError(PersonaProbeError):
    """A file in another tool's format that cannot be read or written as asked."""


# --- persona_vectors ---------------------------------------------------------------------

PV_FORMAT = "persona_vectors"
PV_INDEX_MAP = ("persona_vectors row i = HF hidden_states[i]: row i (1 ≤ i < n_layers) → "
                "blocks.{i-1}.hook_resid_post; row 0 (embeddings) → blocks.0.hook_resid_pre; "
                "row n_layers is after the final norm and has no residual hook point")
SIDECAR_SUFFIX = ".json"
Fill = Literal["nan", "zeros"]


def sidecar_path(path: str | Path) -> Path:
    """``evil_response_avg_diff.pt`` → ``evil_response_avg_diff.pt.json``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def pv_row_to_hook(i: int, n_layers: int | None) -> HookPoint:
    """The hook point persona_vectors row ``i`` was read at; the final-norm row is an error."""
    if i < 0 or (n_layers is not None and i > n_layers):
        raise InteropError(f"persona_vectors row {i} does not exist: a model with {n_layers} "
                           f"layers has rows 0..{n_layers}")
    if n_layers is not None and i == n_layers:
        raise InteropError(
            f"persona_vectors row {i} is HF hidden_states[{i}], the last hidden state, which HF "
            f"takes after the model's final norm; no residual hook point is normed, so it "
            f"cannot be imported as blocks.{i - 1}.hook_resid_post. Use a row in 1..{i - 1} "
            "(row i is blocks.{i-1}.hook_resid_post)")
    return HookPoint(0, "pre") if i == 0 else HookPoint(i - 1, "post")


def hook_to_pv_row(hp: HookPoint, n_layers: int) -> int | None:
    """The persona_vectors row holding ``hp``, or None where no row does (resid_post at the last
    layer: that row is after the final norm)."""
    if hp.site == "mid":
        raise InteropError(f"{hp.name}: persona_vectors rows are hidden_states, which have no "
                           "resid_mid; export a resid_pre or resid_post direction")
    row = hp.layer if hp.site == "pre" else hp.layer + 1
    return None if row == n_layers and hp.site == "post" else row


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else "no message"


def load_tensor_file(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong: a file that
    pickles Python objects (which weights_only refuses, since unpickling them can run code), or
    one that is not a torch file at all."""
    path = Path(path)
    if not path.is_file():
        raise InteropError(f"{path}: no such file ({what})")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":   # torch.save's zip, or a bare pickle
        raise InteropError(f"{path} is not a readable torch file (neither torch.save's zip "
                           f"format nor a pickle); a {what} is written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, matched by name: no pickle import here
        if type(exc).__name__ != "UnpicklingError":
            raise
        text = str(exc)
        if "weights only" not in text.lower():
            raise InteropError(f"{path} is not a readable torch file ({_first_line(exc)}); a "
                               f"{what} is written by torch.save") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        detail = (f"it pickles a Python object ({found.group(1)}), not only tensors"
                  if found else "it is not plain tensors saved by torch.save (e.g. a pickle of "
                  "other objects, or one torch's safe loader cannot read)")
        raise InteropError(
            f"{path}: refused to load: {detail}, and torch.load(weights_only=True) does not "
            f"unpickle arbitrary objects, since that can run code. A {what} is plain tensors; "
            "if you made this file and trust it, load it yourself and re-save only the "
            "tensor(s) with torch.save") from None
    except Exception as exc:  # torch's readers raise RuntimeError, KeyError, EOFError, ...
        raise InteropError(f"{path} is not a readable torch file ({type(exc).__name__}: "
                           f"{_first_line(exc)}); a {what} is written by torch.save — "
                           "re-download or re-save it") from None


def _empty(row: torch.Tensor) -> bool:
    """A row that holds no vector: all NaN (our export's fill) or all zero."""
    return bool(torch.isnan(row).all() or (row == 0).all())


def _read_sidecar(path: Path) -> dict | None:
    """Our export's sidecar, if present and written for exactly this file's bytes."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        info = read_json(side)
    except ValueError:
        return None
    if not isinstance(info, dict) or info.get("sha256") != sha256_file(path):
        return None          # the .pt was replaced or edited since: trust only the tensor
    return info


def load_persona_vectors_pt(path: str | Path, layer_index: int | Sequence[int] | None = None,
                            subject: Subject | None = None, name: str | None = None,
                            n_layers: int | None = None) -> Direction:
    """A persona_vectors vector file as a Direction in our layer convention.

    ``layer_index`` is in *persona_vectors'* indexing (their ``--layer``, the hidden_states
    index): row i becomes ``blocks.{i-1}.hook_resid_post``; 0 alone gives the embeddings
    (``blocks.0.hook_resid_pre``). None imports every row that has a residual hook point: rows
    1..n_layers-1 as layers 0..n_layers-2 (row 0 and the final-norm row are skipped, and the
    direction's ``meta["source"]["skipped"]`` says why). The file's values are kept as ``raw``
    (persona_vectors steers by ``coef * vector``, unnormalized). A 1-D file is one vector and
    needs ``layer_index``. With ``subject`` the shape is checked against the model and the model
    recorded; ``n_layers`` stands in for a subject when checking a 1-D file's index."""
    path = Path(path)
    t = load_tensor_file(path, "persona_vectors vector file")
    what = (f"{path}: persona_vectors saves one tensor of shape [n_layers + 1, d_model] (e.g. "
            "evil_response_avg_diff.pt)")
    if not isinstance(t, torch.Tensor):
        raise InteropError(f"{path} holds a {type(t).__name__}, not a tensor. {what}")
    if not t.is_floating_point():
        raise InteropError(f"{path} holds a {t.dtype} tensor, not floating point. {what}")
    if t.ndim not in (1, 2) or t.shape[-1] < 1 or (t.ndim == 2 and t.shape[0] < 2):
        raise InteropError(f"{path} holds a tensor of shape {tuple(t.shape)}. {what}")
    t = t.detach().to("cpu", torch.float32)
    d_model = int(t.shape[-1])
    if subject is not None:
        n_layers = subject.n_layers
        if d_model != subject.d_model:
            raise InteropError(f"{path} has vectors of width {d_model}, but {subject.spec} has "
                               f"d_model {subject.d_model}: it was made for another model; "
                               "import it against that model")
    if t.ndim == 2:
        file_layers = int(t.shape[0]) - 1
        if n_layers is not None and file_layers != n_layers:
            model = subject.spec if subject is not None else "the model"
            raise InteropError(
                f"{path} has {t.shape[0]} rows, the hidden_states of a {file_layers}-layer "
                f"model, but {model} has {n_layers} layers (so {n_layers + 1} rows): it was "
                "made for another model")
        n_layers = file_layers
    sidecar = _read_sidecar(path)

    auto = layer_index is None
    if auto:
        if t.ndim == 1:
            raise InteropError(f"{path} holds a single vector; say which persona_vectors layer "
                               "(hidden_states index) it is for with layer_index / "
                               "--layer-index")
        wanted = list(range(1, n_layers))  # type: ignore[arg-type]
    else:
        wanted = [layer_index] if isinstance(layer_index, int) else list(layer_index)
        if not wanted or not all(isinstance(i, int) for i in wanted):
            raise InteropError(f"layer_index must be an integer or a list of them, not "
                               f"{layer_index!r}")
        if t.ndim == 1 and len(wanted) != 1:
            raise InteropError(f"{path} holds one vector; give one layer_index, not {wanted}")
        if 0 in wanted and len(wanted) > 1:
            raise InteropError("row 0 (the embeddings, blocks.0.hook_resid_pre) is at a "
                               "different site than rows ≥ 1 (resid_post); import it on its own "
                               "with layer_index=0")
    hooks = {i: pv_row_to_hook(i, n_layers) for i in wanted}

    rows: list[int] = []
    skipped: dict[str, str] = {}
    for i in wanted:
        row = t if t.ndim == 1 else t[i]
        if _empty(row):
            if not auto:
                raise InteropError(f"{path}: row {i} holds no vector (all NaN or zero)"
                                   + (f"; rows with vectors: {_filled_rows(t)}"
                                      if t.ndim == 2 else ""))
            skipped[str(i)] = "holds no vector (all NaN or zero)"
            continue
        if not torch.isfinite(row).all():
            raise InteropError(f"{path}: row {i} is partly NaN or infinite; the file is "
                               "corrupted or was computed from a diverged run")
        rows.append(i)
    if auto:
        skipped["0"] = ("the embeddings (blocks.0.hook_resid_pre), a different site than the "
                        "other rows; import it on its own with layer_index=0")
        skipped[str(n_layers)] = ("HF's last hidden state, taken after the final norm; no "
                                  "residual hook point is normed")
    if not rows:
        raise InteropError(f"{path} holds no vector in any row with a residual hook point")
    data = torch.stack([t if t.ndim == 1 else t[i] for i in rows])
    site = hooks[rows[0]].site
    source: dict[str, Any] = {
        "format": PV_FORMAT, "path": str(path), "sha256": sha256_file(path),
        "shape": list(t.shape), "n_layers": n_layers, "index_convention": PV_INDEX_MAP,
        "rows": {str(i): hooks[i].name for i in rows},
        "skipped": dict(sorted(skipped.items(), key=lambda kv: int(kv[0]))),
        "values": "raw (the file's values, unnormalized)"}
    meta: dict[str, Any] = {"method": "imported", "source": source,
                            "provenance": provenance()}
    if sidecar is not None:
        source["sidecar"] = {k: sidecar[k] for k in ("exported_from", "values", "fill")
                             if k in sidecar}
        for k in ("trait", "model"):
            if k in (sidecar.get("exported_from") or {}).get("meta", {}):
                meta[k] = sidecar["exported_from"]["meta"][k]
    if subject is not None:
        meta["model"] = subject.provenance()
    name = name or (sidecar or {}).get("exported_from", {}).get("name") or path.stem
    return Direction(name, [hooks[i].layer for i in rows], data, data.clone(), site, meta,
                     LAYER_CONVENTION)


def _filled_rows(t: torch.Tensor) -> list[int]:
    return [i for i in range(t.shape[0]) if not _empty(t[i])]


def _direction_n_layers(direction: Direction) -> int | None:
    model = direction.meta.get("model")
    if isinstance(model, dict) and isinstance(model.get("n_layers"), int):
        return model["n_layers"]
    src = direction.meta.get("source")
    if isinstance(src, dict) and isinstance(src.get("n_layers"), int):
        return src["n_layers"]
    return None


_EXPORTED_META = ("method", "trait", "positions", "n_trait", "n_anti", "model", "seed")


def save_persona_vectors_pt(direction: Direction, path: str | Path, n_layers: int | None = None,
                            fill: Fill = "nan", values: Literal["raw", "unit"] = "raw") -> Path:
    """Write ``direction`` in persona_vectors' layout: a float32 ``[n_layers + 1, d_model]``
    tensor (``torch.save``, loadable with ``weights_only=True``), ``blocks.L.hook_resid_post``
    at row L+1 and ``blocks.L.hook_resid_pre`` at row L. Rows without a vector are ``fill``: NaN
    by default, so a consumer that reads one fails loudly instead of steering by zero; "zeros"
    where a tool needs finite rows. ``blocks.{n_layers-1}.hook_resid_post`` is not written (its
    row is HF's final-normed state) and the sidecar says so. ``values`` "raw" writes the
    unnormalized difference when the direction has one (persona_vectors steers by
    ``coef * vector``), "unit" the unit vectors. ``n_layers`` defaults to the model the direction
    records."""
    path = Path(path)
    if fill not in ("nan", "zeros"):
        raise InteropError(f"fill must be 'nan' or 'zeros', not {fill!r}")
    if values not in ("raw", "unit"):
        raise InteropError(f"values must be 'raw' or 'unit', not {values!r}")
    n = n_layers if n_layers is not None else _direction_n_layers(direction)
    if n is None:
        raise InteropError(f"direction {direction.name} does not record its model's layer "
                           "count; pass n_layers (the model's num_hidden_layers) or --model")
    bad = [layer for layer in direction.layers if not 0 <= layer < n]
    if bad:
        raise InteropError(f"direction {direction.name} has layers {bad}, outside a {n}-layer "
                           f"model (0..{n - 1}); pass the n_layers of the model it was made on")
    src, used = ((direction.raw, "raw") if values == "raw" and direction.raw is not None
                 else (direction.vectors, "unit"))
    out = torch.full((n + 1, direction.d_model), math.nan if fill == "nan" else 0.0,
                     dtype=torch.float32)
    rows: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for k, layer in enumerate(direction.layers):
        hp = HookPoint(layer, direction.site)  # type: ignore[arg-type]
        row = hook_to_pv_row(hp, n)
        if row is None:
            skipped[hp.name] = (f"row {n} is HF's last hidden state, after the final norm; "
                                f"{hp.name} is before it, so it is not written there")
            continue
        out[row] = src[k].float()
        rows[str(row)] = hp.name
    if not rows:
        raise InteropError(f"direction {direction.name} has no layer that a persona_vectors row "
                           f"holds ({', '.join(skipped)}); nothing to write")
    atomic_write(path, lambda tmp: torch.save(out.contiguous(), tmp))
    write_json(sidecar_path(path), {
        "format": PV_FORMAT, "shape": list(out.shape), "n_layers": n,
        "index_convention": PV_INDEX_MAP, "rows": dict(sorted(rows.items(),
                                                            key=lambda kv: int(kv[0]))),
        "not_written": skipped, "fill": fill,
        "values": used + (" (raw requested; the direction has none)"
                          if values == "raw" and used == "unit" else ""),
        "exported_from": {"name": direction.name, "layers": direction.layers,
                          "site": direction.site,
                          "layer_convention": direction.layer_convention,
                          "meta": {k: direction.meta[k] for k in _EXPORTED_META
                                   if k in direction.meta}},
        "provenance": provenance(), "sha256": sha256_file(path)})
    return path


# --- SAEs ---------------------------------------------------------------------------------

DL_FORMAT = "dictionary_learning"
SPARSIFY_FORMAT = "sparsify"
SAEFormat = Literal["auto", "dictionary_learning", "sparsify"]

# dictionary_learning class → sae-lens architecture (as sae-lens's own HF converter maps them)
DL_CLASSES = {"AutoEncoder": "standard", "AutoEncoderTopK": "topk", "TopKSAE": "topk",
              "BatchTopKSAE": "jumprelu", "MatryoshkaBatchTopKSAE": "jumprelu",
              "JumpReluAutoEncoder": "jumprelu", "GatedAutoEncoder": "gated"}
_NOT_RESIDUAL = ("mlp", "attn", "attention", "embed", "ln", "norm")


def _sae_lens_version() -> str:
    import sae_lens

    return sae_lens.__version__


def _build_sae(path: Path, cfg: dict, state: dict[str, torch.Tensor], device: str,
               dtype: str, where: str):
    """A sae-lens SAE from a v6 config dict and state dict, through ``SAE.load_from_disk`` (a
    converter that returns them), so sae-lens builds and checks it as for any directory."""
    from sae_lens import SAE

    def converter(_path, _device, cfg_overrides=None):
        return {**cfg, **(cfg_overrides or {})}, state

    try:
        return SAE.load_from_disk(path, device=device, dtype=dtype, converter=converter)
    except Exception as exc:  # sae-lens and torch raise their own types for shape mismatches
        raise SAELoadError(f"{where}: the weights do not form a sae-lens "
                           f"{cfg['architecture']} SAE ({type(exc).__name__}: "
                           f"{_first_line(exc)})") from None


def _annotate(sae, fmt: str, hookpoint: str, mapping: str, path: Path, files: list[str],
              extra: dict | None = None):
    md = sae.cfg.metadata
    md.layer_convention = LAYER_CONVENTION
    md.source_format = fmt
    md.source_hookpoint = hookpoint
    md.source_layer_mapping = mapping
    md.source_path = str(path)
    md.source_sha256 = {f: sha256_file(path / f) for f in files}
    for k, v in (extra or {}).items():
        setattr(md, k, v)
    return record_convention(sae, str(path))


def _given_hook(hook: str) -> tuple[str, str]:
    return parse_hook(hook).name, f"hook point given by the caller: {parse_hook(hook).name}"


def _dl_hook(trainer: dict, buffer: dict, hook: str | None, where: str) -> tuple[str, str, str]:
    """(our hook name, source hookpoint description, the mapping used)."""
    layer, sub = trainer.get("layer"), trainer.get("submodule_name")
    io = buffer.get("io", "out")
    source = f"trainer.layer={layer}, submodule_name={sub!r}, buffer.io={io!r}"
    if hook is not None:
        name, how = _given_hook(hook)
        return name, source, how
    if not isinstance(layer, int):
        raise SAELoadError(f"{where}: config.json has no integer trainer.layer, so the hook point "
                           "is unknown; pass hook= / --hook (e.g. blocks.12.hook_resid_post)")
    if sub and any(w in str(sub).lower() for w in _NOT_RESIDUAL):
        raise SAELoadError(f"{where}: trainer.submodule_name {sub!r} names a submodule other "
                           "than a decoder layer, not a residual-stream point this project "
                           "hooks; pass hook= / --hook if it is in fact the residual stream")
    if io == "out":
        return (f"blocks.{layer}.hook_resid_post", source,
                f"dictionary_learning trainer.layer {layer} with io 'out' = the output of "
                f"model.layers[{layer}] → blocks.{layer}.hook_resid_post")
    if io == "in":
        return (f"blocks.{layer}.hook_resid_pre", source,
                f"dictionary_learning trainer.layer {layer} with io 'in' = the input of "
                f"model.layers[{layer}] → blocks.{layer}.hook_resid_pre")
    raise SAELoadError(f"{where}: buffer.io {io!r} is a transcoder (input → output), not an "
                       "autoencoder of one hook point; only io 'out' or 'in' can be imported")


def _linear_t(state: dict, name: str, key: str, alt: str, shape: tuple[int, int],
              where: str) -> torch.Tensor:
    """``state[key]`` (already sae-lens-shaped) or ``state[alt].T`` (an nn.Linear weight)."""
    if key in state:
        w = state[key]
    elif alt in state:
        w = state[alt].T
    else:
        raise SAELoadError(f"{where}: ae.pt has neither {key!r} nor {alt!r} ({name})")
    if tuple(w.shape) != shape:
        raise SAELoadError(f"{where}: {name} has shape {tuple(w.shape)}, expected {shape} "
                           "(activation_dim / dict_size in config.json)")
    return w.contiguous()


def load_dictionary_learning_sae(path: str | Path, hook: str | None = None,
                                 model: str | None = None, device: str = "cpu",
                                 dtype: str = "float32"):
    """A dictionary_learning SAE directory (``ae.pt`` + ``config.json``) as a sae-lens SAE.

    Classes: AutoEncoder (→ standard), AutoEncoderTopK (→ topk), BatchTopKSAE and
    MatryoshkaBatchTopKSAE (→ jumprelu at their learned inference threshold, their default
    encode), JumpReluAutoEncoder (→ jumprelu, no b_dec subtraction, as that class encodes) and
    GatedAutoEncoder (→ gated). ``ae.pt`` is read with ``weights_only=True``; a mid-training
    backup (state dict, optimizer and step) is refused. The hook point comes from the trainer's
    ``layer`` and the buffer's ``io`` (module docstring) unless ``hook`` is given; ``model``
    replaces the trainer's ``lm_name``."""
    path = Path(path)
    where = f"{path} (dictionary_learning)"
    if not (path / "ae.pt").is_file() or not (path / "config.json").is_file():
        raise SAELoadError(f"{path} is not a dictionary_learning SAE directory (needs ae.pt and "
                           "config.json, as dictionary_learning's trainSAE writes them)")
    try:
        config = read_json(path / "config.json")
    except ValueError as exc:
        raise SAELoadError(f"{path / 'config.json'} is not JSON ({exc})") from None
    trainer = config.get("trainer") if isinstance(config, dict) else None
    if not isinstance(trainer, dict):
        raise SAELoadError(f"{path / 'config.json'} has no 'trainer' section; dictionary_learning "
                           "writes {\"trainer\": {...}, \"buffer\": {...}}")
    buffer = config.get("buffer") if isinstance(config.get("buffer"), dict) else {}
    dict_class = trainer.get("dict_class")
    if dict_class not in DL_CLASSES:
        raise SAELoadError(f"{where}: dict_class {dict_class!r} is not one this reader knows "
                           f"({', '.join(DL_CLASSES)})")
    for key in ("activation_dim", "dict_size"):
        if not isinstance(trainer.get(key), int):
            raise SAELoadError(f"{where}: config.json trainer.{key} is missing or not an integer")
    d_in, d_sae = trainer["activation_dim"], trainer["dict_size"]
    state = load_tensor_file(path / "ae.pt", "dictionary_learning ae.pt (a state dict)")
    if isinstance(state, dict) and "ae" in state and "optimizer" in state:
        raise SAELoadError(f"{where}: ae.pt is a mid-training backup (step {state.get('step')}), "
                           "not a finished dictionary; finish the training run, or load a "
                           "checkpoints/ae_STEP.pt copied over ae.pt")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                               for v in state.values()):
        raise SAELoadError(f"{where}: ae.pt holds a {type(state).__name__}, not a state dict "
                           "of tensors")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    hook_name, hookpoint, mapping = _dl_hook(trainer, buffer, hook, where)
    arch = DL_CLASSES[dict_class]
    W_enc = _linear_t(state, "encoder", "W_enc", "encoder.weight", (d_in, d_sae), where)
    W_dec = _linear_t(state, "decoder", "W_dec", "decoder.weight", (d_sae, d_in), where)
    b_dec = next((state[k] for k in ("b_dec", "bias", "decoder_bias") if k in state),
                 torch.zeros(d_in))
    sd: dict[str, torch.Tensor] = {"W_enc": W_enc, "W_dec": W_dec, "b_dec": b_dec.contiguous()}
    cfg: dict[str, Any] = {"architecture": arch, "d_in": d_in, "d_sae": d_sae,
                           "dtype": dtype, "device": device, "apply_b_dec_to_input": True,
                           "normalize_activations": "none"}
    extra: dict[str, Any] = {"source_dict_class": dict_class}
    if arch == "gated":
        for ours, theirs in (("b_gate", "gate_bias"), ("b_mag", "mag_bias"), ("r_mag", "r_mag")):
            if theirs not in state:
                raise SAELoadError(f"{where}: GatedAutoEncoder ae.pt lacks {theirs!r}")
            sd[ours] = state[theirs].contiguous()
    else:
        b_enc = state.get("b_enc", state.get("encoder.bias"))
        sd["b_enc"] = (torch.zeros(d_sae) if b_enc is None else b_enc).contiguous()
    if arch == "topk":
        k = int(state["k"]) if "k" in state else trainer.get("k")
        if not isinstance(k, int) or k < 1:
            raise SAELoadError(f"{where}: a TopK SAE needs k (in ae.pt or trainer.k)")
        cfg["k"] = k
    if arch == "jumprelu":
        if "threshold" not in state:
            raise SAELoadError(f"{where}: {dict_class} ae.pt lacks 'threshold'")
        thr = state["threshold"].float()
        if dict_class == "JumpReluAutoEncoder":
            cfg["apply_b_dec_to_input"] = False   # that class encodes x, not x − b_dec
        elif thr.ndim == 0 and float(thr) < 0:
            extra["source_note"] = ("threshold never set (training stopped before "
                                    "threshold_start_step): every positive latent fires")
        sd["threshold"] = (torch.full((d_sae,), float(thr)) if thr.ndim == 0
                           else thr).contiguous()
        if "k" in state:
            extra["source_k"] = int(state["k"])
    lm = model or trainer.get("lm_name")
    cfg["metadata"] = {"sae_lens_version": _sae_lens_version(), "model_name": lm,
                       "hook_name": hook_name, "context_size": buffer.get("ctx_len")}
    sae = _build_sae(path, cfg, sd, device, dtype, where)
    return _annotate(sae, DL_FORMAT, hookpoint, mapping, path, ["ae.pt", "config.json"],
                     {**extra, "source_config": {"trainer": trainer, "buffer": buffer}})


_SPARSIFY_LAYER = re.compile(r"^(?:[A-Za-z_]\w*\.)*layers[._](\d+)$")


def _sparsify_hook(folder: str, hook: str | None, where: str) -> tuple[str, str]:
    if hook is not None:
        return _given_hook(hook)
    m = _SPARSIFY_LAYER.match(folder)
    if m:
        L = int(m.group(1))
        return (f"blocks.{L}.hook_resid_post",
                f"sparsify hookpoint {folder!r} = the output of model.layers[{L}] → "
                f"blocks.{L}.hook_resid_post")
    if folder.split(".")[-1] == "embed_tokens":
        return ("blocks.0.hook_resid_pre",
                f"sparsify hookpoint {folder!r} = the embedding output → blocks.0.hook_resid_pre "
                "(equal where the model does not rescale embeddings after the lookup)")
    raise SAELoadError(f"{where}: hookpoint {folder!r} is not a decoder layer's output "
                       "(layers.N) or embed_tokens, so it is not a residual-stream point this "
                       "project hooks; pass hook= / --hook if it is one")


def load_sparsify_sae(path: str | Path, hook: str | None = None, model: str | None = None,
                      device: str = "cpu", dtype: str = "float32"):
    """A sparsify hookpoint folder (``cfg.json`` + ``sae.safetensors``, named after the hooked
    module) as a sae-lens TopK SAE, through sae-lens's ``sparsify_disk_loader`` with the two
    corrections in the module docstring. Transcoders, skip connections, signed or groupmax
    activations have no sae-lens TopK equivalent and are refused. ``model`` names the model
    (sparsify records it only in the run's ``config.json`` one level up, if at all)."""
    from safetensors import safe_open
    from sae_lens.loading.pretrained_sae_loaders import sparsify_disk_loader

    path = Path(path)
    where = f"{path} (sparsify)"
    if not (path / "cfg.json").is_file() or not (path / "sae.safetensors").is_file():
        subs = sorted(p.name for p in path.iterdir() if (p / "cfg.json").is_file()) \
            if path.is_dir() else []
        raise SAELoadError(f"{path} is not a sparsify SAE folder (needs cfg.json and "
                           "sae.safetensors)" + (f"; it holds one folder per hookpoint: pick "
                                                 f"one of {', '.join(subs[:8])}" if subs else ""))
    try:
        raw_cfg = read_json(path / "cfg.json")
    except ValueError as exc:
        raise SAELoadError(f"{path / 'cfg.json'} is not JSON ({exc})") from None
    for key, ok in (("transcode", False), ("skip_connection", False), ("signed", False)):
        if raw_cfg.get(key, ok) != ok:
            raise SAELoadError(f"{where}: cfg.json has {key}={raw_cfg[key]!r}; only plain "
                               "autoencoders (sae-lens TopK) can be imported")
    if raw_cfg.get("activation", "topk") != "topk":
        raise SAELoadError(f"{where}: activation {raw_cfg['activation']!r} has no sae-lens "
                           "equivalent; only topk can be imported")
    if not isinstance(raw_cfg.get("d_in"), int) or not isinstance(raw_cfg.get("k"), int):
        raise SAELoadError(f"{where}: cfg.json needs integer d_in and k (sparsify writes both)")
    try:
        with safe_open(str(path / "sae.safetensors"), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            file_W_dec = f.get_tensor("W_dec") if "W_dec" in keys else None
    except Exception as exc:  # safetensors raises its own error type
        raise SAELoadError(f"{path / 'sae.safetensors'} is unreadable ({_first_line(exc)})"
                           ) from None
    if "W_skip" in keys:
        raise SAELoadError(f"{where}: the SAE has a skip connection (W_skip), which sae-lens's "
                           "TopK SAE cannot represent")
    if file_W_dec is None and "decoder.weight" not in keys:
        raise SAELoadError(f"{where}: sae.safetensors has no decoder (W_dec); it was saved "
                           "encoder-only")
    hook_name, mapping = _sparsify_hook(path.name, hook, where)
    run: dict = {}
    if (path.parent / "config.json").is_file():   # the training run's config, if kept
        try:
            run = read_json(path.parent / "config.json")
            run = run if isinstance(run, dict) else {}
        except ValueError:
            run = {}
    # corrections to sae-lens's converter (module docstring): b_dec is subtracted before
    # encoding in every sparsify SAE; the model, dataset and context come from the run's config
    # or nowhere (not the parent folder's name, nor EleutherAI's defaults); and the hook is ours
    # (its regex also matches e.g. layers.3.mlp, refused above)
    fixes = {"apply_b_dec_to_input": True, "model_name": model or run.get("model"),
             "hook_name": hook_name, "dataset_path": run.get("dataset"),
             "context_size": run.get("ctx_len")}

    def converter(p, dev, cfg_overrides=None):
        cfg, sd = sparsify_disk_loader(p, dev, cfg_overrides={**(cfg_overrides or {}), **fixes})
        if file_W_dec is not None:   # sparsify's W_dec is [num_latents, d_in] already
            sd["W_dec"] = file_W_dec.to(sd["W_enc"].dtype).to(sd["W_enc"].device)
        return cfg, {k: v.contiguous() for k, v in sd.items()}  # W_enc is a transposed view

    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(path, device=device, dtype=dtype, converter=converter)
    except Exception as exc:  # sae-lens and torch raise their own types for shape mismatches
        raise SAELoadError(f"{where}: sae-lens could not build the SAE ({type(exc).__name__}: "
                           f"{_first_line(exc)})") from None
    return _annotate(sae, SPARSIFY_FORMAT, path.name, mapping, path,
                     ["cfg.json", "sae.safetensors"],
                     {"hf_hook_name": path.name, "source_config": raw_cfg})


def detect_sae_format(path: str | Path) -> str:
    path = Path(path)
    if (path / "ae.pt").is_file() and (path / "config.json").is_file():
        return DL_FORMAT
    if (path / "sae.safetensors").is_file() and (path / "cfg.json").is_file():
        return SPARSIFY_FORMAT
    if (path / "sae_weights.safetensors").is_file():
        raise SAELoadError(f"{path} is already a sae-lens directory; use it as it is "
                           "(load_sae / --sae)")
    subs = sorted(p.name for p in path.iterdir()
                  if (p / "sae.safetensors").is_file() or (p / "ae.pt").is_file()
                  ) if path.is_dir() else []
    raise SAELoadError(f"{path} is neither a dictionary_learning directory (ae.pt + config.json) "
                       "nor a sparsify hookpoint folder (cfg.json + sae.safetensors)"
                       + (f"; it holds one SAE per folder: pick one of {', '.join(subs[:8])}"
                          if subs else ""))


def load_foreign_sae(path: str | Path, fmt: SAEFormat = "auto", **kwargs):
    """Either format, detected from the files unless ``fmt`` says."""
    fmt = detect_sae_format(path) if fmt == "auto" else fmt
    if fmt == DL_FORMAT:
        return load_dictionary_learning_sae(path, **kwargs)
    if fmt == SPARSIFY_FORMAT:
        return load_sparsify_sae(path, **kwargs)
    raise SAELoadError(f"unknown SAE format {fmt!r}; use auto, {DL_FORMAT} or {SPARSIFY_FORMAT}")


def import_sae(path: str | Path, out: str | Path, fmt: SAEFormat = "auto",
               overwrite: bool = False, **kwargs):
    """Read a foreign SAE and write it as a sae-lens directory (``cfg.json`` +
    ``sae_weights.safetensors``, so ``load_sae`` and every ``--sae`` option take it), with
    ``persona_probe.json`` recording the source and the files' sha256."""
    out = Path(out)
    if (out / "cfg.json").exists() and not overwrite:
        raise SAELoadError(f"{out} already holds an SAE; pass overwrite=True / --overwrite")
    sae = load_foreign_sae(path, fmt, **kwargs)
    sae.save_model(out)
    md = sae.cfg.metadata
    write_json(out / "persona_probe.json", {
        "imported": {k: md.get(k) for k in ("source_format", "source_path", "source_hookpoint",
                                            "source_layer_mapping", "source_sha256",
                                            "layer_convention")},
        "model": md.model_name, "hook": md.hook_name, "provenance": provenance(),
        "sha256": {f: sha256_file(out / f) for f in ("cfg.json", "sae_weights.safetensors")}})
    return sae


# --- checks against the model -------------------------------------------------------------

def _recorded_model(meta: dict) -> str | None:
    model = meta.get("model")
    if isinstance(model, dict):
        model = model.get("model")
    return model if isinstance(model, str) else None


def _prompt_rows(subject: Subject, hooks: list[str], prompts: str, n_prompts: int):
    from persona_probe.capture import collect_rows
    from persona_probe.prompts import load_prompts

    items = load_prompts(prompts, n_prompts)
    rows, _ = collect_rows(subject, items, hooks, "all", batch_size=max(1, n_prompts))
    return rows


def check_against_subject(obj, subject: Subject, prompts: str = "builtin:everyday",
                          n_prompts: int = 8, min_explained_variance: float | None = None,
                          ) -> dict[str, Any]:
    """Check a Direction or SAE against the model it is to be used on, and report.

    Both: width = d_model, every layer inside the model, the recorded model (if any) the
    subject, a known layer convention. A Direction: real residuals at its hook points from
    ``n_prompts`` prompts give the scale of the vector against the residual (finite, reported).
    An SAE: it reconstructs real residuals at its hook point; the error must be finite, and the
    explained variance at least ``min_explained_variance`` when given. Mismatches raise an error
    that names the fix; the report is returned."""
    if isinstance(obj, Direction):
        return _check_direction(obj, subject, prompts, n_prompts)
    if hasattr(obj, "cfg") and hasattr(obj, "encode") and hasattr(obj, "decode"):
        return _check_sae(obj, subject, prompts, n_prompts, min_explained_variance)
    raise InteropError(f"cannot check a {type(obj).__name__} against a model; give a Direction "
                       "or a sae-lens SAE")


def _check_direction(d: Direction, subject: Subject, prompts: str, n_prompts: int) -> dict:
    if d.layer_convention not in CONVENTIONS:
        raise DirectionError(f"direction {d.name}: unknown layer convention "
                             f"{d.layer_convention!r}")
    if d.d_model != subject.d_model:
        raise DirectionError(f"direction {d.name} has width {d.d_model}, but {subject.spec} has "
                             f"d_model {subject.d_model}; it was made for another model — "
                             "build or import it for this one")
    src = d.meta.get("source") if isinstance(d.meta.get("source"), dict) else {}
    if isinstance(src.get("n_layers"), int) and src["n_layers"] != subject.n_layers:
        raise DirectionError(f"direction {d.name} was imported from a {src['n_layers']}-layer "
                             f"model's file, but {subject.spec} has {subject.n_layers} layers; "
                             "import the file made for this model")
    bad = [layer for layer in d.layers if not 0 <= layer < subject.n_layers]
    if bad:
        hint = (" (an imported persona_vectors row i is layer i-1; re-import it)"
                if src.get("format") == PV_FORMAT else "")
        raise DirectionError(f"direction {d.name} has layers {bad}, but {subject.spec} has "
                             f"layers 0..{subject.n_layers - 1}{hint}")
    model = _recorded_model(d.meta)
    if model and _norm_model(model) != _norm_model(subject.spec):
        raise DirectionError(f"direction {d.name} was made on {model}, but the subject is "
                             f"{subject.spec}; load {model} or build the direction on "
                             f"{subject.spec}")
    hooks = [d.hook(layer) for layer in d.layers]
    rows = _prompt_rows(subject, hooks, prompts, n_prompts)
    layers: dict[str, dict[str, float]] = {}
    for k, (layer, h) in enumerate(zip(d.layers, hooks)):
        x = rows[parse_hook(h).name]
        proj = x @ d.vectors[k].to(x.dtype)
        rep = {"residual_norm": float(x.norm(dim=-1).mean()),
               "projection_mean": float(proj.mean()), "projection_std": float(proj.std())}
        if d.raw is not None:
            rep["raw_norm"] = float(d.raw[k].norm())
        if not all(math.isfinite(v) for v in rep.values()):
            raise DirectionError(f"direction {d.name} at {h}: projections of real residuals are "
                                 f"not finite ({rep}); the vector is corrupted")
        layers[str(layer)] = rep
    return {"kind": "direction", "name": d.name, "model": subject.spec, "d_model": d.d_model,
            "site": d.site, "layer_convention": d.layer_convention, "layers": layers,
            "rows": int(next(iter(rows.values())).shape[0])}


def _check_sae(sae, subject: Subject, prompts: str, n_prompts: int,
               min_ev: float | None) -> dict:
    from persona_probe.sae.metrics import activation_metrics

    record_convention(sae)
    check_compatible(sae, subject)
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise SAEMismatchError("the SAE records no hook_name, so it cannot be checked; set it "
                               "(or re-import with hook= / --hook)")
    hp = parse_hook(hook, subject.n_layers)
    rows = _prompt_rows(subject, [hp.name], prompts, n_prompts)[hp.name]
    m, _ = activation_metrics(sae, rows)
    report = {"kind": "sae", "model": subject.spec, "hook": hp.name, "d_in": sae.cfg.d_in,
              "d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture(),
              "layer_convention": sae.cfg.metadata.layer_convention,
              "source_format": sae.cfg.metadata.get("source_format"), "rows": m.rows,
              "explained_variance": m.explained_variance, "mse": m.mse, "l0": m.l0}
    if not all(math.isfinite(v) for v in (m.explained_variance, m.mse, m.l0)):
        raise SAEMismatchError(f"the SAE's reconstruction of {subject.spec}'s residuals at "
                               f"{hp.name} is not finite ({json.dumps(report)}); its weights are "
                               "corrupted or overflow in their dtype — load it in float32")
    if min_ev is not None and m.explained_variance < min_ev:
        raise SAEMismatchError(
            f"the SAE explains {m.explained_variance:.3f} of the variance of {subject.spec}'s "
            f"residuals at {hp.name}, below {min_ev}: it is probably for another layer or model. "
            "Check the hook mapping (sae.cfg.metadata.source_layer_mapping) and pass hook= / "
            "--hook if the source's layer label means something else")
    return report
