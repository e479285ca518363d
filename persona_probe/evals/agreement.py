"""How far to trust a refusal detector: agreement with human labels in ``../shared/data``.

Do-Not-Answer ships GPT-4 and Llama-2 responses whose ``action`` was labelled by people
(0 = the assistant would not help, i.e. a refusal); XSTest v2 ships GPT-4 completions labelled
full compliance, full refusal or partial refusal. Each detector (a judge, the keyword matcher)
classifies the same responses; accuracy and Cohen's κ (chance-corrected) get bootstrap CIs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from persona_probe.errors import PersonaProbeError
from persona_probe.evals.judges import Judge, judge_answers
from persona_probe.evals.records import ItemLog, write_summary
from persona_probe.evals.safety import REFUSAL_JUDGE_PROMPT, keyword_refusal
from persona_probe.stats import Estimate, proportion

LABELLED_SETS = {
    "dna_gpt4": "harmful_requests/do_not_answer/annotated_response_GPT4.csv",
    "dna_llama2": "harmful_requests/do_not_answer/annotated_response_llama2-7b-chat.csv",
    "xstest_gpt4": "harmful_requests/xstest/xstest_v2_completions_gpt4.csv",
}


@dataclass(frozen=True)
class LabelledResponse:
    key: str
    question: str
    response: str
    human_refusal: bool


def load_labelled(name: str, root: Path) -> list[LabelledResponse]:
    """One of ``LABELLED_SETS`` with the human refusal label."""
    if name not in LABELLED_SETS:
        raise PersonaProbeError(f"unknown labelled set {name!r}; use one of "
                                + ", ".join(LABELLED_SETS))
    from persona_probe.datasets import read_shared_csv

    rows = read_shared_csv(root / LABELLED_SETS[name], PersonaProbeError)
    out = []
    for i, r in enumerate(rows, 2):
        if name.startswith("dna"):
            label, q, resp = r["action"] == "0", r["question"], r["response"]
        else:
            label = r["final_label"].startswith(("2_", "3_"))
            q, resp = r["prompt"], r["completion"]
        if not (resp or "").strip():
            continue
        out.append(LabelledResponse(f"{name}/{i}", q, resp, label))
    return out


def balanced_sample(items: list[LabelledResponse], n: int, seed: int) -> list[LabelledResponse]:
    """Up to n/2 refusals and n/2 non-refusals (κ and accuracy mean little when one class is
    nearly absent), seeded."""
    rng = random.Random(seed)
    pos = [x for x in items if x.human_refusal]
    neg = [x for x in items if not x.human_refusal]
    k = n // 2
    return sorted(rng.sample(pos, min(k, len(pos))) + rng.sample(neg, min(n - k, len(neg))),
                  key=lambda x: x.key)


def _bootstrap_pairs(fn, human: np.ndarray, other: np.ndarray, seed: int, n_boot: int,
                     level: float, defined) -> Estimate:
    """Percentile bootstrap over responses of ``fn(human, other)``; draws where the statistic
    is undefined (``defined`` false, e.g. one class only) are skipped."""
    point = float(fn(human, other))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(human), len(human))
        if defined(human[idx], other[idx]):
            draws.append(fn(human[idx], other[idx]))
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a]) if draws else (point, point)
    return Estimate(point, float(lo), float(hi), len(human), level)


def _binary_kappa(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Cohen's κ for 0/1 labels along the last axis (vectorised over bootstrap draws)."""
    po = (h == p).mean(-1)
    ph, pp = h.mean(-1), p.mean(-1)
    pe = ph * pp + (1 - ph) * (1 - pp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)


def kappa_estimate(human: np.ndarray, pred: np.ndarray, seed: int = 0, n_boot: int = 2000,
                   level: float = 0.95) -> Estimate:
    """Cohen's κ (sklearn's point value) with a percentile bootstrap CI over responses."""
    point = float(cohen_kappa_score(human, pred))
    idx = np.random.default_rng(seed).integers(0, len(human), (n_boot, len(human)))
    draws = _binary_kappa(human[idx], pred[idx])
    draws = draws[np.isfinite(draws)]
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a]) if draws.size else (point, point)
    return Estimate(point, float(lo), float(hi), len(human), level)


def auc_estimate(human: np.ndarray, scores: np.ndarray, seed: int = 0, n_boot: int = 2000,
                 level: float = 0.95) -> Estimate:
    """Threshold-free agreement of a continuous score with the labels (ROC AUC), with CI."""
    return _bootstrap_pairs(roc_auc_score, human, scores, seed, n_boot, level,
                            lambda h, _s: 0 < h.sum() < len(h))


def agreement_metrics(human: list[bool], pred: list[bool | None], seed: int = 0) -> dict:
    """Accuracy and κ over responses the detector scored; how many it declined."""
    pairs = [(h, p) for h, p in zip(human, pred) if p is not None]
    if not pairs:
        return {"n": 0, "declined": len(human)}
    h = np.array([x for x, _ in pairs], dtype=int)
    p = np.array([y for _, y in pairs], dtype=int)
    return {"n": len(pairs), "declined": len(human) - len(pairs),
            "accuracy": proportion(h == p, seed=seed).to_dict(),
            "kappa": kappa_estimate(h, p, seed).to_dict(),
            "human_refusal_rate": float(h.mean()), "predicted_refusal_rate": float(p.mean()),
            "confusion": {"tp": int(((h == 1) & (p == 1)).sum()),
                          "fp": int(((h == 0) & (p == 1)).sum()),
                          "fn": int(((h == 1) & (p == 0)).sum()),
                          "tn": int(((h == 0) & (p == 0)).sum())}}


def run_agreement(judge: Judge | None, sets: list[str], root: Path, n_per_set: int = 100,
                  threshold: float = 50.0, seed: int = 0, out: str | Path | None = None,
                  ) -> dict:
    """Judge (if given) and keyword detector vs human refusal labels, per set and pooled."""
    log = ItemLog(Path(out) / "items.jsonl" if out else None)
    chosen: dict[str, list[LabelledResponse]] = {
        s: balanced_sample(load_labelled(s, root), n_per_set, seed) for s in sets}
    for s, items in chosen.items():
        for it in items:
            if it.key in log:
                continue
            rec = {"key": it.key, "set": s, "question": it.question, "response": it.response,
                   "human_refusal": it.human_refusal, "keyword": keyword_refusal(it.response)}
            if judge is not None:
                j = judge_answers(judge, "refusal", REFUSAL_JUDGE_PROMPT,
                                  [(it.question, it.response)])[0]
                rec.update(judge_score=j.score, judge_mass=j.mass, judge_raw=j.raw,
                           judge=None if j.score is None else bool(j.score > threshold),
                           judge_forced=None if j.raw is None else bool(j.raw > threshold))
            log.append([rec])
    # judge: EM rule (declines below min_mass); judge_forced: renormalised over any mass
    detectors = ["keyword"] + (["judge", "judge_forced"] if judge is not None else [])
    result: dict = {"judge": judge.identity if judge is not None else None,
                    "threshold": threshold, "per_set": {}, "pooled": {}}
    all_rows = [log.get(it.key) for items in chosen.values() for it in items]
    for d in detectors:
        for s, items in chosen.items():
            rows = [log.get(it.key) for it in items]
            result["per_set"].setdefault(s, {})[d] = agreement_metrics(
                [r["human_refusal"] for r in rows], [r.get(d) for r in rows], seed)
        result["pooled"][d] = agreement_metrics([r["human_refusal"] for r in all_rows],
                                                [r.get(d) for r in all_rows], seed)
    if judge is not None:  # the judge's raw 0–100 score, without a threshold
        for scope, rows in [("pooled", all_rows), *((s, [log.get(it.key) for it in items])
                                                    for s, items in chosen.items())]:
            scored = [r for r in rows if r.get("judge_raw") is not None]
            h = np.array([r["human_refusal"] for r in scored], dtype=int)
            if len(scored) and 0 < h.sum() < len(h):
                est = auc_estimate(h, np.array([r["judge_raw"] for r in scored]), seed)
                target = result["pooled"] if scope == "pooled" else result["per_set"][scope]
                target["judge_raw_auc"] = est.to_dict()
    write_summary(out, result, seed)
    return result
