"""Research line 1 to a reviewer's standard: do dictionary latents found by model diffing
*control* the persona a narrow finetune induced, beyond matched random controls, on material
that played no part in choosing them?

Design (every rule below is fixed in the config before a run):

- organisms: the trait-distillation organism (evil through the model's own cooking answers)
  built with seed 0 for **selection** and seeds ``eval_seeds`` for **evaluation** (answer
  sample, LoRA init and data order all follow the seed);
- material: selection uses the ``extract`` questions and one half of a split's replies;
  evaluation uses 40 other questions and the other half (``persona_probe/data/splits/``:
  ``evil-line1-pairs.json`` draws 24 minimal trait/anti pairs into two random halves),
  committed before any screening ran; diffing tokens are the base model's answers to questions
  of the *other* domains, never the evaluation questions;
- selection (seed 0 only): candidates by Δ and attribution, causal screening, the set chosen
  (``persona_probe.latent_screening``); its top-Δ counterpart of the same size is kept as the
  naive baseline;
- evaluation (each evaluation seed, the same edits and the same random draws): gap removed
  ``(m(F) − m(F|E)) / (m(F) − m(B))`` with B *not* edited, beside the base shift
  ``(m(B|E) − m(B)) / (m(F) − m(B))``; matched nulls (random latent sets by activation decile;
  random directions for directional ablation); CIs by the two-way bootstrap over seeds ×
  questions (``persona_probe.stats.crossed_bootstrap``);
- steering: the chosen set steered into the base model over α, against the same random sets.

Stages go through ``persona_probe.stages``: each output records the fingerprint of its inputs
and the git sha; a stale output is refused (``--overwrite`` rebuilds it).

    python experiments/persona_latents.py                 # CPU config (~60 min on 2 cores)
    python experiments/persona_latents.py --figures-only  # re-draw from results.json
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from persona_probe.configs import refuse_fixed
from persona_probe.errors import PersonaProbeError
from persona_probe.latent_screening import ScreeningConfig
from persona_probe.models import DEFAULT_MODEL
from persona_probe.stages import subject_identity

VECTOR_EDITS = ("directional", "mean", "shift_sae_layer", "shift_every_layer")
DICTIONARIES = ("sae", "crosscoder")
ANSWER_TOKENS = 64          # default length of the base's answers in a crosscoder's corpus
LATENT_SETS = ("causal screening", "top Δ")


@dataclass
class PersonaLatentsConfig:
    model: str = DEFAULT_MODEL               # base model (organisms are finetuned from it)
    dtype: str = "bfloat16"                  # scoring, generation and LoRA (2.5-3x on CPU)
    organism: dict[str, Any] = field(default_factory=dict)   # OrganismConfig fields
    split: str = "evil-line1-pairs"          # selection / evaluation material
    # the dictionary screened: sae (the SAE named by ``sae``) | crosscoder (a BatchTopK
    # crosscoder trained in this run on the base and the selection-seed finetune, ``crosscoder``)
    dictionary: str = "sae"
    sae: str = "shipped"                     # SAE diffed: shipped | a directory | sae-lens:REL/ID
    # crosscoder training: "corpus" (CorpusSource dicts: chats read as they are), "answer_prompts"
    # (a prompt set the base answers greedily, "answer_tokens" long), "train" (CrosscoderConfig
    # fields; d_model comes from the model). Any chat that contains an evaluation question is
    # dropped, so the dictionary never sees evaluation material.
    crosscoder: dict[str, Any] = field(default_factory=dict)
    selection_seed: int = 0                  # organism seed the latents are chosen on
    eval_seeds: tuple[int, ...] = (4, 5, 6)   # 1-3 were the first run's (evil-line1 split)
    diff_per_domain: int = 8                 # diffing questions from each other domain
    diff_max_new_tokens: int = 48            # length of the base's answers to those questions
    # how candidates are screened and the set chosen (a JSON object of its fields in a file)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    null_draws: int = 100                    # random sets/directions per null (>= 100 unless tiny)
    null_seed: int = 2026                    # seed of those random draws
    # what random latent sets are matched on, decile by decile: activation (mean activation on
    # the finetune's selection tokens) | write (that × the finetuned decoder row's norm: the
    # mass an ablation removes; the same for unit-norm SAEs, not for a crosscoder)
    null_match: str = "activation"
    # 0: each member of a random set is drawn from its chosen latent's decile of that quantity;
    # k > 0: from the k latents nearest to it in that quantity's rank (deciles are coarse at the
    # top, where screened latents sit)
    null_neighbours: int = 0
    # latent sets ablated against their matched random null (the primary's set always is; the
    # naive top-Δ baseline's null costs 100 more measurements per evaluation seed)
    null_sets: tuple[str, ...] = LATENT_SETS
    # the screened set's null draws ablated in the base as well (one seed-independent stage,
    # ~100 measurements): the *penalized* removal, (effect on F − |effect on B|) / gap, then has
    # a matched null, so a random set that lowers the trait in any model scores ~0 against it
    base_null: bool = True
    # 100 random directions ablated at every layer (null of the vector's directional row;
    # 100 measurements per evaluation seed)
    directional_null: bool = True
    # α (units of r̄_L) the chosen set steers the base at; increasing, with 0.0
    steer_alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)
    # persona-vector edits compared: directional | mean | shift_sae_layer | shift_every_layer
    vector_edits: tuple[str, ...] = VECTOR_EDITS
    top_examples: int = 5                    # top-activating examples kept per chosen latent
    # what the base *writes* under the steering stage's edits: replies sampled per evaluation
    # question at every α (the screened set, the persona vector) and for the first
    # ``generation_null_draws`` of the set's matched random sets at the largest α, each judged
    # by probe:harmful and probe:refusal with the shipped coherence rule (0: not sampled)
    steer_generations: int = 0
    generation_null_draws: int = 10          # random sets sampled at the largest α (<= null_draws)
    generation_tokens: int = 64              # length of each sampled reply (temperature 1)
    coherence_margin: float = 0.1            # usable α: coherent fraction within this of α 0's
    primary: str = "shipped SAE / causal screening"   # the row the claim is about
    tiny: bool = False      # smoke-sized (tests, notebooks): fewer seeds and draws, no claims

    def __post_init__(self) -> None:
        from persona_probe.configs import coerce_nested
        from persona_probe.training.organism import OrganismConfig

        coerce_nested(self, error=PersonaProbeError)
        self.eval_seeds = tuple(int(s) for s in self.eval_seeds)
        self.steer_alphas = tuple(float(a) for a in self.steer_alphas)
        self.vector_edits = tuple(self.vector_edits)
        self.null_sets = tuple(self.null_sets)
        if not set(self.null_sets) <= set(LATENT_SETS) or "causal screening" not in self.null_sets:
            raise PersonaProbeError(f"null_sets {list(self.null_sets)}: a subset of "
                                    f"{list(LATENT_SETS)} that includes 'causal screening'")
        if not self.eval_seeds or (self.selection_seed in self.eval_seeds and not self.tiny):
            raise PersonaProbeError("eval_seeds must not include selection_seed (the selection "
                                    "seed never reports a final number; only a tiny demo run "
                                    "may evaluate on it, and it makes no claim)")
        if not self.tiny and len(self.eval_seeds) < 3:
            raise PersonaProbeError("eval_seeds needs >= 3 seeds for an effect claim (set "
                                    "tiny: true for a smoke run that makes none)")
        if not self.tiny and self.null_draws < 100:
            raise PersonaProbeError("null_draws must be >= 100 for a 95th percentile (set "
                                    "tiny: true for a smoke run that makes none)")
        from persona_probe.latent_screening import NULL_MATCHING

        if self.null_match not in NULL_MATCHING:
            raise PersonaProbeError(f"null_match {self.null_match!r}: use one of "
                                    f"{', '.join(NULL_MATCHING)}")
        if self.null_draws < 2:
            raise PersonaProbeError("null_draws must be >= 2")
        if self.null_neighbours < 0:
            raise PersonaProbeError("null_neighbours must be >= 0 (0: match by decile)")
        if self.steer_generations < 0:
            raise PersonaProbeError("steer_generations must be >= 0 (0: no generations)")
        if self.steer_generations:         # the generation settings matter only when sampled
            if self.generation_tokens < 1:
                raise PersonaProbeError("generation_tokens must be >= 1")
            if not 0 <= self.generation_null_draws <= self.null_draws:
                raise PersonaProbeError(f"generation_null_draws must be in 0..null_draws "
                                        f"({self.null_draws}): they are the first of the "
                                        "null's draws")
            if not 0 < self.coherence_margin < 1:
                raise PersonaProbeError("coherence_margin is a share of replies, in (0, 1)")
            if not any(a > 0 for a in self.steer_alphas):
                raise PersonaProbeError("steer_generations needs a positive alpha in "
                                        "steer_alphas to sample at")
        if list(self.steer_alphas) != sorted(self.steer_alphas):
            raise PersonaProbeError("steer_alphas must be in increasing order")
        if 0.0 not in self.steer_alphas:
            raise PersonaProbeError("steer_alphas must include 0.0")
        bad = [e for e in self.vector_edits if e not in VECTOR_EDITS]
        if bad:
            raise PersonaProbeError(f"vector_edits {bad}: use {', '.join(VECTOR_EDITS)}")
        if self.dictionary not in DICTIONARIES:
            raise PersonaProbeError(f"dictionary {self.dictionary!r}: use one of "
                                    f"{', '.join(DICTIONARIES)}")
        if self.dictionary == "crosscoder":
            self._check_crosscoder()
        elif self.crosscoder:
            raise PersonaProbeError("crosscoder settings are given but dictionary is 'sae'; set "
                                    "dictionary: crosscoder or drop them")
        label = self.dictionary_label
        rows = [f"{label} / causal screening", f"{label} / top Δ",
                *(f"persona vector / {e}" for e in self.vector_edits)]
        if self.primary not in rows:
            raise PersonaProbeError(f"primary {self.primary!r} names no row of the results; "
                                    f"use one of {rows}")
        refuse_fixed(self.organism, ("model", "seed"), "organism",
                     "the config's model and each organism's seed", PersonaProbeError)
        OrganismConfig.from_dict({**self.organism, "model": self.model}, "organism")

    @property
    def dictionary_label(self) -> str:
        """How results name the dictionary (table rows, ``primary``)."""
        if self.dictionary == "crosscoder":
            return "crosscoder"
        return "shipped SAE" if self.sae == "shipped" else "SAE"

    def _check_crosscoder(self) -> None:
        from persona_probe.corpus import CorpusSource

        c = self.crosscoder
        unknown = set(c) - {"corpus", "answer_prompts", "answer_tokens", "train"}
        if unknown:
            raise PersonaProbeError(f"crosscoder: unknown keys {sorted(unknown)}; use corpus, "
                                    "answer_prompts, answer_tokens, train")
        if not c.get("corpus") and not c.get("answer_prompts"):
            raise PersonaProbeError("crosscoder needs training text: corpus (chat sources) "
                                    "and/or answer_prompts (a prompt set the base answers)")
        for src in c.get("corpus", []):
            try:
                CorpusSource(**src)
            except TypeError as exc:
                raise PersonaProbeError(f"crosscoder corpus source {src}: {exc}") from None
        if c.get("answer_prompts") is not None and not (
                isinstance(c["answer_prompts"], str) and c["answer_prompts"].strip()):
            raise PersonaProbeError("crosscoder.answer_prompts names a prompt set (e.g. "
                                    f"builtin:all), not {c['answer_prompts']!r}")
        tokens = c.get("answer_tokens", ANSWER_TOKENS)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise PersonaProbeError(f"crosscoder.answer_tokens must be a positive integer, not "
                                    f"{tokens!r}")
        if self.sae != "shipped":
            raise PersonaProbeError(f"sae {self.sae!r} is given but dictionary is 'crosscoder' "
                                    "(the crosscoder is trained in the run); drop sae or set "
                                    "dictionary: sae")
        if "d_model" in c.get("train", {}):
            raise PersonaProbeError("crosscoder.train.d_model is taken from the model; drop it")
        # the width is the model's, known only once it is loaded; a wide stand-in checks the rest
        self.crosscoder_train(4096)
        if self.base_null:
            raise PersonaProbeError(
                "base_null needs a seed-independent base edit, but a crosscoder's base edit "
                "reads the finetune paired with it (a different one per seed); set base_null: "
                "false (the base shift is still measured per seed for the chosen sets)")

    def crosscoder_train(self, d_model: int):
        """The crosscoder's training config (``sae.crosscoder.CrosscoderConfig``), every default
        resolved, for a model of width ``d_model``."""
        from persona_probe.sae.crosscoder import CrosscoderConfig

        return CrosscoderConfig.from_dict({"d_model": d_model,
                                           **self.crosscoder.get("train", {})},
                                          "crosscoder.train")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "persona_latents config"):
        from persona_probe.configs import config_from_dict

        return config_from_dict(cls, raw, where, PersonaProbeError)

    def organism_config(self, seed: int):
        from persona_probe.training.organism import OrganismConfig

        fin = {"dtype": self.dtype, **self.organism.get("finetune", {})}
        return OrganismConfig.from_dict({**self.organism, "finetune": fin, "model": self.model,
                                         "seed": seed}, "organism")


# --- small helpers ---------------------------------------------------------------------------

def run(cfg: PersonaLatentsConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    """Every stage (reusing finished ones with the same fingerprint) → ``out/results.json``."""
    import numpy as np

    from persona_probe.artifacts import read_json, write_json, write_jsonl
    from persona_probe.directions import Direction, persona_vector, random_direction
    from persona_probe.evals.records import ValueLog
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.interventions import ablate, reference_projection, shift, steer
    from persona_probe.latent_dictionaries import SAEDictionary
    from persona_probe.latent_screening import (matched_random_sets,
                                                null_matching_mass, screen_finetune)
    from persona_probe.likelihood import trait_scores
    from persona_probe.models import load_subject
    from persona_probe.monitor import probe_set_from_answers
    from persona_probe.prompts import PromptItem, load_jsonl
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.sae.io import load_sae
    from persona_probe.stages import Stages, adapter_identity, sae_identity
    from persona_probe.stats import bootstrap, crossed_bootstrap
    from persona_probe.training.organism import heldout_questions, run_organism
    from persona_probe.traits import load_split

    t0 = time.perf_counter()
    stage = stage_clock()
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(runs, overwrite=overwrite)
    command = command_line("persona_latents", config_path)
    split = load_split(cfg.split)
    (sel_trait, sel_q), (ev_trait, ev_q) = split.selection, split.evaluation
    base = load_subject(cfg.model, dtype=cfg.dtype)
    if cfg.dictionary == "sae":
        sae = load_sae(cfg.sae, device=str(base.device), subject=base)
        hook = sae.cfg.metadata.hook_name
    else:
        hook = cfg.crosscoder_train(base.d_model).hook
    layer = int(hook.split(".")[1])
    every_layer = tuple(range(base.n_layers))
    common = {"command": command, "model": subject_identity(base), "split": asdict(split)}

    def evaluation_metric(s):
        return trait_scores(s, ev_trait, ev_q)

    # 1. organisms -----------------------------------------------------------------------
    adapters: dict[int, dict[str, Path]] = {}
    for seed in (cfg.selection_seed, *cfg.eval_seeds):
        ocfg = cfg.organism_config(seed)
        stage(f"organism seed {seed}")
        res = stages.run(f"organism-seed{seed}", {**common, "organism": asdict(ocfg)},
                         lambda d, ocfg=ocfg: run_organism(base, ocfg, d, evaluate=False))
        adapters[seed] = {k: Path(v) for k, v in res["adapters"].items()}

    def finetuned(seed: int):
        return load_subject(cfg.model, adapter=adapters[seed]["treatment"], dtype=cfg.dtype)

    def organism_fp(seed: int) -> dict:
        return {"stage": stages.fingerprint_of(f"organism-seed{seed}"),
                "adapter": adapter_identity(adapters[seed]["treatment"])}

    # 2. persona vector (selection questions, base model) -------------------------------------
    stage("persona vector")

    def build_vector(d: Path) -> Direction:
        if not (d / "direction.json").is_file():
            persona_vector(base, sel_trait, list(sel_q), seed=cfg.selection_seed).save(d)
        return Direction.load(d)
    vec = stages.run("vector", {**common, "questions": list(sel_q),
                                "seed": cfg.selection_seed}, build_vector)

    # 3. diffing items: the base model's answers to other domains' questions -------------------
    stage("diffing items")
    diff_q = heldout_questions(ocfg.domain, cfg.diff_per_domain, general=False)
    overlap = set(diff_q) & set(ev_q)
    if overlap:
        raise PersonaProbeError(f"diffing questions overlap the evaluation questions: {overlap}")

    def build_items(d: Path) -> list[PromptItem]:
        path = d / "items.jsonl"
        if not path.is_file():
            got = probe_set_from_answers(base, diff_q, cfg.diff_max_new_tokens,
                                         seed=cfg.selection_seed)
            write_jsonl(path, ({"id": it.id, "messages": it.messages} for it in got))
        return load_jsonl(path)
    items = stages.run("diff-items", {**common, "questions": diff_q,
                                      "max_new_tokens": cfg.diff_max_new_tokens,
                                      "seed": cfg.selection_seed}, build_items)
    # 3b. the dictionary: the SAE as given, or a crosscoder trained on the base and the
    # selection finetune (never on evaluation questions) ------------------------------------
    dictionary_metrics = None
    if cfg.dictionary == "sae":
        d_lat = SAEDictionary(sae)
        sae_id = sae_identity(sae)
        screen_stage = "screen-shipped-sae"
    else:
        stage("crosscoder")
        cc = stages.run("crosscoder", {
            **common, "organism": organism_fp(cfg.selection_seed),
            "crosscoder": _crosscoder_inputs(cfg, base.d_model),
            "excluded_questions": sorted(ev_q),
            "seed": cfg.selection_seed},
            lambda d: _build_crosscoder(d, cfg, base, lambda: finetuned(cfg.selection_seed),
                                        list(ev_q), organism_fp(cfg.selection_seed)))
        from persona_probe.latent_dictionaries import CrosscoderDictionary

        d_lat = CrosscoderDictionary(cc)
        sae_id = d_lat.identity()
        screen_stage = "screen-crosscoder"
        dictionary_metrics = read_json(stages.dir("crosscoder") / "crosscoder" / "metrics.json")
    rows_base, _ = d_lat.rows(base, items)

    # 4. screening on the selection seed --------------------------------------------------------
    scfg = cfg.screening
    stage("screening (selection seed)")

    def build_screen(d: Path) -> dict:
        done = read_json(d / "chosen.json") if (d / "chosen.json").is_file() else {}
        if (d / "examples.done").is_file() or "mean_projection" in done:
            return done
        f0 = finetuned(cfg.selection_seed)
        chosen = screen_finetune(base, f0, d_lat, sel_trait, sel_q, items, scfg, d,
                                 rows_base=rows_base)
        ex = d_lat.examples(base, f0, items, chosen["latents"] + chosen["top_delta"],
                            n=cfg.top_examples)
        chosen["examples"] = {str(i): [{"text": "".join(e.tokens).replace("\n", " "),
                                        "peak_token": e.tokens[e.peak],
                                        "peak": max(e.acts)} for e in v.examples]
                              for i, v in ex.items()}
        # projections of base and selection finetune on the vector, per layer (selection items)
        chosen["mean_projection"] = {
            "base": reference_projection(base, vec, every_layer, items),
            "finetuned": reference_projection(f0, vec, every_layer, items)}
        write_json(d / "chosen.json", chosen)
        (d / "examples.done").write_text("complete\n")
        return chosen
    chosen = stages.run(screen_stage, {
        **common, "sae": sae_id, "organism": organism_fp(cfg.selection_seed),
        "items": stages.fingerprint_of("diff-items"), "vector": stages.fingerprint_of("vector"),
        "screening": asdict(scfg)}, build_screen)
    latent_sets = {"causal screening": chosen["latents"], "top Δ": chosen["top_delta"]}
    null_mass = null_matching_mass(d_lat, chosen["mass_finetuned"], cfg.null_match)
    nulls = {name: matched_random_sets(null_mass, lat, cfg.null_draws, cfg.null_seed,
                                       neighbours=cfg.null_neighbours)
             for name, lat in latent_sets.items() if name in cfg.null_sets}
    random_dirs = [random_direction(base.d_model, every_layer, seed=cfg.null_seed + j,
                                    name=f"random{j}") for j in range(cfg.null_draws)
                   ] if cfg.directional_null else []
    mu_b = {int(k): v for k, v in chosen["mean_projection"]["base"].items()}

    # 5. evaluation seeds ------------------------------------------------------------------
    def vector_edit(subject, edit: str, mu_f: dict[int, float]):
        if edit == "directional":
            return ablate(subject, vec, "directional", every_layer)
        if edit == "mean":
            return ablate(subject, vec, "mean", every_layer, mu_b)
        layers = (layer,) if edit == "shift_sae_layer" else every_layer
        return shift(subject, vec, {L: mu_f[L] - mu_b[L] for L in layers})

    eval_inputs = {**common, "sae": sae_id, "screen": stages.fingerprint_of(screen_stage),
                   "vector": stages.fingerprint_of("vector"),
                   "items": stages.fingerprint_of("diff-items"),
                   "vector_edits": list(cfg.vector_edits), **null_inputs(cfg)}
    values: dict[int, ValueLog] = {}
    for seed in cfg.eval_seeds:
        stage(f"evaluation seed {seed}")

        def build_eval(d: Path, seed=seed) -> ValueLog:
            v = ValueLog(d / "values.jsonl")
            if (d / "done").is_file():
                return v
            f = finetuned(seed)
            v.measure("F", lambda: evaluation_metric(f))
            v.measure("B", lambda: evaluation_metric(base))
            mu_f = dict(zip(every_layer, v.measure("mu_F", lambda: list(reference_projection(
                f, vec, every_layer, items).values()))))
            for name, lat in latent_sets.items():
                for who, s, side, partner in (("F", f, "finetuned", base),
                                              ("B", base, "base", f)):
                    with d_lat.ablation(s, lat, side, partner=partner):
                        v.measure(f"{who}|{name}", lambda s=s: evaluation_metric(s))
                for j, draw in enumerate(nulls[name] if name in cfg.null_sets else []):
                    with d_lat.ablation(f, draw, "finetuned", partner=base):
                        v.measure(f"F|null {name}|{j}", lambda: evaluation_metric(f))
            for edit in cfg.vector_edits:
                for who, s in (("F", f), ("B", base)):
                    with vector_edit(s, edit, mu_f):
                        v.measure(f"{who}|vector {edit}", lambda s=s: evaluation_metric(s))
            if "directional" in cfg.vector_edits:
                for j, r in enumerate(random_dirs):       # empty without directional_null
                    with ablate(f, r, "directional", every_layer):
                        v.measure(f"F|null vector directional|{j}",
                                  lambda: evaluation_metric(f))
            (d / "done").write_text("complete\n")
            return v
        values[seed] = stages.run(f"eval-seed{seed}", {**eval_inputs,
                                                       "organism": organism_fp(seed)},
                                  build_eval)

    # 5b. the screened set's null draws in the base (seed-independent) ---------------------
    base_null_vals = None
    if cfg.base_null:
        stage("null draws in the base")

        def build_base_null(d: Path) -> ValueLog:
            v = ValueLog(d / "values.jsonl")
            if (d / "done").is_file():
                return v
            v.measure("B", lambda: evaluation_metric(base))
            for j, draw in enumerate(nulls["causal screening"]):
                with d_lat.ablation(base, draw, "base"):
                    v.measure(f"B|null causal screening|{j}", lambda: evaluation_metric(base))
            (d / "done").write_text("complete\n")
            return v
        base_null_vals = stages.run("base-null", eval_inputs, build_base_null)

    # 6. steering the base model -----------------------------------------------------------
    stage("steering the base model")

    def build_steer(d: Path) -> ValueLog:
        v = ValueLog(d / "values.jsonl")
        if (d / "done").is_file():
            return v
        v.measure("B", lambda: evaluation_metric(base))
        top = max(cfg.steer_alphas)
        for name, lat in latent_sets.items():
            for a in cfg.steer_alphas:
                if a:
                    with d_lat.steering(base, lat, a):
                        v.measure(f"{name}|{a}", lambda: evaluation_metric(base))
            if name != "causal screening":
                continue         # the steering null is drawn for the screened set only
            for j, draw in enumerate(nulls[name]):
                with d_lat.steering(base, draw, top):
                    v.measure(f"null {name}|{j}", lambda: evaluation_metric(base))
        for a in cfg.steer_alphas:
            if a:
                with steer(base, vec, a, [layer]):
                    v.measure(f"vector|{a}", lambda: evaluation_metric(base))
        (d / "done").write_text("complete\n")
        return v
    steer_vals = stages.run("steer-base", {**eval_inputs, "alphas": list(cfg.steer_alphas)},
                            build_steer)

    # 6b. what the base writes under the same steering -----------------------------------
    generations = None
    if cfg.steer_generations:
        stage("generations under steering")
        generations = _steer_generations(cfg, stages, {**eval_inputs,
                                                       "alphas": list(cfg.steer_alphas)},
                                         base, d_lat, latent_sets["causal screening"],
                                         nulls["causal screening"], vec, layer, list(ev_q))

    # 7. results ---------------------------------------------------------------------------
    stage("results")
    results = _aggregate(cfg, values, steer_vals, latent_sets, chosen, np, crossed_bootstrap,
                         bootstrap, base_null_vals)
    results["null_matching"] = null_matching_report(
        d_lat, chosen["mass_finetuned"], latent_sets, nulls, cfg.null_match,
        cfg.null_neighbours)
    if generations is not None:
        results["steering_generations"] = _generation_summary(cfg, *generations, steer_vals,
                                                              len(ev_q))
    ranking_stability = _ranking_stability(cfg, d_lat, items, rows_base, chosen, finetuned)
    results.update({
        "experiment": "persona_latents", "config": asdict(cfg), "config_path": config_path,
        "command": command, "git_sha": git_sha(), "seeds": {
            "selection": cfg.selection_seed, "evaluation": list(cfg.eval_seeds)},
        **stages.summary(), "compute_seconds_total": round(time.perf_counter() - t0, 1),
        "model": base.provenance(),
        "sae": {"spec": cfg.sae if cfg.dictionary == "sae" else "crosscoder", **sae_id},
        "dictionary": {"kind": cfg.dictionary, "label": cfg.dictionary_label,
                       "metrics": dictionary_metrics},
        "material": {"selection_questions": len(sel_q), "evaluation_questions": len(ev_q),
                     "selection_replies": len(sel_trait.trait_replies + sel_trait.anti_replies),
                     "evaluation_replies": len(ev_trait.trait_replies + ev_trait.anti_replies),
                     "diff_items": len(items), "diff_tokens": int(rows_base.shape[0])},
        "selection": {k: chosen.get(k) for k in (
            "latents", "top_delta", "selection_gap_removed", "selection_specific_removed",
            "chosen_by", "selection_gap", "sets", "examples")},
        "screen_rows": chosen["screen"],
        "mean_projection": chosen["mean_projection"],
        "ranking_stability": ranking_stability,
        "provenance": provenance(cfg.selection_seed)})
    write_json(out / "results.json", results)
    paths = draw(out)
    summarize(results)
    report_outputs(out, paths)
    return results




def null_inputs(cfg: PersonaLatentsConfig) -> dict[str, Any]:
    """What the random draws depend on, for the evaluation stages' fingerprints. Options added
    after the first runs are recorded off their defaults only, so those runs' stages keep
    their fingerprints."""
    return {"null_draws": cfg.null_draws, "null_seed": cfg.null_seed,
            "null_sets": list(cfg.null_sets),
            **({} if cfg.directional_null else {"directional_null": False}),
            **({} if cfg.null_match == "activation" else {"null_match": cfg.null_match}),
            **({"null_neighbours": cfg.null_neighbours} if cfg.null_neighbours else {})}


def null_matching_report(d_lat, mass_finetuned, sets: dict[str, list[int]],
                         nulls: dict[str, list[list[int]]], match: str,
                         neighbours: int = 0) -> dict:
    """How well the random sets match each chosen set on both quantities they could be matched
    on: summed mean activation, and summed write mass (activation × the finetuned decoder
    row's norm, what an ablation in the finetune removes). Deciles are coarse at the top, where
    screened latents sit, so the match is measured, not assumed. The base side of a crosscoder
    (rows W_dec_B) is not matched by either."""
    import numpy as np

    from persona_probe.latent_screening import null_matching_mass

    act = np.asarray(mass_finetuned, dtype=np.float64)
    write = null_matching_mass(d_lat, act, "write")
    out: dict[str, Any] = {"match": match, **({"neighbours": neighbours} if neighbours else {})}
    for name, draws in nulls.items():
        row = {}
        for q, m in (("activation", act), ("write", write)):
            chosen = float(m[list(sets[name])].sum())
            d = np.array([m[list(x)].sum() for x in draws])
            row[q] = {"chosen": chosen, "null_median": float(np.median(d)),
                      "null_p5": float(np.percentile(d, 5)),
                      "null_p95": float(np.percentile(d, 95)),
                      "draws_at_or_above_chosen": int((d >= chosen).sum()), "draws": len(d)}
        out[name] = row
    return out


def _steer_generations(cfg: PersonaLatentsConfig, stages, inputs: dict, base, d_lat,
                       chosen: list[int], draws: list[list[int]], vec, layer: int,
                       questions: list[str]) -> tuple[dict[str, list[dict]], list[str]]:
    """The steering stage's edits, sampled: the base unsteered, the screened set and the
    persona vector at every α, and the set's first matched random sets at the largest α;
    every reply judged by the probe judges (on their own frozen model) with the coherence
    rule beside it. One resumable stage (``steer-generations``)."""
    from persona_probe.artifacts import ItemLog
    from persona_probe.evals.behaviour import GENERATION_JUDGES, judged_conditions
    from persona_probe.evals.coherence import CoherenceRule
    from persona_probe.evals.probe_judge import load_probe_judges
    from persona_probe.interventions import steer

    judges = load_probe_judges(list(GENERATION_JUDGES))
    rule = CoherenceRule.shipped()
    judge_model = next(iter(judges.values())).model
    alphas = [a for a in cfg.steer_alphas if a]
    top = max(alphas)
    null = draws[:cfg.generation_null_draws]
    conditions = [("base", {"kind": "base", "alpha": 0.0}, None)]
    conditions += [(f"set a{a}", {"kind": "set", "alpha": a},
                    lambda a=a: d_lat.steering(base, chosen, a)) for a in alphas]
    conditions += [(f"vector a{a}", {"kind": "vector", "alpha": a},
                    lambda a=a: steer(base, vec, a, [layer])) for a in alphas]
    conditions += [(f"null{j} a{top}", {"kind": "null", "alpha": top, "draw": j},
                    lambda d=d: d_lat.steering(base, d, top)) for j, d in enumerate(null)]

    def build(d: Path) -> dict[str, list[dict]]:
        return judged_conditions(base, conditions, questions, judges, rule, judge_model,
                                 ItemLog(d / "generations.jsonl"), cfg.steer_generations,
                                 cfg.selection_seed, cfg.generation_tokens)
    rows = stages.run("steer-generations", {
        **inputs, "chosen": list(chosen), "draws": null, "questions": questions,
        "samples": cfg.steer_generations, "max_new_tokens": cfg.generation_tokens,
        "sampling_seed": cfg.selection_seed, "judges": [j.identity for j in judges.values()],
        "coherence": asdict(rule)}, build)
    return rows, list(judges)


def _generation_summary(cfg: PersonaLatentsConfig, rows: dict[str, list[dict]],
                        judges: list[str], steer_vals, n_q: int) -> dict:
    """Per α and edit: the coherent fraction, each judge's mean over coherent replies and its
    paired effect against the unsteered base, beside the teacher-forced steering effect of the
    same edit; the set's judged effect at the largest α among its random sets'; and each
    edit's usable α (largest α whose coherent fraction stays within the margin of α 0's)."""
    import numpy as np

    from persona_probe.evals.behaviour import (coherence_means, compare_conditions,
                                               rank_against_null, rank_against_null_common,
                                               usable_alpha)

    conds = compare_conditions(rows, judges, n_q)
    for name, rs in rows.items():
        conds[name].update(coherence_means(rs))
    alphas = [a for a in cfg.steer_alphas if a]
    top = max(alphas)
    b0 = float(np.mean(steer_vals.rows["B"]))
    tf_key = {"set": "causal screening", "vector": "vector"}
    curves = {}
    for kind in ("set", "vector"):
        curve = [{"alpha": 0.0, "teacher_forced_effect": 0.0, **conds["base"]}]
        for a in alphas:
            tf = float(np.mean(steer_vals.rows[f"{tf_key[kind]}|{a}"])) - b0
            curve.append({"alpha": a, "teacher_forced_effect": tf, **conds[f"{kind} a{a}"]})
        curves[kind] = curve
    nulls = [n for n in conds if n.startswith("null")]
    for n in nulls:        # the same draw's teacher-forced effect at the same α
        key = f"null causal screening|{rows[n][0]['draw']}"
        if key in steer_vals.rows:
            conds[n]["teacher_forced_effect"] = float(np.mean(steer_vals.rows[key])) - b0
    return {"samples": cfg.steer_generations, "max_new_tokens": cfg.generation_tokens,
            "temperature": 1.0,          # evals.behaviour.sample_replies' default
            "n_questions": n_q, "judges": [f"probe:{k}" for k in judges],
            "margin": cfg.coherence_margin, "curves": curves,
            "usable_alpha": {k: usable_alpha(c, cfg.coherence_margin)
                             for k, c in curves.items()},
            "nulls": {n: conds[n] for n in nulls},
            "set_against_null": rank_against_null(conds, f"set a{top}", nulls, judges)
            if nulls else {},
            "set_against_null_common": rank_against_null_common(
                rows, conds, f"set a{top}", nulls, judges, n_q) if nulls else {}}


def _aggregate(cfg, values, steer_vals, latent_sets, chosen, np, crossed_bootstrap, bootstrap,
               base_null_vals=None) -> dict:
    """Gap removed, base shift, nulls and steering, every estimate over seeds × questions.

    Ratios to the treatment − base gap mean something only when that gap is resolved (its CI
    above 0 and every seed agreeing in sign); the raw effects of each edit on each model, in
    measure units, are reported beside them and stay defined when it is not."""
    seeds = list(cfg.eval_seeds)

    def table(key: str) -> "np.ndarray":
        return np.array([values[s].rows[key] for s in seeds])
    F, B = table("F"), table("B")
    gap = F - B
    gap_est = crossed_bootstrap(gap)
    resolved = gap_est.lo > 0 and gap_est.signs_agree
    # smallest gap this design resolves with 80% power at a two-sided 5% level: 2.8 SE
    detectable = 2.8 * (gap_est.hi - gap_est.lo) / 3.92

    def null(prefix: str) -> dict:
        effects = [float((F - table(f"F|null {prefix}|{j}")).mean())
                   for j in range(cfg.null_draws)]
        ratios = [e / float(gap.mean()) for e in effects]
        return {"mean": float(np.mean(ratios)), "p95": float(np.quantile(ratios, 0.95)),
                "effect_mean": float(np.mean(effects)),
                "effect_p95": float(np.quantile(effects, 0.95)),
                "draws": len(effects), "values": ratios}

    def penalized(e_f, e_b, g):
        return (e_f - np.abs(e_b)) / g

    def penalized_est(key: str) -> dict:
        """(effect on F − |effect on B|) / gap: any movement of the base counts against it."""
        from persona_probe.stats import crossed_statistic

        return crossed_statistic([F - table(f"F|{key}"), table(f"B|{key}") - B, gap],
                                 penalized, what="(effect on F − |effect on B|) / gap").to_dict()

    def penalized_null(prefix: str) -> dict | None:
        """The same statistic for each random draw, its base effect from the base-null stage
        (the base is one model, so one measurement serves every seed)."""
        if base_null_vals is None or f"B|null {prefix}|0" not in base_null_vals.rows:
            return None
        bn, g = base_null_vals.rows, float(gap.mean())
        b0 = np.array(bn["B"])
        e_b = [float((np.array(bn[f"B|null {prefix}|{j}"]) - b0).mean())
               for j in range(cfg.null_draws)]
        e_f = [float((F - table(f"F|null {prefix}|{j}")).mean()) for j in range(cfg.null_draws)]
        vals = [float(penalized(a, b, g)) for a, b in zip(e_f, e_b)]
        return {"statistic": "(effect on F − |effect on B|) / gap", "mean": float(np.mean(vals)),
                "p95": float(np.quantile(vals, 0.95)), "draws": len(vals), "values": vals,
                "base_shift_values": [b / g for b in e_b]}

    steer_b = np.array(steer_vals.rows["B"])
    top = max(cfg.steer_alphas)

    def steer_curve(name: str) -> list[dict]:
        curve = [{"alpha": 0.0, **bootstrap(np.zeros_like(steer_b)).to_dict()}]
        for a in cfg.steer_alphas:
            if a:
                eff = np.array(steer_vals.rows[f"{name}|{a}"]) - steer_b
                curve.append({"alpha": a, **bootstrap(eff).to_dict()})
        return curve

    def edit_row(dictionary: str, method: str, key: str, latents, null_key: str | None,
                 curve: list[dict], steer_null: list[float]) -> dict:
        nl = nulls.get(null_key) if null_key else None
        means = [c["mean"] for c in curve]
        return {
            "dictionary": dictionary, "method": method, "latents": latents,
            "gap_removed": crossed_bootstrap(F - table(f"F|{key}"), gap).to_dict(),
            "base_shift": crossed_bootstrap(table(f"B|{key}") - B, gap).to_dict(),
            "effect_finetuned": crossed_bootstrap(F - table(f"F|{key}")).to_dict(),
            "effect_base": crossed_bootstrap(table(f"B|{key}") - B).to_dict(),
            "penalized": penalized_est(key),
            "null_p95": nl["p95"] if nl else None, "null_mean": nl["mean"] if nl else None,
            "null_effect_p95": nl["effect_p95"] if nl else None,
            "steer_effect": curve[-1], "steer_curve": curve,
            "steer_monotonic": bool(np.all(np.diff(means) > 0)),
            "steer_null_p95": float(np.quantile(steer_null, 0.95)) if steer_null else None,
            "steer_null_mean": float(np.mean(steer_null)) if steer_null else None,
            "steer_alpha": top}

    rows, nulls = [], {}
    sae_label = cfg.dictionary_label
    for name, lat in latent_sets.items():
        if name in cfg.null_sets:
            nulls[name] = null(name)
        steer_null = [float((np.array(steer_vals.rows[f"null {name}|{j}"]) - steer_b).mean())
                      for j in range(cfg.null_draws) if f"null {name}|{j}" in steer_vals.rows]
        rows.append({**edit_row(sae_label, name, name, lat,
                                name if name in cfg.null_sets else None, steer_curve(name),
                                steer_null),
                     "primary": f"{sae_label} / {name}" == cfg.primary})
        pn = penalized_null(name) if name in cfg.null_sets else None
        if pn is not None:
            nulls[f"{name} (penalized)"] = pn
            est = rows[-1]["penalized"]
            # a secondary test named in the config before the run (the goal is above)
            beyond = sum(v >= est["mean"] for v in pn["values"])
            rows[-1]["specificity"] = {
                "penalized": est, "null_p95": pn["p95"], "null_mean": pn["mean"],
                # a share of the gap means something only when the gap is resolved
                "ci_lower_above_null_p95": (est["lo"] > pn["p95"]) if resolved else None,
                "null_draws_at_or_beyond": beyond,
                "rank_p": (1 + beyond) / (1 + pn["draws"]),
                "note": "compares the screened set with random sets of the same make-up: a pass "
                        "means more specific to the finetune than random latents, not control "
                        "of the persona; the CI (seeds x questions) and the null's spread "
                        "(random sets on fixed data) are different kinds of uncertainty"}
    vec_curve = steer_curve("vector")
    has_dir_null = ("directional" in cfg.vector_edits
                    and "F|null vector directional|0" in values[seeds[0]].rows)
    if has_dir_null:
        nulls["vector directional"] = null("vector directional")
    for edit in cfg.vector_edits:
        method = (f"{edit} (every layer)" if edit in ("directional", "mean") else edit)
        rows.append({**edit_row("persona vector", method, f"vector {edit}", None,
                                "vector directional" if edit == "directional" and has_dir_null
                                else None,
                                vec_curve, []),
                     "primary": f"persona vector / {edit}" == cfg.primary})
    for r in rows:
        g, b = r["gap_removed"], r["base_shift"]
        has_null, has_steer_null = r["null_p95"] is not None, r["steer_null_p95"] is not None
        r["goal"] = {       # None: not testable (no null was drawn for this row)
            "gap_resolved": bool(resolved),
            "gap_removed_ge_50pct": g["mean"] >= 0.5,
            "gap_removed_seeds_agree": all(v > 0 for v in g["per_seed"]),
            "base_shift_ci_within_25pct": b["lo"] >= -0.25 and b["hi"] <= 0.25,
            "null_p95_below_10pct": r["null_p95"] < 0.10 if has_null else None,
            "ci_lower_above_null_p95": g["lo"] > r["null_p95"] if has_null else None,
            "steer_monotonic_beyond_null": bool(
                r["steer_monotonic"] and r["steer_effect"]["lo"] > r["steer_null_p95"])
            if has_steer_null else None}
        vals = list(r["goal"].values())
        r["goal"]["met"] = (False if False in vals else None if None in vals else True)
        if r["method"] == "shift_every_layer":
            r["caveat"] = ("subtracts each layer's total shift although earlier subtractions "
                           "are carried forward by the residual stream, so it removes roughly "
                           "the cumulative shift: an invalid edit, reported for completeness")
        if r["dictionary"] == "persona vector":
            r["steer_caveat"] = "the persona vector steered at the SAE's layer (one curve)"
    return {"measure": "would-say: mean per-token log-likelihood of the trait's replies minus "
                       "the anti-trait's, no system prompt; evaluation questions and replies",
            "treatment_minus_base": gap_est.to_dict(),
            "gap_resolved": bool(resolved),
            "minimum_detectable_gap": float(detectable),
            "gap_per_seed": {str(s): float(v) for s, v in zip(seeds, gap.mean(1))},
            "would_say": {"base": crossed_bootstrap(B).to_dict(),
                          "treatment": crossed_bootstrap(F).to_dict()},
            "screening": rows,
            "nulls": nulls}


def _ranking_stability(cfg, d_lat, items, rows_base, chosen, finetuned) -> dict:
    """How often each selection-seed top-10 latent (by Δ) is in the top 10 of an evaluation
    seed's organism: is the ranking a property of the finetune or of one seed? (A crosscoder
    trained on the selection pair reads each evaluation pair with the same weights.)"""
    import torch

    if "delta" in chosen:
        delta0 = torch.tensor(chosen["delta"])
    else:   # runs screened before chosen.json kept Δ (an SAE): Δ from the stored mass
        if d_lat.kind != "sae":
            raise PersonaProbeError("the screening output lacks Δ; re-run the screening stage "
                                    "(--overwrite)")
        delta0 = torch.tensor(chosen["mass_finetuned"]) - d_lat.activations(
            rows_base, rows_base)[0].mean(0)
    top0 = torch.argsort(delta0, descending=True)[:10].tolist()
    tops = {}
    for seed in cfg.eval_seeds:
        rows_f, _ = d_lat.rows(finetuned(seed), items)
        tops[seed] = set(torch.argsort(d_lat.delta(*d_lat.activations(rows_base, rows_f)),
                                       descending=True)[:10].tolist())
    return {"top10_selection_seed": top0,
            "fraction_of_eval_seeds_in_top10": {str(i): sum(i in t for t in tops.values())
                                                / len(tops) for i in top0},
            "chosen_in_top10": {str(i): sum(i in t for t in tops.values()) / len(tops)
                                for i in chosen["latents"]}}


def _crosscoder_inputs(cfg: PersonaLatentsConfig, d_model: int) -> dict:
    """What decides the crosscoder, for its stage fingerprint: the training config with every
    default resolved, the answer settings, and the sha256 of each source file (and of the
    answered prompt set's text), so a changed default or data file is not silently reused."""
    import hashlib

    from persona_probe.artifacts import sha256_file
    from persona_probe.corpus import SOURCE_KINDS, CorpusSource, resolve_shared
    from persona_probe.prompts import load_prompts

    c = cfg.crosscoder
    sources = []
    for src in c.get("corpus", []):
        s = CorpusSource(**src)
        spec = SOURCE_KINDS.get(s.kind)
        digest = sha256_file(resolve_shared(s.path)) if spec is not None and spec.file else None
        sources.append({**src, "sha256": digest})
    answered = None
    if c.get("answer_prompts"):
        text = json.dumps([it.messages for it in load_prompts(c["answer_prompts"])])
        answered = hashlib.sha256(text.encode()).hexdigest()
    return {"corpus": sources, "answer_prompts": c.get("answer_prompts"),
            "answer_prompts_sha256": answered,
            "answer_tokens": int(c.get("answer_tokens", ANSWER_TOKENS)),
            "train": cfg.crosscoder_train(d_model).to_dict()}


def without_questions(items, questions) -> list:
    """The chats none of whose messages contain any of ``questions`` (case and spacing
    ignored): how a dictionary's training text is kept apart from evaluation questions."""
    def norm(text: str) -> str:
        return " ".join(text.lower().split())
    qs = [norm(q) for q in questions if q.strip()]
    return [it for it in items
            if not any(q in norm(m["content"]) for m in it.messages for q in qs)]


def _build_crosscoder(d: Path, cfg: PersonaLatentsConfig, base, load_finetuned,
                      excluded: list[str], finetuned_identity: dict):
    """The crosscoder stage: chats (read as they are, plus the base's greedy answers to a prompt
    set), both models' residuals at every non-special token, then training (resumable: the
    corpus is written once, training checkpoints)."""
    from persona_probe.artifacts import write_json, write_jsonl
    from persona_probe.corpus import CorpusSource, load_source
    from persona_probe.generation import generate_responses
    from persona_probe.latent_dictionaries import paired_rows
    from persona_probe.prompts import load_jsonl, load_prompts
    from persona_probe.sae.crosscoder import load_crosscoder, train_crosscoder

    c = cfg.crosscoder
    out = d / "crosscoder"
    if (out / "cfg.json").is_file():
        return load_crosscoder(out)
    corpus = d / "corpus.jsonl"
    if not corpus.is_file():
        items = [it for src in c.get("corpus", []) for it in load_source(CorpusSource(**src))]
        if c.get("answer_prompts"):
            items += generate_responses(base, load_prompts(c["answer_prompts"]),
                                        int(c.get("answer_tokens", ANSWER_TOKENS)),
                                        temperature=0.0,
                                        seed=cfg.selection_seed, progress=False)
        kept = without_questions(items, excluded)
        write_jsonl(corpus, ({"id": it.id, "messages": it.messages} for it in kept))
        write_json(d / "corpus-stats.json", {"offered": len(items), "kept": len(kept)})
    items = load_jsonl(corpus)
    tcfg = cfg.crosscoder_train(base.d_model)
    rows_b, rows_f, _ = paired_rows(base, load_finetuned(), tcfg.hook, items, "all")
    train_crosscoder(tcfg, rows_b, rows_f, out=out, resume=True,
                     models={"base": subject_identity(base), "finetuned": finetuned_identity})
    # the saved weights, as a resumed run loads them (save_dtype and device included), so a
    # fresh run and a resumed one screen with the same crosscoder and the same identity
    return load_crosscoder(out)


def draw(out: Path) -> list[Path]:
    """Figures from ``out/results.json``: gap removed per row against its null, and steering."""
    import plotly.graph_objects as go

    from persona_probe.figures import write_figure_or_html

    res = json.loads((out / "results.json").read_text())
    rows = res["screening"]
    labels = [f"{r['dictionary']}: {r['method']}" for r in rows]
    fig = go.Figure()
    for key, name in (("gap_removed", "gap removed (finetuned edited)"),
                      ("base_shift", "base shift (base edited)")):
        est = [r[key] for r in rows]
        fig.add_bar(name=name, x=labels, y=[e["mean"] for e in est], error_y=dict(
            type="data", symmetric=False, array=[e["hi"] - e["mean"] for e in est],
            arrayminus=[e["mean"] - e["lo"] for e in est]))
    fig.add_scatter(name="matched null, 95th percentile", x=labels,
                    y=[r["null_p95"] for r in rows], mode="markers",
                    marker=dict(symbol="line-ew-open", size=30, line=dict(width=3)))
    fig.update_layout(barmode="group", title="Edits on evaluation material, as a share of the "
                      "treatment − base gap (CIs over seeds × questions)",
                      yaxis_title="share of the gap", template="plotly_white")
    steer = go.Figure()
    for r in rows:
        if r["dictionary"] != "persona vector" or r["method"].startswith("directional"):
            c = r["steer_curve"]
            name = r["method"] if r["dictionary"] != "persona vector" else "persona vector"
            steer.add_scatter(name=name, x=[p["alpha"] for p in c], y=[p["mean"] for p in c],
                              error_y=dict(type="data", symmetric=False,
                                           array=[p["hi"] - p["mean"] for p in c],
                                           arrayminus=[p["mean"] - p["lo"] for p in c]))
            if r["steer_null_p95"] is not None:
                steer.add_scatter(name=f"null p95 ({r['method']})", x=[r["steer_alpha"]],
                                  y=[r["steer_null_p95"]], mode="markers",
                                  marker=dict(symbol="x", size=12))
    steer.update_layout(title="Steering the base model (evaluation questions)",
                        xaxis_title="α (× mean residual norm)",
                        yaxis_title="would-say change vs unsteered", template="plotly_white")
    paths = []
    for name, f in (("edits", fig), ("steering", steer)):
        paths += write_figure_or_html(f, out / name)
    return paths


def summarize(res: dict) -> None:
    def f(e: dict) -> str:
        return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"

    print(f"treatment − base: {f(res['treatment_minus_base'])}")
    for r in res["screening"]:
        p95 = "—" if r["null_p95"] is None else f"{r['null_p95']:+.3f}"
        print(f"{r['dictionary']:>15} {r['method']:<28} gap removed {f(r['gap_removed'])}  "
              f"base shift {f(r['base_shift'])}  null p95 {p95}  goal {r['goal']['met']}")
    for kind, curve in res.get("steering_generations", {}).get("curves", {}).items():
        print(f"generations, {kind}: " + "; ".join(
            f"α {p['alpha']:g} coherent {p['coherent_fraction']:.2f} harmful "
            + ("—" if p.get("harmful") is None else f"{p['harmful']:.1f}") for p in curve))
