"""SAE latents that carry a persona: ranking by model diffing or by a trait contrast, their top
activating examples, and how persona vectors decompose into them.

Model diffing (docs/DESIGN.md): for every latent i, Δᵢ = E_ft[aᵢ] − E_base[aᵢ] over the same prompts
and positions, and the firing-frequency shift. A contrast (trait vs anti-trait system prompts)
is the same computation with the two conditions in place of the two models.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from persona_probe.artifacts import atomic_write
from persona_probe.capture import collect_rows
from persona_probe.directions import Direction
from persona_probe.hooks import parse_hook
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem
from persona_probe.traits import Trait


@dataclass
class LatentStats:
    """Mean activation and firing frequency of every latent over some tokens."""

    mean: torch.Tensor        # (d_sae,)
    freq: torch.Tensor        # (d_sae,)
    tokens: int


@torch.no_grad()
def encode_rows(sae, rows: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """SAE activations of raw residual rows, in float32 (latent units as the SAE decodes)."""
    out = []
    for s in range(0, rows.shape[0], batch_size):
        x = rows[s:s + batch_size].to(sae.W_enc.device, sae.W_enc.dtype)
        out.append(sae.encode(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, sae.cfg.d_sae)


def latent_stats(sae, rows: torch.Tensor) -> LatentStats:
    acts = encode_rows(sae, rows)
    return LatentStats(acts.mean(0), (acts > 0).float().mean(0), acts.shape[0])


@torch.no_grad()
def token_activations(subject: Subject, sae, items: Sequence[PromptItem], positions: str = "response",
                      batch_size: int = 16) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Residuals at the SAE's hook over ``positions`` of every item, and (item, position,
    token_id) per row. In memory: meant for eval-sized prompt sets."""
    return hook_rows(subject, sae.cfg.metadata.hook_name, items, positions, batch_size)


@torch.no_grad()
def hook_rows(subject: Subject, hook: str, items: Sequence[PromptItem],
              positions: str = "response", batch_size: int = 16,
              ) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """``token_activations`` at a named hook point (any dictionary's, e.g. a crosscoder's)."""
    hp = parse_hook(hook, subject.n_layers)
    acts, index = collect_rows(subject, list(items), [hp.name], positions, batch_size)  # type: ignore[arg-type]
    where = list(zip(index["item"].tolist(), index["position"].tolist(),
                     index["token_id"].tolist()))
    return acts[hp.name], where


@dataclass
class LatentRanking:
    """Latents ranked by Δ mean activation (condition A − condition B)."""

    delta_mean: torch.Tensor
    delta_freq: torch.Tensor
    a: LatentStats
    b: LatentStats
    labels: tuple[str, str] = ("finetuned", "base")
    meta: dict = field(default_factory=dict)

    def top(self, n: int = 10, by: str = "delta_mean", descending: bool = True) -> list[int]:
        v = getattr(self, by)
        return torch.argsort(v, descending=descending)[:n].tolist()

    def table(self, n: int = 10) -> list[dict]:
        return [{"latent": i, "delta_mean": float(self.delta_mean[i]),
                 "delta_freq": float(self.delta_freq[i]),
                 f"mean_{self.labels[0]}": float(self.a.mean[i]),
                 f"mean_{self.labels[1]}": float(self.b.mean[i]),
                 f"freq_{self.labels[0]}": float(self.a.freq[i]),
                 f"freq_{self.labels[1]}": float(self.b.freq[i])} for i in self.top(n)]

    def __str__(self) -> str:
        a, b = self.labels
        lines = [f"latents ranked by Δ mean activation ({a} − {b}); {self.a.tokens} vs "
                 f"{self.b.tokens} tokens", f"{'latent':>7} {'Δmean':>9} {'Δfreq':>8} "
                 f"{'mean ' + a:>14} {'mean ' + b:>14}"]
        for r in self.table(10):
            lines.append(f"{r['latent']:>7} {r['delta_mean']:>9.4f} {r['delta_freq']:>+8.3f} "
                         f"{r['mean_' + a]:>14.4f} {r['mean_' + b]:>14.4f}")
        return "\n".join(lines)

    def save(self, path: str | Path, n: int = 50) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.table(n))
        atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def rank_latents(sae, rows_a: torch.Tensor, rows_b: torch.Tensor,
                 labels: tuple[str, str] = ("finetuned", "base")) -> LatentRanking:
    """Δ mean activation and Δ firing frequency of every latent, A − B."""
    a, b = latent_stats(sae, rows_a), latent_stats(sae, rows_b)
    return LatentRanking(a.mean - b.mean, a.freq - b.freq, a, b, labels)


def diff_subjects(sae, subject_a: Subject, subject_b: Subject, items: Sequence[PromptItem],
                  positions: str = "response", items_b: Sequence[PromptItem] | None = None,
                  labels: tuple[str, str] = ("finetuned", "base")) -> LatentRanking:
    """Model diffing: the same items (or ``items_b`` for B, e.g. the same prompts under another
    system prompt) through both subjects, ranked by the SAE's latents."""
    rows_a, _ = token_activations(subject_a, sae, items, positions)
    rows_b, _ = token_activations(subject_b, sae, items_b or items, positions)
    return rank_latents(sae, rows_a, rows_b, labels)


def trait_contrast(sae, subject: Subject, trait: Trait, items: Sequence[PromptItem],
                   positions: str = "response") -> tuple[LatentRanking, list[PromptItem]]:
    """Contrast ranking for a trait: the same chats (replies included) through one subject, once
    under the trait's first system prompt (A, labelled with the trait's name) and once as given
    (B, ``"base"``), so Δ = A − B is what the system prompt alone moves. Returns the ranking and
    the A items, the ones to show the top latents' examples on (``persona-probe rank-latents
    --trait``)."""
    trait_items = [it.with_system(trait.trait_system[0]) for it in items]
    ranking = diff_subjects(sae, subject, subject, trait_items, positions, items_b=items,
                            labels=(trait.name, "base"))
    return ranking, trait_items


# --- top activating examples ---------------------------------------------------------------

@dataclass
class Example:
    tokens: list[str]
    acts: list[float]
    peak: int           # index into tokens of the top activation
    item: str


@dataclass
class LatentExamples:
    """Top activating examples of one latent, with per-token activations for highlighting:
    HTML in Jupyter (``_repr_html_``), text in a terminal (``str``)."""

    latent: int
    examples: list[Example]

    def __str__(self) -> str:
        lines = [f"latent {self.latent}: top {len(self.examples)} examples "
                 "(⟦token|activation⟧ where it fires)"]
        for ex in self.examples:
            parts = [f"⟦{t}|{a:.2f}⟧" if a > 0 else t for t, a in zip(ex.tokens, ex.acts)]
            lines.append(f"  {max(ex.acts):6.2f}  " + "".join(parts).replace("\n", "⏎"))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        top = max((max(ex.acts) for ex in self.examples), default=1.0) or 1.0
        rows = []
        for ex in self.examples:
            spans = "".join(
                f'<span title="{a:.3f}" style="background: rgba(230, 97, 1, {min(a / top, 1):.2f})'
                f'">{html.escape(t)}</span>' for t, a in zip(ex.tokens, ex.acts))
            rows.append(f"<tr><td style='text-align:right'>{max(ex.acts):.2f}</td>"
                        f"<td style='font-family:monospace;white-space:pre-wrap'>{spans}</td></tr>")
        return (f"<div><b>latent {self.latent}</b><table>{''.join(rows)}</table></div>")


def top_examples(subject: Subject, sae, items: Sequence[PromptItem], latents: Sequence[int],
                 n: int = 5, context: int = 12, positions: str = "all",
                 ) -> dict[int, LatentExamples]:
    """For each latent, the ``n`` tokens where it fires most over ``items`` (at most one per
    item), shown with ``context`` tokens either side and each token's activation."""
    rows, where = token_activations(subject, sae, items, positions)
    acts = encode_rows(sae, rows)[:, list(latents)]
    return examples_from_activations(acts, where, subject.tokenizer, items, latents, n, context)


def examples_from_activations(acts: torch.Tensor, where: Sequence[tuple[int, int, int]],
                              tokenizer, items: Sequence[PromptItem], latents: Sequence[int],
                              n: int = 5, context: int = 12) -> dict[int, LatentExamples]:
    """``top_examples`` from activations already computed: ``acts`` (rows × len(latents)) and
    ``where`` (item, position, token_id) per row (any dictionary, e.g. a crosscoder)."""
    tok = tokenizer
    by_item: dict[int, list[int]] = {}
    for r, (i, _, _) in enumerate(where):
        by_item.setdefault(i, []).append(r)
    out = {}
    for j, latent in enumerate(latents):
        col = acts[:, j]
        best_per_item = {i: max(rs, key=lambda r: col[r]) for i, rs in by_item.items()}
        chosen = sorted(best_per_item.values(), key=lambda r: -col[r])[:n]
        exs = []
        for r in chosen:
            if col[r] <= 0:
                continue
            i, t, _ = where[r]
            rs = [q for q in by_item[i] if abs(where[q][1] - t) <= context]
            exs.append(Example([tok.decode([where[q][2]]) for q in rs],
                               [float(col[q]) for q in rs], rs.index(r), items[i].id))
        out[latent] = LatentExamples(latent, exs)
    return out


# --- persona vectors in latent space -------------------------------------------------------

def decoder_cosines(sae, direction: Direction) -> torch.Tensor:
    """Cosine of the direction (at the SAE's layer) with every decoder row."""
    layer = parse_hook(sae.cfg.metadata.hook_name).layer
    u = direction.at(layer).float()
    W = sae.W_dec.detach().float().cpu()
    return (W @ u) / W.norm(dim=-1).clamp_min(1e-12)


@dataclass
class Decomposition:
    latents: list[int]
    coefficients: list[float]
    cosines: list[float]
    explained: float        # fraction of ‖v‖² the least-squares fit on these latents recovers

    def __str__(self) -> str:
        rows = "\n".join(f"  latent {i:>6}  coef {c:+.3f}  cos {s:+.3f}"
                         for i, c, s in zip(self.latents, self.coefficients, self.cosines))
        return (f"persona vector ≈ Σ coef·W_dec[i] over {len(self.latents)} latents "
                f"({self.explained:.0%} of its squared norm)\n{rows}")


def decompose(sae, direction: Direction, n: int = 10) -> Decomposition:
    """Least-squares fit of the unit persona vector on the ``n`` decoder rows most aligned with
    it (by |cosine|): which latents the direction is made of, and how much of it they cover."""
    cos = decoder_cosines(sae, direction)
    idx = torch.argsort(cos.abs(), descending=True)[:n]
    layer = parse_hook(sae.cfg.metadata.hook_name).layer
    v = direction.at(layer).float()
    W = sae.W_dec.detach().float().cpu()[idx]                 # (n, d)
    coef = torch.linalg.lstsq(W.T, v[:, None]).solution[:, 0]
    resid = v - coef @ W
    explained = 1 - float(resid.norm() ** 2 / v.norm() ** 2)
    return Decomposition(idx.tolist(), coef.tolist(), cos[idx].tolist(), explained)

