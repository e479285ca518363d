"""Directions in the residual stream: persona vectors (difference in means), SAE decoder rows,
and random controls, saved as safetensors + JSON.

A ``Direction`` holds one unit vector per layer it is defined at (``blocks.{L}.hook_resid_post``
unless said otherwise), plus the unnormalized difference and what produced it. Persona vectors
follow docs/DESIGN.md: responses generated under trait vs anti-trait system prompts on the same
questions, residuals averaged over *response* tokens per sample, then mean(trait) − mean(anti)
per layer (a vector from the last prompt token did not steer at 135M; response-averaged did).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from persona_probe.artifacts import atomic_write, read_json, sha256_file, write_json
from persona_probe.capture import mean_activations
from persona_probe.conventions import LAYER_CONVENTION, check_convention
from persona_probe.errors import PersonaProbeError
from persona_probe.generation import generate_responses
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem
from persona_probe.provenance import provenance
from persona_probe.traits import Trait, question_items, trait_questions

TENSORS = "direction.safetensors"
META = "direction.json"


class DirectionError(PersonaProbeError):
    pass


@dataclass
class Direction:
    """Unit vectors ``vectors[i]`` at ``layers[i]`` (site ``resid_post`` by default).

    ``layer_convention`` says how ``layers`` are read (``persona_probe.conventions``): always
    TransformerLens hook names here; a vector imported from another tool's indexing is translated
    on import and its source indices kept in ``meta["source"]``. Directions saved before the
    field existed load with the default, which is what they were made in."""

    name: str
    layers: list[int]
    vectors: torch.Tensor                      # (len(layers), d_model), unit norm, float32
    raw: torch.Tensor | None = None            # unnormalized difference, same shape
    site: str = "post"
    meta: dict = field(default_factory=dict)
    layer_convention: str = LAYER_CONVENTION

    def __post_init__(self) -> None:
        try:
            check_convention(self.layer_convention, f"direction {self.name}")
        except PersonaProbeError as exc:
            raise DirectionError(str(exc)) from None
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.layers):
            raise DirectionError(f"direction {self.name}: vectors must be (len(layers), d_model),"
                                 f" got {tuple(self.vectors.shape)} for {len(self.layers)} layers")
        self.vectors = self.vectors.float()
        norms = self.vectors.norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            self.vectors = self.vectors / norms.clamp_min(1e-12)[:, None]

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def at(self, layer: int) -> torch.Tensor:
        if layer not in self.layers:
            raise DirectionError(f"direction {self.name} is defined at layers {self.layers}, "
                                 f"not {layer}")
        return self.vectors[self.layers.index(layer)]

    def select(self, layers: list[int]) -> Direction:
        """The same direction at fewer layers (e.g. the one layer a monitor watches)."""
        rows = [self.layers.index(layer) for layer in layers if layer in self.layers]
        if len(rows) != len(layers):
            raise DirectionError(f"direction {self.name} is defined at layers {self.layers}, "
                                 f"not all of {layers}")
        raw = None if self.raw is None else self.raw[rows]
        return Direction(self.name, list(layers), self.vectors[rows], raw, self.site,
                         dict(self.meta), self.layer_convention)

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.hook_resid_{self.site}"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"vectors": self.vectors.contiguous()}
        if self.raw is not None:
            tensors["raw"] = self.raw.float().contiguous()
        atomic_write(path / TENSORS, lambda tmp: save_file(tensors, str(tmp)))
        write_json(path / META, {**self.meta, "name": self.name, "layers": self.layers,
                                 "site": self.site, "d_model": self.d_model,
                                 "layer_convention": self.layer_convention,
                                 "sha256": sha256_file(path / TENSORS)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        path = Path(path)
        if not (path / META).is_file() or not (path / TENSORS).is_file():
            raise DirectionError(f"{path} is not a direction (needs {META} and {TENSORS}); make "
                                 "one with `persona-probe vector`")
        try:
            meta = read_json(path / META)
            name, layers, site = meta.pop("name"), meta.pop("layers"), meta.pop("site", "post")
            convention = meta.pop("layer_convention", LAYER_CONVENTION)  # older files: none
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DirectionError(f"{path / META} is not a direction's metadata ({exc!r}); "
                                 "rebuild the direction with `persona-probe vector`") from None
        digest = meta.pop("sha256", None)   # directions saved before checksums have none
        if digest is not None and sha256_file(path / TENSORS) != digest:
            raise DirectionError(f"{path / TENSORS} is corrupted (sha256 mismatch with "
                                 f"{META}); rebuild the direction with `persona-probe vector`")
        try:
            t = load_file(str(path / TENSORS))
        except Exception as exc:  # safetensors raises its own error types
            raise DirectionError(f"{path / TENSORS} is unreadable ({exc}); rebuild it") from None
        meta.pop("d_model", None)
        if "vectors" not in t or not isinstance(layers, list):
            raise DirectionError(f"{path} holds no 'vectors' tensor or no layer list; rebuild "
                                 "it with `persona-probe vector`")
        return cls(name, list(layers), t["vectors"], t.get("raw"), site, meta, convention)

    def cosine(self, other: Direction) -> dict[int, float]:
        shared = [layer for layer in self.layers if layer in other.layers]
        return {layer: float(self.at(layer) @ other.at(layer)) for layer in shared}


def random_direction(d_model: int, layers: Sequence[int], seed: int, name: str | None = None,
                     ) -> Direction:
    """A Gaussian random unit vector per layer: the control for steering effects."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(len(layers), d_model, generator=g)
    return Direction(name or f"random-{seed}", list(layers), v,
                     meta={"method": "random", "seed": seed})


def sae_latent_direction(sae, latent: int, name: str | None = None) -> Direction:
    """An SAE decoder row as a direction at the SAE's hook layer."""
    from persona_probe.hooks import parse_hook

    hp = parse_hook(sae.cfg.metadata.hook_name)
    if hp.site not in ("post", "pre"):
        raise DirectionError(f"SAE hook {hp.name}: only resid_post / resid_pre directions")
    if not 0 <= latent < sae.cfg.d_sae:
        raise DirectionError(f"latent {latent} is out of range 0..{sae.cfg.d_sae - 1}")
    row = sae.W_dec[latent].detach().float().cpu()
    return Direction(name or f"latent-{latent}", [hp.layer], row[None], row[None].clone(),
                     site=hp.site, meta={"method": "sae_latent", "latent": latent,
                                         "sae_hook": hp.name})


def contrast_items(trait: Trait, questions: Sequence[str]) -> tuple[list[PromptItem],
                                                                      list[PromptItem]]:
    """Every question under every trait and every anti-trait system prompt."""
    base = question_items(list(questions))
    pos = [it.with_system(s) for s in trait.trait_system for it in base]
    neg = [it.with_system(s) for s in trait.anti_system for it in base]
    pos = [PromptItem(f"trait{k}/{it.id}", it.messages, "trait") for k, it in enumerate(pos)]
    neg = [PromptItem(f"anti{k}/{it.id}", it.messages, "anti") for k, it in enumerate(neg)]
    return pos, neg


def persona_vector(subject: Subject, trait: Trait, questions: Sequence[str] | None = None,
                   layers: Sequence[int] | None = None, max_new_tokens: int = 40,
                   batch_size: int = 16, keep: Callable[[PromptItem, PromptItem], bool] | None
                   = None, progress: bool = False, seed: int = 0) -> Direction:
    """Difference-in-means persona vector over response tokens at every layer in ``layers``
    (default: all). ``keep(trait_item, anti_item)`` filters pairs (e.g. by a judge: keep the
    pair only if the trait answer expresses the trait and the anti answer does not); the
    responses are kept in the direction's metadata so the vector can be audited."""
    questions = list(questions or trait_questions("extract"))
    layers = list(range(subject.n_layers)) if layers is None else list(layers)
    pos_items, neg_items = contrast_items(trait, questions)
    pos = generate_responses(subject, pos_items, max_new_tokens, batch_size, seed=seed,
                             progress=progress)
    neg = generate_responses(subject, neg_items, max_new_tokens, batch_size, seed=seed,
                             progress=progress)
    if keep is not None:
        neg_by = {it.id.split("/", 1)[1]: it for it in neg}
        pairs = [(p, neg_by.get(p.id.split("/", 1)[1])) for p in pos]
        kept = [(p, n) for p, n in pairs if n is not None and keep(p, n)]
        if not kept:
            raise DirectionError(f"the filter kept no {trait.name} / anti pairs; loosen it")
        pos, neg = [p for p, _ in kept], [n for _, n in kept]
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    m_pos = mean_activations(subject, pos, hooks, "response", batch_size).mean(0)
    m_neg = mean_activations(subject, neg, hooks, "response", batch_size).mean(0)
    raw = m_pos - m_neg
    meta = {"method": "diff_means", "trait": trait.name, "model": subject.provenance(),
            "positions": "response (mean per sample)", "n_trait": len(pos), "n_anti": len(neg),
            "questions": len(questions), "max_new_tokens": max_new_tokens,
            "raw_norms": [float(x) for x in raw.norm(dim=-1)],
            "trait_mean_norms": [float(x) for x in m_pos.norm(dim=-1)],
            "responses": {"trait": [it.messages[-1]["content"] for it in pos],
                          "anti": [it.messages[-1]["content"] for it in neg]},
            "provenance": provenance(seed)}
    return Direction(trait.name, layers, raw, raw.clone(), "post", meta)


def describe(direction: Direction) -> str:
    m = direction.meta
    lines = [f"direction {direction.name}: {m.get('method', '?')}, layers "
             f"{direction.layers[0]}..{direction.layers[-1]} ({len(direction.layers)}), "
             f"d_model {direction.d_model}"]
    if "n_trait" in m:
        lines.append(f"  samples {m['n_trait']} trait / {m['n_anti']} anti, positions "
                     f"{m['positions']}")
        norms = m["raw_norms"]
        peak = max(range(len(norms)), key=norms.__getitem__)
        lines.append(f"  ‖mean(trait) − mean(anti)‖ peaks at layer {direction.layers[peak]} "
                     f"({norms[peak]:.2f})")
    return "\n".join(lines) + ("\n  " + json.dumps({k: v for k, v in m.items()
                                                    if k in ("trait", "seed")}) if m else "")
