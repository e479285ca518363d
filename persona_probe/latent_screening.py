"""Causal screening of dictionary latents: which latents *control* a persona shift, chosen on
selection material and never on what reports the final number.

The published procedure, in four steps:

1. **candidates** — every latent ranked by Δ mean activation (finetuned − base on the same
   tokens) and by attribution (Δ × the gradient of the trait measure with respect to the
   latent's activation, read on the finetuned model); the top N of each are kept;
2. **screen** — each candidate alone is steered in the base model and ablated in the finetuned
   model, the trait measured on *selection* questions and replies;
3. **choose** — the best single latents by the gap their ablation removes (or by a rule that
   also ablates them in the base: ``specific_removed`` or ``penalized``, see
   ``ScreeningConfig.rank_by``) are combined into sets of 1…k latents, each set ablated
   jointly on the selection material, and the best set by the same rule is kept (ties go to
   the smaller set);
4. **null** — random latent sets of the same size, each latent drawn from the same decile of
   activation mass (mean activation on the finetuned model's tokens) as the latent it stands
   for, so a control edit removes as much activation as the real one.

Every step writes its output under one directory and reuses it when run again (rows already
measured are not measured twice); the experiment around it fingerprints that directory
(``persona_probe.stages``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from persona_probe.artifacts import ItemLog, read_json, write_json
from persona_probe.errors import PersonaProbeError, PersonaProbeWarning
from persona_probe.hooks import parse_hook, residual_hooks
from persona_probe.latent_dictionaries import Dictionary, as_dictionary
from persona_probe.latents import encode_rows
from persona_probe.models import Subject
from persona_probe.traits import Trait

Metric = Callable[[Subject], np.ndarray]


class ScreeningError(PersonaProbeError):
    pass


RANK_BY = ("gap_removed", "steer_effect", "specific_removed", "penalized")


@dataclass
class ScreeningConfig:
    """How many candidates to screen and how to combine them (fixed before a run)."""

    n_delta: int = 100            # top latents by Δ mean activation
    n_attribution: int = 50       # plus the top latents by attribution (union)
    steer_alpha: float = 0.2      # α (units of r̄_L) at which each candidate steers the base
    max_set: int = 5              # largest set of latents tried together
    # what orders single latents and picks the set (shares of the selection gap):
    # - gap_removed: the ablation's effect on the finetune, (m_F − m_F|E) / gap;
    # - steer_effect: steering the base (orders single latents only);
    # - specific_removed: (effect on F − effect on B) / gap, the gap removed when the edit is
    #   applied to *both* models. An edit that lowers the trait equally in both scores 0, but
    #   one whose ablation *raises* the base's trait scores above its effect on F: it rewards
    #   moving the base, which the evaluation's base-shift goal penalises;
    # - penalized: (effect on F − |effect on B|) / gap: a shift of the base's mean measure,
    #   either way, counts against the edit (shifts that cancel across questions do not).
    rank_by: str = "gap_removed"

    def __post_init__(self) -> None:
        if self.n_delta < 1 or self.n_attribution < 0:
            raise ScreeningError("n_delta must be >= 1 and n_attribution >= 0")
        if not 1 <= self.max_set <= 20:
            raise ScreeningError("max_set must be in 1..20")
        if self.rank_by not in RANK_BY:
            raise ScreeningError(f"rank_by {self.rank_by!r}: use {', '.join(RANK_BY)}")

    @property
    def ablates_base(self) -> bool:
        """Whether each candidate is also ablated in the base (the two base-aware rules)."""
        return self.rank_by in ("specific_removed", "penalized")


# --- step 1: candidates ----------------------------------------------------------------------

def activation_mass(sae, rows: torch.Tensor) -> torch.Tensor:
    """Mean activation of every latent over residual rows (the quantity random latent sets
    are matched on)."""
    return encode_rows(sae, rows).mean(0)


def measure_gradient(subject: Subject, trait: Trait, questions: Sequence[str], hook: str,
                     ) -> torch.Tensor:
    """∂m/∂h summed over the positions of each scored chat and averaged over questions, where
    m is the would-say measure (mean per-token log-likelihood of the trait replies minus the
    anti-trait replies): the direction in which moving the residual at ``hook`` raises the
    trait measure. Read with the subject's own weights (use the finetuned model)."""
    hp = parse_hook(hook, subject.n_layers)
    total = torch.zeros(subject.d_model, dtype=torch.float32)
    tok = subject.tokenizer
    for q in questions:
        for sign, replies in ((1.0, trait.trait_replies), (-1.0, trait.anti_replies)):
            encs = [subject.encode_chat([{"role": "user", "content": q},
                                         {"role": "assistant", "content": r}]) for r in replies]
            width = max(len(e.input_ids) for e in encs)
            ids = torch.full((len(encs), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(encs), width), dtype=torch.long)
            for i, e in enumerate(encs):
                ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
                mask[i, :len(e.input_ids)] = 1
            kept: dict[str, torch.Tensor] = {}

            def hold(resid: torch.Tensor) -> torch.Tensor:
                leaf = resid.detach().requires_grad_(True)
                kept["h"] = leaf
                return leaf
            with torch.enable_grad(), residual_hooks(subject.model, [(hp, hold)]):
                logits = subject.model(input_ids=ids.to(subject.device),
                                       attention_mask=mask.to(subject.device)).logits
                score = logits.new_zeros((), dtype=torch.float32)
                for i, e in enumerate(encs):
                    s, t = e.response_start, e.response_end
                    target = ids[i, s:t].to(subject.device)
                    lp = logits[i, s - 1:t - 1].float().log_softmax(-1)  # scored positions only
                    ll = lp.gather(-1, target[:, None]).mean()
                    score = score + sign * ll / len(encs)
                score.backward()
            g = kept["h"].grad.float() * mask[..., None].to(kept["h"].device)
            total += g.sum((0, 1)).cpu()
    return total / max(len(questions), 1)


def rank_candidates(sae, rows_finetuned: torch.Tensor, rows_base: torch.Tensor,
                    gradient: torch.Tensor | None, cfg: ScreeningConfig) -> dict:
    """Δ (and attribution, when a gradient is given) for every latent, and the candidate list:
    top ``n_delta`` by Δ, then the top ``n_attribution`` by attribution that are not already
    in. ``sae``: an SAE or a crosscoder (``latent_dictionaries`` defines Δ and attribution for
    each); the rows are both models' residuals at the same tokens."""
    d = as_dictionary(sae)
    acts_b, acts_f = d.activations(rows_base, rows_finetuned)
    mass_f = acts_f.mean(0)
    delta = d.delta(acts_b, acts_f)
    by_delta = torch.argsort(delta, descending=True)[:cfg.n_delta].tolist()
    candidates = list(by_delta)
    attribution = None
    if gradient is not None and cfg.n_attribution:
        attribution = d.attribution(acts_b, acts_f, gradient)
        extra = [i for i in torch.argsort(attribution, descending=True).tolist()
                 if i not in set(by_delta)][:cfg.n_attribution]
        candidates += extra
    return {"candidates": candidates, "by_delta": by_delta,
            "delta": delta.tolist(), "mass_finetuned": mass_f.tolist(),
            "attribution": None if attribution is None else attribution.tolist()}


# --- steps 2 and 3: screen and choose ------------------------------------------------------

def screen_latents(base: Subject, finetuned: Subject, sae, candidates: Sequence[int],
                   metric: Metric, cfg: ScreeningConfig, out: str | Path,
                   info: dict | None = None) -> dict:
    """Steer each candidate in ``base`` and ablate it in ``finetuned`` (``metric`` on selection
    material), then choose the set of ≤ ``max_set`` latents whose joint ablation removes most
    of the finetuned − base gap. Resumable: ``out/screen.jsonl`` and ``out/sets.jsonl`` keep
    every measured row; ``out/chosen.json`` is the result. ``sae``: an SAE or a crosscoder
    (``latent_dictionaries``)."""
    d = as_dictionary(sae)
    out = Path(out)
    if (out / "chosen.json").is_file():
        return read_json(out / "chosen.json")
    m_b, m_f = np.asarray(metric(base)), np.asarray(metric(finetuned))
    gap = float((m_f - m_b).mean())
    if not gap > 0:
        raise ScreeningError(f"the finetuned model is not above the base on the selection "
                             f"measure (gap {gap:+.3f}); there is no shift to screen for")
    path = out / "screen.jsonl"
    done = ItemLog(path)
    for i in candidates:
        key = str(int(i))
        if key in done:
            continue
        with d.steering(base, [int(i)], cfg.steer_alpha):
            s = np.asarray(metric(base))
        done.append([{"key": key, "latent": int(i), "steer_effect": float((s - m_b).mean()),
                      **_ablation_row(base, finetuned, d, [int(i)], metric, m_b, m_f, gap,
                                      cfg)}])
    wanted = {str(int(i)) for i in candidates}
    rows = sorted((r for k, r in done.records.items() if k in wanted),
                  key=lambda r: -r[cfg.rank_by])
    order = [r["latent"] for r in rows]
    sets_path = out / "sets.jsonl"
    sets = ItemLog(sets_path)
    for k in range(1, min(cfg.max_set, len(order)) + 1):
        key = str(k)
        if key not in sets:
            sets.append([{"key": key, "latents": order[:k], **_ablation_row(
                base, finetuned, d, order[:k], metric, m_b, m_f, gap, cfg)}])
    tried = [sets.records[str(k)] for k in range(1, min(cfg.max_set, len(order)) + 1)]
    by = cfg.rank_by if cfg.ablates_base else "gap_removed"
    best = max(tried, key=lambda r: (round(r[by], 6), -len(r["latents"])))
    if best[by] <= 0:
        warnings.warn(f"no set of up to {cfg.max_set} candidates removes any of the selection "
                      f"gap ({by}: best {best[by]:+.1%}); the chosen set is flagged "
                      "'removes_selection_gap: false'", PersonaProbeWarning, stacklevel=2)
    chosen = {"latents": best["latents"], "selection_gap_removed": best["gap_removed"],
              "selection_specific_removed": best.get("specific_removed"),
              "chosen_by": by, "removes_selection_gap": best[by] > 0,
              "selection_gap": gap, "sets": tried, "screen": rows,
              "config": asdict(cfg), **(info or {})}
    write_json(out / "chosen.json", chosen)
    return chosen


def _ablation_row(base: Subject, finetuned: Subject, d: Dictionary, latents: list[int],
                  metric: Metric, m_b: np.ndarray, m_f: np.ndarray, gap: float,
                  cfg: ScreeningConfig) -> dict:
    """The latents ablated in the finetune (and, for the base-aware rules, in the base too; a
    crosscoder's base edit reads the finetune's residual at the same tokens)."""
    with d.ablation(finetuned, latents, "finetuned", partner=base):
        a = np.asarray(metric(finetuned))
    row = {"ablate_effect": float((m_f - a).mean()), "gap_removed": float((m_f - a).mean() / gap)}
    if cfg.ablates_base:
        with d.ablation(base, latents, "base", partner=finetuned):
            b = np.asarray(metric(base))
        row["ablate_base_effect"] = float((m_b - b).mean())
        row["specific_removed"] = (row["ablate_effect"] - row["ablate_base_effect"]) / gap
        row["penalized"] = (row["ablate_effect"] - abs(row["ablate_base_effect"])) / gap
    return row


# --- step 4: the matched null ----------------------------------------------------------------

def decile_bins(mass: torch.Tensor | Sequence[float], n_bins: int = 10) -> np.ndarray:
    """Each latent's decile of activation mass among latents that fire at all (-1: dead)."""
    m = np.asarray(mass, dtype=np.float64)
    alive = m > 0
    bins = np.full(m.shape, -1)
    if alive.sum() < n_bins:
        raise ScreeningError(f"only {int(alive.sum())} latents fire on these tokens; too few "
                             "to match random sets by activation decile")
    edges = np.quantile(m[alive], np.linspace(0, 1, n_bins + 1)[1:-1])
    bins[alive] = np.searchsorted(edges, m[alive], side="right")
    return bins


NULL_MATCHING = ("activation", "write")


def null_matching_mass(dictionary, mass_finetuned: torch.Tensor | Sequence[float],
                       match: str = "activation") -> np.ndarray:
    """The per-latent quantity random sets are matched on: ``activation``, each latent's mean
    activation on the finetune's tokens; ``write``, that times the norm of its finetuned
    decoder row, the residual mass an ablation removes (why: a dictionary whose decoder rows
    differ in norm lets an activation-matched set remove far more or less than the chosen
    one; with unit-norm rows the two agree)."""
    m = np.asarray(mass_finetuned, dtype=np.float64)
    if match == "activation":
        return m
    if match == "write":
        return m * as_dictionary(dictionary).write_norms().double().numpy()
    raise ScreeningError(f"null matching {match!r}: use one of {', '.join(NULL_MATCHING)}")


def matched_random_sets(mass: torch.Tensor | Sequence[float], chosen: Sequence[int],
                        n_draws: int = 100, seed: int = 0, n_bins: int = 10,
                        neighbours: int = 0) -> list[list[int]]:
    """``n_draws`` random latent sets of ``len(chosen)``, each member drawn (without
    replacement, never a chosen latent) from a pool matched to the chosen latent it stands for:
    its activation-mass decile (``neighbours=0``), or the ``neighbours`` other latents nearest
    to it in the rank of ``mass`` (why: a decile is coarse at the top, where screened latents
    sit, so a decile-matched set removes far less mass than the chosen one; a silent chosen
    latent is still matched by silent ones). The same seed gives the same draws, so every
    evaluation seed uses them."""
    m = np.asarray(mass, dtype=np.float64)
    if not np.isfinite(m).all():
        raise ScreeningError("the matching quantity has NaN or infinite entries; recompute the "
                             "latents' mass on the finetune's tokens")
    chosen_set = {int(c) for c in chosen}
    if neighbours < 0:
        raise ScreeningError("neighbours must be >= 0 (0: match by decile)")
    if neighbours:
        pools = {int(c): _nearest_in_rank(m, int(c), chosen_set, neighbours) for c in chosen}
    else:
        bins = decile_bins(m, n_bins)
        pools = {}
        for c in chosen:
            b = int(bins[int(c)])    # -1: a latent silent on these tokens, matched by silent ones
            pools[int(c)] = np.array([i for i in np.flatnonzero(bins == b)
                                      if i not in chosen_set])
    for c, pool in pools.items():
        if len(pool) < len(chosen):
            raise ScreeningError(f"too few latents to match latent {c} from (pool of "
                                 f"{len(pool)} for a set of {len(chosen)}); raise neighbours or "
                                 "match by decile")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        picked: list[int] = []
        for c in chosen:
            pool = [i for i in pools[int(c)] if i not in picked]
            picked.append(int(rng.choice(pool)))
        draws.append(picked)
    return draws


def _nearest_in_rank(m: np.ndarray, c: int, exclude: set[int], k: int) -> np.ndarray:
    """The ``k`` latents (none in ``exclude``) nearest to latent ``c`` in the ranking of ``m``
    (an equal rank distance goes to the more active latent); a silent ``c`` (m = 0) is matched
    by silent latents only. The most active latent has neighbours on one side only, so its pool
    is all below it: a residual bias of this null at the very top, measured in the run's
    ``null_matching`` record."""
    if m[c] <= 0:
        silent = [i for i in np.flatnonzero(m <= 0) if i not in exclude]
        return np.array(silent)
    alive = [i for i in np.argsort(-m, kind="stable") if m[i] > 0]
    ranks = {i: r for r, i in enumerate(alive)}
    others = [i for i in alive if i not in exclude]
    nearest = sorted(others, key=lambda i: (abs(ranks[i] - ranks[c]), ranks[i]))[:k]
    return np.array(sorted(nearest, key=lambda i: ranks[i]))


def screen_finetune(base: Subject, finetuned: Subject, sae, trait: Trait,
                    questions: Sequence[str], items, cfg: ScreeningConfig, out: str | Path,
                    rows_base: torch.Tensor | None = None) -> dict:
    """The whole procedure on one finetune: residuals of both models on the same diffing
    ``items`` (response tokens), attribution from the trait measure's gradient on the finetuned
    model, candidates, screening on (``trait``, ``questions``) — the *selection* material —
    and the chosen set (``out/chosen.json``, with ``top_delta``: the naive top-Δ set of the
    same size, and ``mass_finetuned`` for matched nulls). Resumable. ``rows_base``: the base
    model's residuals on ``items`` when the caller already has them."""
    from persona_probe.likelihood import trait_scores

    out = Path(out)
    if (out / "chosen.json").is_file():
        done = read_json(out / "chosen.json")
        if "top_delta" in done:          # else killed between the two writes: finish it
            return done
    d = as_dictionary(sae)
    hook = d.hook
    rows_b = rows_base if rows_base is not None else d.rows(base, items)[0]
    rows_f, _ = d.rows(finetuned, items)
    if (out / "candidates.json").is_file():
        cand = read_json(out / "candidates.json")
    else:
        grad = (measure_gradient(finetuned, trait, questions, hook) if cfg.n_attribution
                else None)
        cand = rank_candidates(sae, rows_f, rows_b, grad, cfg)
        write_json(out / "candidates.json", cand)
    chosen = screen_latents(base, finetuned, sae, cand["candidates"],
                            lambda s: trait_scores(s, trait, questions), cfg, out,
                            info={"tokens": int(rows_f.shape[0])})
    chosen["top_delta"] = cand["by_delta"][:len(chosen["latents"])]
    chosen["mass_finetuned"] = cand["mass_finetuned"]
    chosen["delta"] = cand["delta"]
    write_json(out / "chosen.json", chosen)
    return chosen
