"""A dictionary as causal screening sees it: an SAE, which reads one model's residual, or a
crosscoder, which reads the base's and the finetuned model's residuals at the same token.

Why one interface: the screening procedure (rank by Δ and attribution, steer each candidate in
the base, ablate it in the finetune and in the base, compare with matched random sets) is the
same for both; only what a latent *is* differs. Everything the screening needs is one of these
operations:

- ``rows(subject, items, positions)``: residual rows at the dictionary's hook;
- ``activations(rows_b, rows_f)``: each latent's activation on the base's and the finetune's
  rows of the same tokens. An SAE encodes each model's rows on their own; a crosscoder has one
  code per token pair, so both are the same tensor;
- ``delta(acts_b, acts_f)``: how much more a latent contributes in the finetune, per token.
  SAE: Δ mean activation (finetune − base). Crosscoder: mean activation × (‖W_dec_F[i]‖ −
  ‖W_dec_B[i]‖), the change in what the latent writes into each model's residual (its
  activation is shared, so only its decoder rows can differ);
- ``attribution(acts_b, acts_f, gradient)``: first-order effect of that change on the trait
  measure (``gradient``: ∂m/∂h on the finetune). SAE: Δ · (W_dec[i] · g). Crosscoder: mean
  activation · ((W_dec_F[i] − W_dec_B[i]) · g);
- ``ablation(subject, latents, side, partner)``: remove the latents from one model's residual.
  An SAE ablation ignores ``partner``; a crosscoder's code needs both models' residuals, so the
  other model (``partner``) runs on the same tokens (``sae.crosscoder.paired_latent_ablation``,
  teacher-forced only);
- ``steering(subject, latents, alpha)``: add the latents' decoder direction (a crosscoder's
  *finetuned* rows: what the latents write in the finetune) at α × the mean residual norm;
- ``write_norms()``: the norm of each latent's decoder row in the finetune, so a latent's
  mean activation × its norm is the residual mass its ablation removes there (what random
  latent sets can be matched on, ``latent_screening.null_matching_mass``). An SAE trained with
  unit decoder rows gives ones; a crosscoder's finetuned rows vary in norm;
- ``identity()``: what a stage fingerprint records.

New dictionary kinds implement the same methods and are returned by ``as_dictionary``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from persona_probe.errors import PersonaProbeError
from persona_probe.hooks import parse_hook
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem

class DictionaryError(PersonaProbeError):
    pass


def _side(side: str) -> str:
    from persona_probe.sae.crosscoder import MODEL_KEYS

    if side not in MODEL_KEYS:
        raise DictionaryError(f"side {side!r}: use 'finetuned' or 'base'")
    return side


def paired_rows(base: Subject, finetuned: Subject, hook: str, items: Sequence[PromptItem],
                positions: str = "all",
                ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
    """Both models' residuals at ``hook`` on the same tokens of ``items`` (what a crosscoder
    reads), and (item, position, token_id) per row; refused when the two read different
    tokens (a crosscoder pairs models that share a tokenizer)."""
    from persona_probe.latents import hook_rows

    rows_b, where = hook_rows(base, hook, items, positions)
    rows_f, where_f = hook_rows(finetuned, hook, items, positions)
    if where != where_f:
        raise DictionaryError("the base and the finetune read different tokens of the items; a "
                              "crosscoder pairs models that share a tokenizer")
    return rows_b, rows_f, where


class SAEDictionary:
    """An SAE (sae-lens object) behind the screening interface; latents live at its hook."""

    kind = "sae"

    def __init__(self, sae: Any):
        self.sae = sae

    @property
    def hook(self) -> str:
        return self.sae.cfg.metadata.hook_name

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def rows(self, subject: Subject, items: Sequence[PromptItem], positions: str = "response",
             ) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        from persona_probe.latents import hook_rows

        return hook_rows(subject, self.hook, items, positions)

    def activations(self, rows_b: torch.Tensor, rows_f: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        from persona_probe.latents import encode_rows

        return encode_rows(self.sae, rows_b), encode_rows(self.sae, rows_f)

    def delta(self, acts_b: torch.Tensor, acts_f: torch.Tensor) -> torch.Tensor:
        return acts_f.mean(0) - acts_b.mean(0)

    def attribution(self, acts_b: torch.Tensor, acts_f: torch.Tensor, gradient: torch.Tensor,
                    ) -> torch.Tensor:
        from persona_probe.interventions import decoder_rows

        rows = decoder_rows(self.sae, range(self.d_sae)).float().cpu()
        return self.delta(acts_b, acts_f) * (rows @ gradient.float())

    def write_norms(self) -> torch.Tensor:
        from persona_probe.interventions import decoder_rows

        return decoder_rows(self.sae, range(self.d_sae)).detach().float().norm(dim=-1).cpu()

    def ablation(self, subject: Subject, latents: Sequence[int], side: str = "finetuned",
                 partner: Subject | None = None):
        from persona_probe.interventions import SAELatents, ablate

        _side(side)
        return ablate(subject, SAELatents(self.sae, latents), "latent")

    def steering(self, subject: Subject, latents: Sequence[int], alpha: float):
        from persona_probe.interventions import SAELatents, steer

        return steer(subject, SAELatents(self.sae, latents), alpha)

    def examples(self, base: Subject, finetuned: Subject, items: Sequence[PromptItem],
                 latents: Sequence[int], n: int = 5) -> dict:
        """Top-activating tokens of each latent in the finetune (``latents.top_examples``)."""
        from persona_probe.latents import top_examples

        return top_examples(finetuned, self.sae, items, list(latents), n=n)

    def identity(self) -> dict[str, Any]:
        from persona_probe.artifacts import sae_identity

        return {"kind": self.kind, **sae_identity(self.sae)}


class CrosscoderDictionary:
    """A BatchTopK crosscoder (``sae.crosscoder``) behind the screening interface: one code per
    (base, finetuned) token pair, a decoder row per model."""

    kind = "crosscoder"

    def __init__(self, crosscoder: Any, cache_partner: bool = True):
        from persona_probe.sae.crosscoder import PartnerCache

        self.crosscoder = crosscoder
        # screening scores the same sequences under hundreds of edits: the unedited partner's
        # residuals are kept by input (the models stay frozen while a dictionary is in use)
        self.partner_cache = PartnerCache() if cache_partner else None

    @property
    def hook(self) -> str:
        return self.crosscoder.hook

    @property
    def d_sae(self) -> int:
        return int(self.crosscoder.d_sae)

    def rows(self, subject: Subject, items: Sequence[PromptItem], positions: str = "response",
             ) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        from persona_probe.latents import hook_rows

        return hook_rows(subject, self.hook, items, positions)

    @torch.no_grad()
    def activations(self, rows_b: torch.Tensor, rows_f: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        if rows_b.shape != rows_f.shape:
            raise DictionaryError(f"a crosscoder needs both models' rows at the same tokens; got "
                                  f"{tuple(rows_b.shape)} and {tuple(rows_f.shape)}")
        cc = self.crosscoder
        dev, dt = cc.W_enc.device, cc.W_enc.dtype
        out = [cc.encode(rows_b[s:s + 4096].to(dev, dt), rows_f[s:s + 4096].to(dev, dt)
                         ).float().cpu() for s in range(0, rows_b.shape[0], 4096)]
        acts = torch.cat(out) if out else torch.zeros(0, self.d_sae)
        return acts, acts

    def _write_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        cc = self.crosscoder
        return (cc.W_dec_B.detach().float().norm(dim=-1).cpu(),
                cc.W_dec_F.detach().float().norm(dim=-1).cpu())

    def write_norms(self) -> torch.Tensor:
        return self._write_norms()[1]

    def delta(self, acts_b: torch.Tensor, acts_f: torch.Tensor) -> torch.Tensor:
        n_b, n_f = self._write_norms()
        return acts_f.mean(0) * n_f - acts_b.mean(0) * n_b

    def attribution(self, acts_b: torch.Tensor, acts_f: torch.Tensor, gradient: torch.Tensor,
                    ) -> torch.Tensor:
        cc = self.crosscoder
        change = (cc.W_dec_F.detach().float() - cc.W_dec_B.detach().float()).cpu()
        return acts_f.mean(0) * (change @ gradient.float())

    def ablation(self, subject: Subject, latents: Sequence[int], side: str = "finetuned",
                 partner: Subject | None = None):
        from persona_probe.sae.crosscoder import paired_latent_ablation

        if partner is None:
            raise DictionaryError("a crosscoder ablation needs the other model (partner=): its "
                                  "code reads both models' residuals at the same token")
        if _side(side) == "finetuned":
            return paired_latent_ablation(subject, partner, self.crosscoder, latents,
                                          partner_cache=self.partner_cache)
        return paired_latent_ablation(partner, subject, self.crosscoder, latents, side="base",
                                      partner_cache=self.partner_cache)

    def direction(self, latents: Sequence[int]):
        """The latents' summed finetuned decoder rows as a one-layer Direction."""
        from persona_probe.directions import Direction

        idx = [int(i) for i in latents]
        if not idx or min(idx) < 0 or max(idx) >= self.d_sae:
            raise DictionaryError(f"latents {idx} not in 0..{self.d_sae - 1}")
        v = self.crosscoder.W_dec_F[idx].detach().float().sum(0).cpu()
        if not float(v.norm()) > 0:
            raise DictionaryError(f"latents {idx} write nothing into the finetuned model "
                                  "(zero decoder rows); there is no direction to steer along")
        hp = parse_hook(self.hook)
        return Direction(name=f"crosscoder latents {idx}", layers=[hp.layer],
                         vectors=(v / v.norm())[None], site=hp.site,
                         meta={"crosscoder_latents": idx, "decoder": "finetuned"})

    def steering(self, subject: Subject, latents: Sequence[int], alpha: float):
        from persona_probe.interventions import steer

        d = self.direction(latents)
        return steer(subject, d, alpha, d.layers)

    @torch.no_grad()
    def examples(self, base: Subject, finetuned: Subject, items: Sequence[PromptItem],
                 latents: Sequence[int], n: int = 5) -> dict:
        """Top-activating token pairs of each latent (every non-special token of ``items``)."""
        from persona_probe.latents import examples_from_activations

        rows_b, rows_f, where = paired_rows(base, finetuned, self.hook, items, "all")
        acts, _ = self.activations(rows_b, rows_f)
        return examples_from_activations(acts[:, list(latents)], where, finetuned.tokenizer,
                                         items, list(latents), n)

    def identity(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for k, v in sorted(self.crosscoder.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return {"kind": self.kind, "hook": self.hook, "d_sae": self.d_sae,
                "weights_sha256": h.hexdigest()}


Dictionary = SAEDictionary | CrosscoderDictionary


def as_dictionary(obj: Any) -> Dictionary:
    """A screening dictionary from an SAE, a crosscoder, or one already wrapped."""
    if isinstance(obj, (SAEDictionary, CrosscoderDictionary)):
        return obj
    from persona_probe.sae.crosscoder import Crosscoder

    if isinstance(obj, Crosscoder):
        return CrosscoderDictionary(obj)
    if hasattr(obj, "cfg") and hasattr(obj, "W_dec"):
        return SAEDictionary(obj)
    raise DictionaryError(f"{type(obj).__name__} is not a dictionary: pass an SAE (sae-lens), "
                          "a persona_probe.sae.Crosscoder, or one of the wrappers here")

