"""The data behind feature dashboards, computed from a model and an SAE (the pages are drawn
from it by ``persona_probe.figures.dashboards`` without the model).

Per latent: top activating examples with per-token activations, a histogram of its non-zero
activations, logit effects through the direct path, and (with a trait) the would-say measure
while its decoder direction steers. See ``persona_probe.figures.dashboards`` for the page
layout and why the charts are drawn with plotly rather than ``sae-dashboard``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona_probe.artifacts import write_json
from persona_probe.errors import PersonaProbeError

DATA_FILE = "dashboard.json"
SCHEMA = "persona_probe.latent_dashboard/1"


class DashboardError(PersonaProbeError):
    pass


# --- data ------------------------------------------------------------------------------------

def sae_fingerprint(sae) -> str:
    """sha256 over the SAE's parameters (name, dtype, shape, bytes), sorted by name: identifies
    the weights the dashboard was computed from wherever they were loaded from."""
    h = hashlib.sha256()
    for name, t in sorted(sae.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _norm_scale(norm: torch.nn.Module) -> tuple[torch.Tensor | None, bool, str]:
    """The final norm's per-dimension gain, whether it centres (LayerNorm), and a description."""
    w = getattr(norm, "weight", None)
    centred = isinstance(norm, torch.nn.LayerNorm)
    name = type(norm).__name__
    if w is None:
        return None, centred, f"{name} has no weight: none applied"
    w = w.detach().float().cpu()
    if "gemma" in name.lower():    # Gemma's RMSNorm scales by (1 + weight)
        return 1.0 + w, centred, f"{name} weight applied as (1 + weight)"
    return w, centred, f"{name} weight applied elementwise" + (" after centring" if centred
                                                                else "")


@torch.no_grad()
def logit_effects(subject, sae, latents: Sequence[int], n: int = 10, bins: int = 40,
                  ) -> tuple[dict[int, dict], str]:
    """Direct-path logit effect of each latent's decoder direction: ``(γ ⊙ ŵ) @ W_Uᵀ``, with ŵ the
    unit decoder row, γ the final norm's gain and W_U the output embedding. This is the logit
    lens of the direction: it skips every layer after the SAE's hook (all of them but the
    last for a mid-depth SAE) and the norm's input-dependent 1/RMS factor, which scales all
    logits of a token alike and so does not change the ranking. Returns per latent the ``n``
    tokens raised most and lowered most, and a histogram over the whole vocabulary, with the
    description of what was applied."""
    from persona_probe.hooks import final_norm
    from persona_probe.interventions import decoder_rows

    W_U = subject.model.get_output_embeddings().weight.detach().float().cpu()   # (vocab, d)
    try:
        gain, centred, how = _norm_scale(final_norm(subject.model))
    except PersonaProbeError:
        gain, centred, how = None, False, "final norm not found: none applied"
    rows = decoder_rows(sae, list(latents)).float().cpu()
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if centred:
        rows = rows - rows.mean(-1, keepdim=True)
    if gain is not None:
        rows = rows * gain
    effects = rows @ W_U.T                                                       # (n_lat, vocab)
    tok = subject.tokenizer
    out = {}
    for j, latent in enumerate(latents):
        e = effects[j]
        top, bot = torch.topk(e, n), torch.topk(-e, n)
        counts, edges = np.histogram(e.numpy(), bins=bins)
        out[int(latent)] = {
            "positive": [{"token": tok.decode([int(i)]), "id": int(i), "value": float(v)}
                         for v, i in zip(top.values, top.indices)],
            "negative": [{"token": tok.decode([int(i)]), "id": int(i), "value": -float(v)}
                         for v, i in zip(bot.values, bot.indices)],
            "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}}
    desc = ("direct path: (γ ⊙ ŵ) @ W_Uᵀ with ŵ the unit decoder row, W_U the output "
            f"embedding; final norm: {how}; the norm's 1/RMS and every later layer are ignored")
    return out, desc


def _examples(acts: torch.Tensor, where: list[tuple[int, int, int]], items, tok,
              top_k: int, context: int) -> tuple[list[dict], float]:
    """Top examples of one latent's column ``acts`` (one per item), and the column's max."""
    by_item: dict[int, list[int]] = {}
    for r, (i, _, _) in enumerate(where):
        by_item.setdefault(i, []).append(r)
    best = [max(rs, key=lambda r: float(acts[r])) for rs in by_item.values()]
    best = [r for r in sorted(best, key=lambda r: -float(acts[r])) if acts[r] > 0][:top_k]
    out = []
    for r in best:
        i, t, _ = where[r]
        rs = [q for q in by_item[i] if abs(where[q][1] - t) <= context]
        out.append({"item": items[i].id, "peak": rs.index(r), "peak_act": float(acts[r]),
                    "peak_position": int(t),
                    "positions": [int(where[q][1]) for q in rs],
                    "token_ids": [int(where[q][2]) for q in rs],
                    "tokens": [tok.decode([where[q][2]]) for q in rs],
                    "acts": [float(acts[q]) for q in rs]})
    return out, float(acts.max()) if acts.numel() else 0.0


def default_questions(n: int = 8) -> list[str]:
    """The first ``n`` questions of the *extract* split: dashboards are for choosing latents,
    and choices are scored on selection material, never on the evaluation split."""
    from persona_probe.traits import trait_questions

    return trait_questions("extract")[:n]


@torch.no_grad()
def compute_latent_dashboard_data(subject, sae, latents: Sequence[int], items,
                                  trait=None, questions: Sequence[str] | None = None,
                                  alphas: Sequence[float] = (0, 0.2, 0.4), top_k: int = 8,
                                  context: int = 12, positions: str = "all", n_logits: int = 10,
                                  bins: int = 30, ranking: Sequence[dict] | None = None,
                                  sae_spec: str | None = None, reference=None,
                                  batch_size: int = 16) -> dict[str, Any]:
    """Everything the dashboards show, as a JSON-serialisable dict (see the module doc).

    ``latents`` in the order to show them (a ranking's order); ``ranking`` the ranking's rows
    (``LatentRanking.save``'s JSON lines), kept beside each latent they name. ``items`` are read
    at ``positions`` (``capture`` modes; ``all`` = every non-special token). With ``trait`` (a
    ``Trait``), the would-say measure is computed on ``questions`` (default: ``default_questions``)
    at each α of ``alphas`` (units of r̄_L, the mean residual norm on ``reference``, default the
    everyday prompts, as everywhere in ``interventions``). ``sae_spec`` names where the SAE came
    from (``shipped``, a directory, ``sae-lens:…``) in the provenance."""
    from persona_probe.conventions import CONVENTIONS
    from persona_probe.hooks import parse_hook
    from persona_probe.interventions import SAELatents, residual_norms, steer
    from persona_probe.latents import encode_rows, token_activations
    from persona_probe.provenance import provenance

    latents = [int(i) for i in latents]
    if not latents:
        raise DashboardError("no latents to show: give latent indices or a ranking")
    SAELatents(sae, latents)                       # range check, with the project's message
    items = list(items)
    if not items:
        raise DashboardError("no items to read activations on")
    hp = parse_hook(sae.cfg.metadata.hook_name, subject.n_layers)
    rows, where = token_activations(subject, sae, items, positions, batch_size)
    acts = encode_rows(sae, rows)[:, latents]                             # (tokens, n_latents)
    logits, logit_desc = logit_effects(subject, sae, latents, n_logits)
    tok = subject.tokenizer
    by_latent = {int(r["latent"]): r for r in (ranking or []) if "latent" in r}

    steering = None
    if trait is not None:
        from persona_probe.likelihood import trait_scores

        qs = list(questions) if questions is not None else default_questions()
        if not qs:
            raise DashboardError("steering needs at least one question")
        alphas = sorted({float(a) for a in alphas})
        base = trait_scores(subject, trait, qs, batch_size=batch_size) if 0.0 in alphas else None
        steering = {"trait": trait.name, "questions": qs, "alphas": alphas,
                    "measure": "would-say: mean log-lik of trait replies − anti replies "
                               "(per token), per question",
                    "edit": f"h ← h + α·r̄·ŵ at {hp.name}, all positions, ŵ the unit decoder row",
                    "reference_norm": residual_norms(subject, [hp], reference)[hp],
                    "per_latent": {}}
        for latent in latents:
            per = []
            for a in alphas:
                if a == 0.0:
                    s = base
                else:
                    with steer(subject, SAELatents(sae, [latent]), a, reference=reference):
                        s = trait_scores(subject, trait, qs, batch_size=batch_size)
                per.append({"alpha": a, "mean": float(np.mean(s)),
                            "scores": [float(x) for x in s]})
            steering["per_latent"][latent] = per

    out_latents = []
    for j, latent in enumerate(latents):
        col = acts[:, j]
        examples, peak = _examples(col, where, items, tok, top_k, context)
        nz = col[col > 0].numpy()
        counts, edges = (np.histogram(nz, bins=bins) if nz.size
                         else (np.zeros(0, int), np.zeros(0)))
        entry = {"latent": latent, "rank": j + 1,
                 "summary": {"n_tokens": int(col.numel()), "n_nonzero": int(nz.size),
                             "freq": float(nz.size / max(col.numel(), 1)), "max": peak,
                             "mean_nonzero": float(nz.mean()) if nz.size else 0.0},
                 "top_examples": examples,
                 "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
                 "logits": logits[latent],
                 "steering": None if steering is None else steering["per_latent"][latent]}
        if latent in by_latent:
            entry["ranking"] = by_latent[latent]
        out_latents.append(entry)
    if steering is not None:
        del steering["per_latent"]                 # kept per latent instead
    md = sae.cfg.metadata
    return {
        "schema": SCHEMA,
        "provenance": {
            "model": subject.provenance(),
            "sae": {"spec": sae_spec, "hook_name": md.hook_name,
                    "layer_convention": md.layer_convention,
                    "architecture": sae.cfg.architecture(), "d_in": int(sae.cfg.d_in),
                    "d_sae": int(sae.cfg.d_sae), "k": getattr(sae.cfg, "k", None),
                    "model_name": md.model_name,
                    "model_revision": getattr(md, "model_revision", None),
                    "weights_sha256": sae_fingerprint(sae)},
            "layer_convention": {"name": md.layer_convention,
                                 "meaning": CONVENTIONS.get(md.layer_convention)},
            **provenance(),
        },
        "items": {"n": len(items), "ids": [it.id for it in items], "positions": positions,
                  "context": context, "top_k": top_k},
        "activations": "the SAE's encoded units (sae.encode at the hook point)",
        "logit_effects": logit_desc,
        "steering": steering,
        "latents": out_latents,
    }


def save_dashboard_data(data: dict, out_dir: str | Path) -> Path:
    """``out_dir/dashboard.json``, written atomically."""
    path = Path(out_dir) / DATA_FILE
    write_json(path, data)
    return path


def read_ranking(path: str | Path, top: int | None = None) -> list[dict]:
    """The first ``top`` rows of a ranking (``LatentRanking.save``: JSON lines with ``latent``),
    in the file's order (ranked)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DashboardError(f"cannot read the ranking {path} ({exc.strerror or exc}); write "
                             "one with `persona-probe rank-latents --out`") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row["latent"])
        except (ValueError, KeyError, TypeError):
            raise DashboardError(f"{path}:{lineno}: not a ranking row (JSON with 'latent'); "
                                 "write one with `persona-probe rank-latents --out`") from None
        rows.append(row)
    if not rows:
        raise DashboardError(f"{path} holds no ranked latents")
    return rows[:top] if top else rows
