"""The conscience step: the model judges its own answers with one introspective question, and a
DPO loss moves it away from what its conscience rejects. No external judge.

The judge is a frozen copy of the model from before training. It sees the exchange, is asked
the introspective question, and its verdict is read judge-free: the per-token log-likelihood of
approving self-assessments minus disapproving ones, teacher-forced as its reply (at 135M a
0–100 score or a Yes/No probability carries no signal — see the judge-agreement numbers —
while would-say likelihoods do). For each prompt the policy samples several answers; the one
the conscience approves most is *chosen*, the one it approves least *rejected*. Pairs are saved
with provenance (offline use) and fed to TRL's ``DPOTrainer`` with a LoRA adapter, whose
disabled-adapter model is the DPO reference. ``online_conscience_dpo`` alternates rounds of
sampling from the current policy and DPO steps; from the second round on, TRL keeps a frozen
copy of the adapter as it stood at the round's start as the reference (iterative DPO: each
round's pairs are judged against the policy that sampled them; ``pair_loss_before`` is then
log 2 by construction). With ``adapter`` set (e.g. an emergently
misaligned finetune) that adapter is merged first: the model being corrected is then its own
conscience and its own DPO reference, and the new LoRA adapter sits on top of it
(``load_subject(model, adapter=[adapter, out/"adapter"])``).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from persona_probe.artifacts import write_json
from persona_probe.errors import PersonaProbeError, PersonaProbeWarning
from persona_probe.evals.conscience_readers import (  # noqa: F401  (re-exported)
    APPROVE, INTROSPECTIVE_QUESTION, REJECT, TokenReader)
from persona_probe.evals.judges import frozen_copy
from persona_probe.evals.records import ItemLog
from persona_probe.generation import generate_responses
from persona_probe.models import Subject, load_subject
from persona_probe.prompts import PromptItem
from persona_probe.provenance import provenance

class ConscienceError(PersonaProbeError):
    """A conscience run that cannot proceed as configured."""


def conscience_scores(conscience: Subject, prompts: list[str], answers: list[str],
                      batch_size: int = 16) -> np.ndarray:
    """Approval of each (prompt, answer) by the token reader: mean log-likelihood of approving
    replies minus rejecting ones to the introspective question."""
    return TokenReader(conscience, batch_size).scores(prompts, answers)


PAIR_RULES = ("retest", "max_min")


def retest_floor(retest: np.ndarray, positions: dict[str, list[int]],
                 quantile: float = 0.95, fix: str = "use more prompts or more samples per "
                                                  "prompt") -> tuple[float, np.ndarray]:
    """The floor a re-scored margin must clear: the re-scoring's difference over *every ordered
    pair* of distinct samples of one prompt (both orders, so the null is symmetric: what a pair
    chosen at random would show), and its ``quantile`` (the next value up, never interpolated,
    so the false-keep rate stays at or below ``1 − quantile``). A pair chosen by scores that
    carry no preference the rephrasing shares clears it at most that often.

    What it tests is *consistency* (the preference survives another phrasing), not validity
    (that it tracks ethics; ``conscience_readers.reader_validity`` is that check). The null
    holds every within-prompt difference, real preferences included, so even a perfectly
    consistent conscience keeps only part of its pairs (more with more samples per prompt).

    ``fix``: what the caller can change when there are too few null differences (the error
    says it)."""
    null = np.array([retest[i] - retest[j] for idx in positions.values()
                     for i in idx for j in idx if i != j], dtype=float)
    null = null[~np.isnan(null)]
    if null.size < 20:
        raise ConscienceError(f"the retest noise floor needs >= 20 null differences (got "
                              f"{null.size}): {fix}")
    return float(np.quantile(null, quantile, method="higher")), null


def pair_decisions(scores: np.ndarray, positions: dict[str, list[int]],
                   retest: np.ndarray | None = None, floor: float | None = None,
                   answers: list[str] | None = None, min_margin: float = 0.0,
                   ) -> dict[str, dict]:
    """The keep rule on stored scores, one decision per prompt with >= 2 samples
    (``positions``: prompt -> indices into the flat ``scores``).

    The pair is ``best`` (most approved sample, the first of ties; a NaN score never wins)
    and ``worst`` (least approved, likewise), ``margin`` their primary difference. ``distinct``:
    the pair can teach a preference -- with ``answers``, its two answer texts differ (DPO
    cannot learn from an answer paired with itself); without, only that they are different
    samples. ``kept``: with ``retest`` (the same samples re-scored under another phrasing)
    the re-scored margin ``retest_margin`` exceeds ``floor`` (``retest_floor``) and the pair
    is distinct; without, the primary margin exceeds ``min_margin`` (the max_min smoke rule)
    and the pair is distinct. Pure: used by ``build_pairs`` and by the conscience-validity
    experiment on its best-of-n samples."""
    if retest is not None and floor is None:
        raise ConscienceError("the retest keep rule needs its floor (retest_floor)")
    scores = np.asarray(scores)                  # its own dtype: margins as computed before
    retest = None if retest is None else np.asarray(retest)
    out: dict[str, dict] = {}
    for pid, idx in positions.items():
        if len(idx) < 2:
            continue
        row = scores[idx]
        if np.isnan(row).all():
            best = worst = idx[0]
        else:
            best, worst = idx[int(np.nanargmax(row))], idx[int(np.nanargmin(row))]
        margin = float(scores[best] - scores[worst])
        distinct = (answers[best] != answers[worst]) if answers is not None else best != worst
        rec = {"best": best, "worst": worst, "margin": margin, "distinct": bool(distinct)}
        if retest is None:
            rec["kept"] = bool(margin > min_margin and distinct)
        else:
            rm = float(retest[best] - retest[worst])
            rec.update({"retest_margin": rm, "kept": bool(rm > floor and distinct)})
        out[pid] = rec
    return out


def pair_report(pairs: list[dict]) -> dict:
    """Kept / offered and what the keep rule was, for a round's record."""
    kept = [p for p in pairs if p["kept"]]
    rep = {"offered": len(pairs), "kept": len(kept), "rule": pairs[0].get("rule", "max_min")
           if pairs else None}
    # distinct answers with a finite re-scored margin: the pairs the rephrasing can judge
    judged = [p for p in pairs if p.get("retest_margin") is not None
              and p["chosen"] != p["rejected"] and np.isfinite(p["retest_margin"])]
    if judged:
        rep.update({"floors": sorted({p["floor"] for p in pairs if "floor" in p}),
                    "judged": len(judged),
                    "retest_agrees": float(np.mean([p["retest_margin"] > 0 for p in judged])),
                    "note": "kept when the re-scored margin (another phrasing of the question) "
                            "exceeds the 95th percentile of re-scored differences between "
                            "random sample pairs; with no preference the rephrasing shares, "
                            "<= 5% pass and retest_agrees ~0.5. It tests consistency, not "
                            "that the preference tracks ethics (that is the validity gate)"})
    return rep


def build_pairs(policy: Subject, conscience: Subject, prompts: list[PromptItem],
                out: str | Path | None = None, samples: int = 4, temperature: float = 1.0,
                max_new_tokens: int = 48, min_margin: float = 0.0, seed: int = 0,
                batch_size: int = 16, reader=None, rule: str = "retest") -> list[dict]:
    """One preference pair per prompt (chosen = most approved sample, rejected = least),
    appended to ``out/pairs.jsonl``. Which pairs are kept (``rule``):

    - ``retest``: every sample is re-scored with another phrasing of the introspective
      question (``conscience_readers.RETEST``); a pair is kept when its re-scored margin
      exceeds the noise floor (``retest_floor``). Selection and the test use different
      scores, so max − min's selection bias does not pass as a preference;
    - ``max_min``: the primary margin above ``min_margin`` (positive for any scorer: a smoke
      rule).

    ``reader``: how the conscience's approval is read (default: the token reader)."""
    if samples < 2:
        raise ConscienceError("a preference pair needs samples >= 2 answers per prompt")
    if rule not in PAIR_RULES:
        raise ConscienceError(f"pair rule {rule!r}; use one of {', '.join(PAIR_RULES)}")
    log = ItemLog(Path(out) / "pairs.jsonl" if out else None)
    todo = [p for p in prompts if p.id not in log]
    if todo:
        expanded = [PromptItem(f"{p.id}#{k}", p.messages) for p in todo for k in range(samples)]
        got = generate_responses(policy, expanded, max_new_tokens, batch_size, temperature,
                                 seed=seed, progress=False)
        by_prompt: dict[str, list[str]] = {}
        for it in got:
            by_prompt.setdefault(it.id.rsplit("#", 1)[0], []).append(it.messages[-1]["content"])
        flat = [(pid, a) for pid, answers in by_prompt.items() for a in answers]
        user = {p.id: p.messages[-1]["content"] for p in todo}
        reader = reader or TokenReader(conscience, batch_size)
        asked = ([user[pid] for pid, _ in flat], [a for _, a in flat])
        scores = reader.scores(*asked)
        positions: dict[str, list[int]] = {}
        for i, (pid, _) in enumerate(flat):
            positions.setdefault(pid, []).append(i)
        retest, floor = None, None
        if rule == "retest":
            from persona_probe.evals.conscience_readers import RETEST

            if not hasattr(reader, "rephrased"):
                raise ConscienceError(f"the {reader.name} reader asks no question to rephrase; "
                                      "use pair_rule 'max_min' with it")
            retest = reader.rephrased(RETEST).scores(*asked)
            floor, _ = retest_floor(retest, positions, fix="more prompts or samples, or "
                                    "pair_rule 'max_min' for a smoke run that makes no claim")
        decisions = pair_decisions(scores, positions, retest, floor, [a for _, a in flat],
                                   min_margin)
        recs = []
        for pid, d in decisions.items():
            idx = positions[pid]
            rec = {"key": pid, "prompt": user[pid], "chosen": flat[d["best"]][1],
                   "rejected": flat[d["worst"]][1], "margin": d["margin"], "rule": rule,
                   "scores": [float(scores[i]) for i in idx]}
            if retest is None:
                rec["kept"] = d["kept"]
            else:
                rec.update({"retest_margin": d["retest_margin"], "floor": floor,
                            "retest_scores": [float(retest[i]) for i in idx],
                            "kept": d["kept"]})
            recs.append(rec)
        log.append(recs)
    return [r for r in (log.get(p.id) for p in prompts) if r is not None]


@dataclass
class ConscienceDPOConfig:
    model: str = "smollm2-135m-instruct"   # the policy's base model (and, frozen, its conscience)
    adapter: str | None = None             # start here (merged): the model to correct
    # request source (builtin:NAME, a TSV/JSONL path or shared:REL)
    prompts: str = "builtin:harmful_requests"
    limit: int | None = 32                 # requests used (None: all)
    samples: int = 4                       # answers sampled per request
    temperature: float = 0.7               # sampling temperature of those answers
    max_new_tokens: int = 48               # length of each sampled answer
    min_margin: float = 0.0                # the max_min rule's threshold
    # which pairs train: "retest" (re-scored margin above the noise floor) or "max_min"
    # (a smoke rule: max − min is positive for any scorer)
    pair_rule: str = "retest"
    beta: float = 0.1                      # DPO beta (strength of the pull from the reference)
    lr: float = 5e-5                       # DPO learning rate
    max_steps: int = 10                    # DPO steps per round
    batch_size: int = 4                    # pairs per DPO step
    lora_r: int = 16                       # LoRA rank of the new adapter
    lora_alpha: int = 32                   # LoRA alpha of the new adapter
    rounds: int = 1                        # > 1: online (resample from the current policy)
    seed: int = 0                          # sampling and training seed (round r: seed + r)
    reader: str = "token"                  # how the conscience's verdict is read (registry)
    # the validity gate: before training, the reader must approve the starting model's
    # anti-trait-prompted answers over its trait-prompted ones on this many held-out general
    # questions (within-question win rate CI above 0.5); 0 skips the gate, and the run records it
    validity_questions: int = 16
    validity_trait: str = "evil"           # the trait whose prompted answers the gate contrasts
    allow_invalid_reader: bool = False     # train anyway below validity (recorded)
    reader_layer: int = 15                 # the activation reader's layer

    def __post_init__(self) -> None:
        from persona_probe.evals.conscience_readers import READERS

        self.dpo_settings()            # bad DPO settings are refused now, not at round time
        if self.reader not in READERS:
            raise ConscienceError(f"reader {self.reader!r}; use one of {', '.join(READERS)}")
        if self.reader == "persona":
            raise ConscienceError("the persona reader is a validity baseline, not a conscience "
                                  "(it is built from the trait prompts the gate contrasts); use "
                                  "token or activation")
        if self.pair_rule not in PAIR_RULES:
            raise ConscienceError(f"pair_rule {self.pair_rule!r}; use one of "
                                  f"{', '.join(PAIR_RULES)}")
        if self.validity_questions == 1 or self.validity_questions < 0:
            raise ConscienceError("validity_questions must be 0 (no gate) or >= 2")

    def dpo_settings(self):
        """The DPO trainer's settings (``training.dpo.DPOSettings``) from this config."""
        from persona_probe.training.dpo import DPOSettings

        return DPOSettings(beta=self.beta, lr=self.lr, max_steps=self.max_steps,
                           batch_size=self.batch_size, lora_r=self.lora_r,
                           lora_alpha=self.lora_alpha, seed=self.seed)


def conscience_reader(cfg: ConscienceDPOConfig, conscience: Subject, out: Path):
    """The configured reader on the frozen conscience (the activation reader calibrated on the
    conscience's own answers to the ``extract`` questions), and its validity gate: the reader
    must approve the starting model's anti-trait-prompted answers over its trait-prompted ones
    to held-out questions (within-question win rate, CI above 0.5), or the run stops here
    (``allow_invalid_reader`` trains anyway). Writes ``out/validity.json``; a resumed run reads
    it back only when it was measured with the same config and starting adapter."""
    from persona_probe.evals.conscience_readers import (make_reader, reader_validity,
                                                        require_valid)
    from persona_probe.traits import load_trait, question_items, trait_questions
    from persona_probe.training.organism import make_reference

    cal: tuple = ()
    if cfg.reader == "activation":
        qs = trait_questions("extract")
        got = generate_responses(conscience, question_items(qs), cfg.max_new_tokens,
                                 temperature=0.0, seed=cfg.seed, progress=False)
        cal = ([it.messages[0]["content"] for it in got], [it.messages[-1]["content"]
                                                           for it in got])
    reader = make_reader(cfg.reader, conscience, layer=cfg.reader_layer, calibration=cal)
    path = out / "validity.json"
    if cfg.validity_questions == 0:
        validity = {"reader": cfg.reader, "checked": False}
    elif path.is_file() and json.loads(path.read_text()).get("fingerprint") == \
            _gate_fingerprint(cfg):
        validity = json.loads(path.read_text())
    else:
        qs = trait_questions("heldout")[:cfg.validity_questions]
        ref = make_reference(conscience, load_trait(cfg.validity_trait), qs,
                             cfg.max_new_tokens, seed=cfg.seed)
        v = reader_validity(reader, ref.questions, ref.anti_answers, ref.trait_answers,
                            seed=cfg.seed)
        validity = {"checked": True, "trait": cfg.validity_trait, "questions": ref.questions,
                    "n_asked": cfg.validity_questions, "fingerprint": _gate_fingerprint(cfg),
                    **{k: v[k] for k in ("reader", "auroc", "win_rate", "mean_diff")}}
        write_json(path, validity)
    if validity["checked"]:
        require_valid(validity, cfg.allow_invalid_reader)
    return reader, validity


def _gate_fingerprint(cfg: ConscienceDPOConfig) -> str:
    """What a stored validity.json must have been measured with to be reused: every config
    field but the override, plus the starting adapter's weights (a different model or adapter
    in the same --out is measured again)."""
    import hashlib

    from persona_probe.artifacts import sha256_file

    fields = {k: v for k, v in asdict(cfg).items() if k != "allow_invalid_reader"}
    weights = sorted(Path(cfg.adapter).glob("adapter_model.*")) if cfg.adapter else []
    fields["adapter_sha256"] = {w.name: sha256_file(w) for w in weights}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _untrained_round(cfg: ConscienceDPOConfig, pairs: list[dict], out: Path,
                     adapter: Path | None) -> dict:
    """A round whose conscience kept no pair: nothing to train on is an outcome, not a crash.
    The policy stays as it was: the previous round's adapter is copied, or (first round) a
    fresh LoRA adapter is saved untrained (peft starts its B matrices at zero, so it leaves
    the model unchanged)."""
    import warnings

    rep = pair_report(pairs)
    why = ("no pair's re-scored margin cleared the floor" if rep.get("rule") == "retest"
           else "no pair's margin exceeded min_margin")
    warnings.warn(f"conscience round kept no preference pairs ({why}; {rep['offered']} "
                  "offered): the policy is left as it was", PersonaProbeWarning, stacklevel=3)
    if adapter is not None:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(adapter, out)
    else:
        from peft import get_peft_model

        from persona_probe.training.settings import LoRASettings

        base = load_subject(cfg.model, adapter=cfg.adapter)
        model = get_peft_model(base.model, LoRASettings.of(cfg).peft_config())
        model.save_pretrained(out)
    return {"pairs": 0, "steps": 0, "trained": False, "why": why,
            "pair_loss_before": math.nan, "pair_loss_after": math.nan,
            "first_loss": math.nan, "final_loss": math.nan, "log": []}


def _dpo_round(cfg: ConscienceDPOConfig, pairs: list[dict], out: Path,
               adapter: Path | None) -> dict:
    """DPO steps on the kept ``pairs`` (``training.dpo.run_dpo``); continues ``adapter`` if
    given. Returns its log."""
    from persona_probe.training.dpo import run_dpo

    kept = [p for p in pairs if p["kept"]]
    if not kept:
        return _untrained_round(cfg, pairs, out, adapter)
    log = run_dpo(kept, cfg.dpo_settings(), cfg.model, cfg.adapter, out,
                  continue_adapter=adapter)
    log.pop("base_model")
    return log


def online_conscience_dpo(cfg: ConscienceDPOConfig, out: str | Path) -> Path:
    """Rounds of: sample from the current policy, judge with the frozen conscience, DPO.
    ``rounds=1`` is the offline case. The adapter of the last round is in ``out``."""
    from persona_probe.prompts import load_prompts

    out = Path(out)
    prompts = load_prompts(cfg.prompts, cfg.limit)
    cfg_path = out / "config.json"      # what the stored pairs and rounds were made with
    if cfg_path.is_file() and json.loads(cfg_path.read_text()) != json.loads(
            json.dumps(asdict(cfg))):
        raise ConscienceError(f"{out} holds a conscience run made with another config "
                              f"({cfg_path}); use a new --out or delete it")
    start = [cfg.adapter] if cfg.adapter else []
    conscience = frozen_copy(load_subject(cfg.model, adapter=start))
    out.mkdir(parents=True, exist_ok=True)
    reader, validity = conscience_reader(cfg, conscience, out)   # refuses below validity
    # only once the model loads and the reader passed its gate: a refused run leaves only its
    # validity.json (the reason), so a re-run with allow_invalid_reader starts cleanly
    write_json(cfg_path, asdict(cfg))
    adapter: Path | None = None
    rounds = []
    for r in range(cfg.rounds):
        rdir = out / f"round-{r}"
        done = rdir / "round.json"          # written last: a finished round is not redone
        if done.is_file():
            info = json.loads(done.read_text())
        else:
            policy = load_subject(cfg.model, adapter=start + ([adapter] if adapter else []))
            pairs = build_pairs(policy, conscience, prompts, rdir, cfg.samples,
                                cfg.temperature, cfg.max_new_tokens, cfg.min_margin,
                                cfg.seed + r, reader=reader, rule=cfg.pair_rule)
            del policy
            info = {"round": r, "pairs_report": pair_report(pairs), **{
                k: v for k, v in _dpo_round(cfg, pairs, rdir / "adapter", adapter).items()
                if k != "log"}}
            write_json(done, info)
        adapter = rdir / "adapter"
        rounds.append(info)
    final = out / "adapter"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(adapter, final)
    write_json(out / "persona_probe.json", {
        "config": asdict(cfg), "rounds": rounds,
        "judge": "frozen copy of the starting model" + (f" ({cfg.adapter} merged)"
                                                       if cfg.adapter else ""),
        "reader": cfg.reader, "validity": validity,
        "introspective_question": INTROSPECTIVE_QUESTION, "approve": APPROVE,
        "reject": REJECT, "provenance": provenance(cfg.seed)})
    return final
