"""Steering and ablation as context managers over residual hook points.

    with steer(subject, evil, alpha=0.2, layers=[10]):      # h ← h + α·r̄_L·û
        subject.model.generate(...)                         # forward passes and generate (KV cache)
    with ablate(subject, evil, layers=range(30)):           # h ← h − (h·û)û
        ...
    with ablate(subject, SAELatents(sae, [123]), mode="latent"):   # h ← h − a_i(h)·W_dec[i]
        ...

α is in units of r̄_L, the mean residual norm at layer L on a reference set (the team's
everyday prompts), so it is comparable across layers and models. Hooks are always removed on
exit, also after an exception (``hooks.residual_hooks``). ``nnsight_steer`` applies the same
edit inside an nnsight trace (including ``remote=True`` on NDIF for models too large to hold).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch

from persona_probe.directions import Direction, DirectionError
from persona_probe.errors import PersonaProbeError
from persona_probe.hooks import HookPoint, nnsight_residual, parse_hook, residual_hooks
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem, load_prompts


class InterventionError(PersonaProbeError):
    pass


@dataclass(frozen=True)
class SAELatents:
    """SAE latents as an intervention target (decoder rows at the SAE's hook point)."""

    sae: Any
    latents: tuple[int, ...]

    def __init__(self, sae: Any, latents: Iterable[int]):
        object.__setattr__(self, "sae", sae)
        object.__setattr__(self, "latents", tuple(int(i) for i in latents))
        bad = [i for i in self.latents if not 0 <= i < sae.cfg.d_sae]
        if bad or not self.latents:
            raise InterventionError(f"latents {bad or '[]'} not in 0..{sae.cfg.d_sae - 1}")

    @property
    def hook(self) -> HookPoint:
        return parse_hook(self.sae.cfg.metadata.hook_name)


Target = Union[Direction, SAELatents]


def decoder_rows(sae: Any, latents: Iterable[int]) -> torch.Tensor:
    """What each latent adds to the reconstruction per unit of its encoded activation:
    ``W_dec[i]``, or ``W_dec[i] / ‖W_dec[i]‖`` for a TopK SAE whose activations are rescaled by
    the decoder norm (sae-lens's ``rescale_acts_by_decoder_norm``)."""
    idx = list(latents)
    W = sae.W_dec[idx].detach()
    if sae.cfg.architecture() == "topk" and getattr(sae.cfg, "rescale_acts_by_decoder_norm",
                                                    False):
        W = W / W.norm(dim=-1, keepdim=True)
    return W


def _unit_vectors(subject: Subject, target: Target, layers: Sequence[int] | None,
                  ) -> dict[HookPoint, torch.Tensor]:
    """Unit vector per hook point, on the subject's device and dtype."""
    dev, dt = subject.device, subject.dtype
    if isinstance(target, SAELatents):
        hp = target.hook
        if layers is not None and list(layers) != [hp.layer]:
            raise InterventionError(f"SAE latents live at {hp.name}; layers={list(layers)} "
                                    "does not match")
        rows = decoder_rows(target.sae, target.latents).float().sum(0)
        return {hp: (rows / rows.norm()).to(dev, dt)}
    if not isinstance(target, Direction):
        raise InterventionError(f"a target is a Direction or SAELatents, not {type(target)}")
    if target.d_model != subject.d_model:
        raise InterventionError(f"direction {target.name} has d_model {target.d_model}, the "
                                f"subject {subject.spec} has {subject.d_model}")
    if layers is None:
        if len(target.layers) != 1:
            raise InterventionError(f"direction {target.name} spans layers {target.layers[0]}.."
                                    f"{target.layers[-1]}; pass layers=[...]")
        layers = target.layers
    try:
        return {parse_hook(target.hook(L), subject.n_layers): target.at(L).to(dev, dt)
                for L in layers}
    except DirectionError as exc:
        raise InterventionError(str(exc)) from None


# --- reference norms ---------------------------------------------------------------------

REFERENCE_SET = "builtin:everyday"


@torch.no_grad()
def residual_norms(subject: Subject, hook_points: Iterable[HookPoint],
                   items: list[PromptItem] | None = None, batch_size: int = 16,
                   ) -> dict[HookPoint, float]:
    """r̄: the mean residual norm at each hook point over the non-special tokens of a reference
    set (default: the team's everyday prompts). Cached on the subject per (set, hook)."""
    hps = list(hook_points)
    key_set = "default" if items is None else str(hash(tuple(it.id for it in items)))
    cache: dict = subject.cache.setdefault("residual_norms", {})
    todo = [hp for hp in hps if (key_set, hp) not in cache]
    if todo:
        from persona_probe.capture import collect_rows

        acts, _ = collect_rows(subject, items or load_prompts(REFERENCE_SET),
                               [hp.name for hp in todo], "all", batch_size)
        for hp in todo:
            cache[(key_set, hp)] = float(acts[hp.name].norm(dim=-1).double().mean())
    return {hp: cache[(key_set, hp)] for hp in hps}


# --- steering ------------------------------------------------------------------------------

@contextmanager
def steer(subject: Subject, target: Target, alpha: float, layers: Sequence[int] | None = None,
          positions: Literal["all"] | torch.Tensor = "all",
          reference: list[PromptItem] | None = None) -> Iterator[dict[HookPoint, torch.Tensor]]:
    """Add α·r̄_L·û at each layer for the duration of the block. ``positions`` is "all" (every
    token, including each generated one) or a (batch, seq) boolean mask for forward passes.
    Yields the added vectors per hook point."""
    units = _unit_vectors(subject, target, layers)
    norms = residual_norms(subject, units, reference)
    added = {hp: (alpha * norms[hp]) * u for hp, u in units.items()}

    def make(vec: torch.Tensor):
        def fn(resid: torch.Tensor) -> torch.Tensor:
            if isinstance(positions, torch.Tensor):
                m = positions.to(resid.device)
                if m.shape != resid.shape[:2]:
                    raise InterventionError(f"positions mask {tuple(m.shape)} does not match "
                                            f"the batch {tuple(resid.shape[:2])}")
                return resid + m[..., None].to(resid.dtype) * vec
            return resid + vec
        return fn
    with residual_hooks(subject.model, [(hp, make(v)) for hp, v in added.items()]):
        yield added


# --- ablation ------------------------------------------------------------------------------

@torch.no_grad()
def reference_projection(subject: Subject, target: Direction, layers: Sequence[int],
                         items: list[PromptItem] | None = None) -> dict[int, float]:
    """Mean projection h·û per layer over a reference set (for mean-ablation to the base
    model's mean: measure it on the base subject and pass it to ``ablate``)."""
    from persona_probe.capture import mean_activations

    items = items or load_prompts(REFERENCE_SET)
    hooks = [target.hook(L) for L in layers]
    means = mean_activations(subject, items, hooks, "all").mean(0)   # (layers, d)
    return {L: float(means[i] @ target.at(L)) for i, L in enumerate(layers)}


@contextmanager
def ablate(subject: Subject, target: Target,
           mode: Literal["directional", "mean", "latent"] = "directional",
           layers: Sequence[int] | None = None,
           mean_projection: dict[int, float] | None = None) -> Iterator[None]:
    """Remove a direction or SAE latents from the residual stream for the block.

    directional: h ← h − (h·û)û.  mean: h ← h − (h·û − μ_L)û, with μ_L from
    ``reference_projection`` on the base model.  latent: h ← h − Σᵢ aᵢ(h)·W_dec[i] with the SAE's
    own encoder, so the SAE error term (and every other latent) is left as it was."""
    if mode == "latent":
        if not isinstance(target, SAELatents):
            raise InterventionError("mode='latent' needs an SAELatents target")
        sae, idx = target.sae, list(target.latents)
        hp = target.hook
        W = decoder_rows(sae, idx)

        def latent_fn(resid: torch.Tensor) -> torch.Tensor:
            flat = resid.reshape(-1, resid.shape[-1]).to(sae.W_enc.dtype)
            acts = sae.encode(flat)[:, idx]
            removed = (acts @ W).reshape(resid.shape).to(resid.dtype)
            return resid - removed
        with residual_hooks(subject.model, [(hp, latent_fn)]):
            yield
        return
    if mode not in ("directional", "mean"):
        raise InterventionError(f"mode must be directional, mean or latent, not {mode!r}")
    units = _unit_vectors(subject, target, layers)
    if mode == "mean":
        if mean_projection is None:
            raise InterventionError("mode='mean' needs mean_projection (reference_projection on "
                                    "the base subject)")
        missing = [hp.layer for hp in units if hp.layer not in mean_projection]
        if missing:
            raise InterventionError(f"mean_projection has no value for layers {missing}")

    def make(hp: HookPoint, u: torch.Tensor):
        mu = 0.0 if mode == "directional" else float(mean_projection[hp.layer])  # type: ignore

        def fn(resid: torch.Tensor) -> torch.Tensor:
            proj = resid @ u
            return resid - (proj - mu)[..., None] * u
        return fn
    with residual_hooks(subject.model, [(hp, make(hp, u)) for hp, u in units.items()]):
        yield


@contextmanager
def shift(subject: Subject, target: Direction, amounts: dict[int, float]) -> Iterator[None]:
    """h ← h − c_L·û at each layer L in ``amounts`` (c_L in residual units, e.g. the measured
    finetuning shift μ_F − μ_B of the mean projection): removes a *shift* along the direction
    and leaves each token's variation along it, where directional ablation removes both."""
    units = _unit_vectors(subject, target, sorted(amounts))

    def make(u: torch.Tensor, c: float):
        def fn(resid: torch.Tensor) -> torch.Tensor:
            return resid - c * u
        return fn
    with residual_hooks(subject.model, [(hp, make(u, float(amounts[hp.layer])))
                                        for hp, u in units.items()]):
        yield


# --- nnsight -------------------------------------------------------------------------------

def nnsight_steer(envoy: Any, subject: Subject, target: Target, alpha: float,
                  layers: Sequence[int] | None = None) -> None:
    """Inside ``with envoy.trace(...)`` (an nnsight ``TransformersModel``; ``remote=True``
    works the same on NDIF): add α·r̄_L·û at each layer, as ``steer`` does with torch hooks.
    r̄ is measured on ``subject`` (for remote models, a local copy of the same weights or
    precomputed norms placed in ``subject.cache``)."""
    units = _unit_vectors(subject, target, layers)
    norms = residual_norms(subject, units)
    for hp, u in units.items():
        if hp.site == "mid":
            raise InterventionError("nnsight_steer edits resid_pre or resid_post")
        proxy = nnsight_residual(envoy, hp)
        proxy[:] = proxy + (alpha * norms[hp]) * u
