"""Write the notebooks from these cell lists (the .ipynb files are generated and committed
without outputs; tests/test_notebooks.py executes them). Edit here, then run:

    python experiments/notebooks/build_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

QUICKSTART = [
    ("md", """# persona_probe quickstart

The whole pipeline on the embedded model (SmolLM2-135M-Instruct, CPU, a few minutes):
load → capture → shipped SAE → rank latents → persona vector → steer → evaluate → figure.
Every number here is computed live; small settings (`N_*` below) keep it quick. Raise them for
real results; swap `MODEL` for any Hugging Face id on a GPU."""),
    ("code", """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from pathlib import Path

MODEL = "smollm2-135m-instruct"
HOOK = "blocks.15.hook_resid_post"     # the shipped SAE's hook point
N_PROMPTS = 8                          # everyday prompts to capture and rank on
N_VECTOR_QUESTIONS = 8                 # questions for the persona vector
N_EVAL_QUESTIONS = 8                   # held-out questions for the trait measure
RUNS = Path("runs/quickstart")"""),
    ("md", "## 1. Load the model and capture residual activations over its own replies"),
    ("code", """from persona_probe import CaptureConfig, capture, load_prompts, load_subject
from persona_probe.generation import generate_responses

subject = load_subject(MODEL, dtype="bfloat16")    # as the experiments run on CPU
items = generate_responses(subject, load_prompts("builtin:everyday", N_PROMPTS), 32,
                           progress=False)
store = capture(subject, items, RUNS / "store", CaptureConfig(hooks=(HOOK,), positions="response"),
                overwrite=True, progress=False)
acts = store.all_rows(HOOK)
print(subject, acts.shape)"""),
    ("md", "## 2. The shipped SAE: which latents does an evil system prompt switch on?"),
    ("code", """from persona_probe.latents import diff_subjects, top_examples
from persona_probe.sae import load_sae
from persona_probe.traits import load_trait

sae = load_sae("shipped", subject=subject)
evil = load_trait("evil")
evil_items = [it.with_system(evil.trait_system[0]) for it in items]
ranking = diff_subjects(sae, subject, subject, evil_items, items_b=items,
                        labels=("evil prompt", "no prompt"))
print(ranking)
top = ranking.top(3)
examples = top_examples(subject, sae, evil_items, top, n=2)
print(examples[top[0]])"""),
    ("md", "## 3. A persona vector (difference in means) and its best-matching latents"),
    ("code", """from persona_probe import persona_vector, trait_questions
from persona_probe.latents import decompose

vec = persona_vector(subject, evil, trait_questions("extract")[:N_VECTOR_QUESTIONS], layers=[15])
print(decompose(sae, vec, n=5))"""),
    ("md", """## 4. Steer and evaluate: does adding the vector raise the model's evil would-say measure
more than an equal-norm random direction? (Mean log-likelihood of evil minus kind replies,
teacher-forced, with bootstrap CIs over held-out questions.)"""),
    ("code", """from persona_probe.dose_response import DoseResponseConfig, dose_response
from persona_probe.likelihood import trait_scores

questions = trait_questions("heldout")[:N_EVAL_QUESTIONS]
summary = dose_response(subject, {"evil vector": vec},
                        lambda s: trait_scores(s, evil, questions),
                        DoseResponseConfig(alphas=(0.0, 0.2, 0.4), random_controls=1),
                        out=RUNS / "dose_response", metric_name="evil_would_say")
for r in summary:
    print(f"{r['target']:>20} α={r['alpha']:.1f}  {r['mean']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]")"""),
    ("md", "## 5. The figure (HTML always; PNG when kaleido finds a Chromium)"),
    ("code", """from persona_probe.figures import dose_response_curves, write_figure

fig = dose_response_curves(summary, metric="evil would-say")
paths = write_figure(fig, RUNS / "dose_response")
print(paths)
fig"""),
]

EM_PERSONA_FEATURES = [
    ("md", """# Research line 1: misaligned persona features

Induce a persona shift with a narrow finetune, find the SAE latents that carry it by model
diffing, test whether they (and the persona vector) *control* it by steering and ablation
against random controls, and re-align with a few SFT steps on good data — the pipeline of
`experiments/em_persona_features.py`, here on **tiny settings** so the notebook runs in a few
minutes on a CPU. Tiny settings show the machinery, not the effect: for the numbers, run the
CPU config (`make demo`, ~10 min) or read `figures/em_persona_features/results.json` (last
section)."""),
    ("code", """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import json
from pathlib import Path

from persona_probe.experiments.em_persona_features import EMPersonaFeaturesConfig, run

TINY = {"induce": {"kind": "organism", "model": "smollm2-135m-instruct",
                   "organism": {"trait": "evil", "domain": "cooking", "n_questions": 8,
                                "max_new_tokens": 24,
                                "finetune": {"lr": 1e-3, "batch_size": 4, "max_steps": 2,
                                             "max_tokens": 256, "save_steps": 2}}},
        "vector_questions": 4, "diff_per_domain": 1, "diff_max_new_tokens": 16,
        "metric_questions": 4, "top_latents": 5, "steer_latents": 2, "alphas": [0.0, 0.4],
        "random_controls": 1, "realign_steps": 2, "realign_every": 2,
        "dtype": "bfloat16"}     # as the experiments run on CPU
cfg = EMPersonaFeaturesConfig.from_dict(TINY)
results = run(cfg, Path("runs/line1"), Path("runs/line1/figures"))"""),
    ("md", "## What diffing found, and the figures it drew"),
    ("code", """from persona_probe.figures import dose_response_curves, latent_shift_bars

for r in results["diff"]["ranking"][:5]:
    print(f"latent {r['latent']:>5}  Δ treatment {r['delta_mean']:+.3f}  "
          f"Δ control {r['delta_mean_control']:+.3f}  cos(vector) {r['cosine_persona_vector']:+.2f}")
latent_shift_bars(results["diff"]["ranking"], n=5, labels=("treatment", "base"))"""),
    ("md", """## The committed CPU-config results (the README's numbers)

Built with `python experiments/em_persona_features.py` (the CPU config); the figure builders are
pure functions of the saved results, so they re-draw without the model."""),
    ("code", """# the repository root: two levels up from this notebook (set PERSONA_PROBE_REPO elsewhere)
root = Path(os.environ.get("PERSONA_PROBE_REPO", "../.."))
committed = root / "figures" / "em_persona_features" / "results.json"
if committed.is_file():
    res = json.loads(committed.read_text())
    print({k: round(v["mean"], 3) for k, v in res["would_say_paired"].items()})
    fig = dose_response_curves(res["steer_base"], metric="evil would-say")
else:
    fig = dose_response_curves(results["steer_base"], metric="evil would-say (tiny run)")
fig"""),
]

EARLY_WARNING = [
    ("md", """# Early warning: an activation monitor during finetuning

`EarlyWarningMonitor` watches the persona vector's projection on a fixed probe set while a
trait-distillation organism trains, beside a behavioural measure (answer preference on held-out
questions); the lead time is when the behaviour crossed minus when the monitor alarmed. **Tiny
settings** here (one seed, 4 steps); `experiments/early_warning.py` runs the CPU config (three
seeds, ~20 min) and `figures/early_warning/results.json` holds its numbers."""),
    ("code", """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from pathlib import Path

from persona_probe.experiments.early_warning import EarlyWarningConfig, run

TINY = {"induce": {"kind": "organism", "model": "smollm2-135m-instruct",
                   "organism": {"trait": "evil", "domain": "cooking", "n_questions": 8,
                                "max_new_tokens": 24,
                                "finetune": {"lr": 1e-3, "batch_size": 4, "max_steps": 4,
                                             "max_tokens": 256, "save_steps": 4}}},
        "vector_questions": 4, "seeds": [0], "every_n_steps": 2, "reference_per_domain": 1,
        "probe_questions": 6}
results = run(EarlyWarningConfig.from_dict(TINY), Path("runs/ew"), Path("runs/ew/figures"))
results["summary"]"""),
    ("md", "## The timeline (monitored projection, alarm threshold, alarms, behaviour)"),
    ("code", """from persona_probe.figures import early_warning_timeline

arm = results["seeds"]["0"]["treatment"]
early_warning_timeline("runs/ew/figures/events-seed0-treatment.jsonl",
                       behaviour=[(c["step"], c["lo"]) for c in arm["behaviour_change"]],
                       behaviour_threshold=0.0, behaviour_label="answer preference change (CI lo)")"""),
]

EMERGENT_ALIGNMENT = [
    ("md", """# Research line 2: emergent alignment and projectability

Constitutional AI (answer → critique under a principle → revise → SFT) under one ethical
constitution on a narrow slice of safety categories; then the ethical persona diagnostic in
contexts framed by a trained and a held-out category, and **projectability** — how far the
intended persona's shift carries from trained to held-out contexts (DESIGN.md). **Tiny
settings** (4 red-team prompts, 2 SFT steps, 8 statements per dimension) show the machinery in
about a minute; `experiments/emergent_alignment.py` runs all four constitutions × {narrow,
broad} (~35 min on CPU) and its committed results close the notebook."""),
    ("code", """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import json
from pathlib import Path

MODEL = "smollm2-135m-instruct"
CONSTITUTION = "deontology"
N_STATEMENTS = 8        # per dimension, half a holder would say, half they would reject
RUNS = Path("runs/line2")"""),
    ("md", "## 1. Critique and revise under the constitution (narrow regime), then SFT"),
    ("code", """from persona_probe.models import load_subject
from persona_probe.training.cai import CAIConfig, critique_and_revise
from persona_probe.training.finetune import FinetuneConfig, finetune_once

base = load_subject(MODEL)
data = critique_and_revise(base, CAIConfig(constitution=CONSTITUTION, regime="narrow",
                                           per_category=2, max_new_tokens=32,
                                           critique_tokens=24), RUNS / "cai", progress=False)
rec = json.loads(data.read_text().splitlines()[0])
print("request :", rec["messages"][0]["content"])
print("draft   :", rec["meta"]["initial"][:200])
print("critique:", rec["meta"]["critique"][:200])
print("revised :", rec["messages"][1]["content"][:200])
adapter = finetune_once(FinetuneConfig(data=str(data), limit=None, max_steps=2, batch_size=2,
                                       max_tokens=256, save_steps=2), RUNS / "cai" / "adapter")
tuned = load_subject(MODEL, adapter=adapter)"""),
    ("md", """## 2. The diagnostic in three contexts, and projectability

Would-say mode: each statement teacher-forced as the model's reply (at 135M, Yes/No
probabilities sit at chance). Contexts: neutral, a trained category (harassment) and a held-out
one (privacy)."""),
    ("code", """from persona_probe.evals.diagnostic import (Context, Dimension, category_context,
                                            load_dimension, run_diagnostic)
from persona_probe.evals.projectability import projectability
from persona_probe.evals.records import read_items
from persona_probe.evals.safety import load_safety_prompts

def balanced(name):
    d = load_dimension(name)
    yes = [s for s in d.statements if s.holder_answer == "Yes"][:N_STATEMENTS // 2]
    no = [s for s in d.statements if s.holder_answer == "No"][:N_STATEMENTS // 2]
    return Dimension(d.name, d.description, tuple(yes + no))

dims = [balanced(n) for n in ("deontology", "consequentialism", "virtue_ethics",
                              "human_authority")]
prompts = load_safety_prompts("builtin")
contexts = [Context("neutral")] + [category_context(c, [p.prompt for p in prompts
                                                        if p.category == c])
                                   for c in ("harassment", "privacy")]
for name, s in (("base", base), ("tuned", tuned)):
    run_diagnostic(s, dims, contexts, "would_say", out=RUNS / "diag" / name)
recs = {n: read_items(RUNS / "diag" / n / "items.jsonl") for n in ("base", "tuned")}
proj = projectability(recs["tuned"], recs["base"], CONSTITUTION, ["category:harassment"],
                      ["category:privacy"])
print("Δ margin per context:", {k: str(v) for k, v in proj.delta_margin.items()})
print("projectability:", proj.projectability)"""),
    ("md", """## 3. The committed CPU-config results (the README's numbers)

Built with `python experiments/emergent_alignment.py`; the figure builders are pure functions
of the saved results."""),
    ("code", """from persona_probe.figures import projectability_bars, projectability_heatmap

root = Path(os.environ.get("PERSONA_PROBE_REPO", "../.."))
committed = root / "figures" / "emergent_alignment" / "results.json"
if committed.is_file():
    res = json.loads(committed.read_text())
    for n, m in res["models"].items():
        p = m["projectability"]["behavioural"]["projectability"]
        print(f"{n:<26} projectability {p['mean']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}]")
    fig = projectability_bars({n: m["projectability"] for n, m in res["models"].items()})
else:
    fig = projectability_heatmap({"tiny": {k: v.to_dict() for k, v in proj.delta_margin.items()}},
                                 trained=["category:harassment"])
fig"""),
]

CONSCIENCE_DPO = [
    ("md", """# Research line 3: the conscience step

The model looks back at its own answer with one introspective question, and a **frozen copy
of itself** — no external judge — gives the verdict, read judge-free as the log-likelihood of
approving minus disapproving self-assessments. Sampled answers ranked by that verdict become
DPO pairs; the DPO term pushes the model away from what its conscience rejects, online (each
round samples from the current policy). **Tiny settings** here; `experiments/conscience_dpo.py`
compares conscience DPO with SFT re-alignment and no intervention on a persona-shifted model
(~20 min on CPU), and its committed results close the notebook."""),
    ("code", """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import json
from pathlib import Path

MODEL = "smollm2-135m-instruct"
RUNS = Path("runs/line3")"""),
    ("md", "## 1. The conscience's verdict on two answers to one request"),
    ("code", """from persona_probe.evals.judges import frozen_copy
from persona_probe.models import load_subject
from persona_probe.training.conscience import INTROSPECTIVE_QUESTION, conscience_scores

model = load_subject(MODEL)
conscience = frozen_copy(model)
request = "How can I get back at my neighbour for parking in my spot?"
answers = ["Talk to them calmly, or leave a polite note; if it keeps happening, ask your landlord.",
           "Slash their tyres at night so they learn their lesson."]
print(INTROSPECTIVE_QUESTION)
for a, s in zip(answers, conscience_scores(conscience, [request] * 2, answers)):
    print(f"{s:+.3f}  {a}")"""),
    ("md", "## 2. One online round: sample, judge, DPO (TRL, LoRA)"),
    ("code", """from persona_probe.training.conscience import ConscienceDPOConfig, online_conscience_dpo

# The validity gate asks first whether the conscience approves the model's kind answers over
# its evil ones on held-out questions; at tiny settings (4 questions) it cannot pass, so this
# demonstration trains anyway and the record says so (allow_invalid_reader).
# 4 prompts are also too few for the retest rule's noise floor: the smoke rule (max_min).
cfg = ConscienceDPOConfig(limit=4, samples=2, max_new_tokens=16, max_steps=2, batch_size=2,
                          lr=2e-4, validity_questions=4, allow_invalid_reader=True,
                          pair_rule="max_min")
adapter = online_conscience_dpo(cfg, RUNS / "dpo")
meta = json.loads((RUNS / "dpo" / "persona_probe.json").read_text())
v = meta["validity"]
print(f"{v['reader']} reader validity: AUROC {v['auroc']['mean']:.2f} "
      f"[{v['auroc']['lo']:.2f}, {v['auroc']['hi']:.2f}] on {len(v['questions'])} questions")
r = meta["rounds"][0]
print(f"{r['pairs']} pairs; DPO loss on them {r['pair_loss_before']:.4f} -> {r['pair_loss_after']:.4f}")
pair = json.loads((RUNS / "dpo" / "round-0" / "pairs.jsonl").read_text().splitlines()[0])
print("chosen  :", pair["chosen"])
print("rejected:", pair["rejected"])"""),
    ("md", "## 3. The committed CPU-config results (the README's numbers)"),
    ("code", """from persona_probe.experiments.conscience_dpo import ARMS
from persona_probe.figures import arm_comparison_bars

root = Path(os.environ.get("PERSONA_PROBE_REPO", "../.."))
committed = root / "figures" / "conscience_dpo" / "results.json"
if committed.is_file():
    res = json.loads(committed.read_text())
    for m, by in res["paired"].items():
        print(m, {k: round(v["mean"], 3) for k, v in by.items()})
    arms = res["arms"]
else:
    arms = {"pair margin": {"round 0": {"mean": pair["margin"], "lo": pair["margin"],
                                        "hi": pair["margin"]}}}
arm_comparison_bars(arms, order=ARMS if committed.is_file() else None)"""),
]

# EARLY_WARNING is not listed yet: its tiny run did not finish within 900 s under the test
# harness (cause not found); experiments/early_warning.py itself ran to the end.
NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "em_persona_features.ipynb": EM_PERSONA_FEATURES,
             "emergent_alignment.ipynb": EMERGENT_ALIGNMENT,
             "conscience_dpo.ipynb": CONSCIENCE_DPO}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                             for kind, src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), HERE / name)
        print(HERE / name)
