"""Write the generations to be labelled coherent or not, before any coherence rule is fitted.

The embedded model's own replies to the 16 ``heldout`` trait questions (not the ``evaluation``
questions the proxy-validity run reports on), sampled at temperature 1 under conditions that
span what the toolkit produces: plain, evil and kind system prompts, steering along the evil
persona vector and along random directions at several layers and α, and the evil-through-cooking
organism when its adapter is given. Rows carry ``coherent: null`` until labelled from a blind
view (``persona_probe/data/coherence/labelled_generations.jsonl``; who labelled and how: RUBRIC.md).

    python experiments/coherence_generations.py --out runs/coherence/unlabelled.jsonl \
        [--organism runs/persona_latents/organism-seed0/ft-treatment]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from persona_probe.artifacts import write_jsonl
from persona_probe.directions import persona_vector, random_direction
from persona_probe.generation import generate_responses
from persona_probe.interventions import steer
from persona_probe.models import load_subject
from persona_probe.provenance import provenance
from persona_probe.traits import load_trait, question_items, trait_questions

STEERING = [("evil", 15, a) for a in (0.2, 0.4, 0.8, 1.6)] + \
           [("evil", 20, a) for a in (0.4, 0.8, 1.6)] + [("evil", 25, 0.8)] + \
           [("random", 15, a) for a in (0.8, 1.6)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--organism", type=Path, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    subject = load_subject("smollm2-135m-instruct", device="cpu")
    trait = load_trait("evil")
    qs = trait_questions("heldout")
    items = question_items(qs, "h")
    vec = persona_vector(subject, trait, questions=trait_questions("extract")[:12])
    rows: list[dict] = []

    def add(condition: str, got: list) -> None:
        for it in got:
            rows.append({"key": f"{condition}/{it.id}", "condition": condition,
                         "question": it.messages[-2]["content"],
                         "reply": it.messages[-1]["content"], "coherent": None})

    def gen(its: list) -> list:
        return generate_responses(subject, its, args.max_new_tokens, 16, 1.0,
                                  seed=args.seed + len(rows), progress=False, keep_empty=True)

    add("plain", gen(items))
    add("system:evil", gen([it.with_system(trait.trait_system[0]) for it in items]))
    add("system:kind", gen([it.with_system(trait.anti_system[0]) for it in items]))
    for kind, layer, alpha in STEERING:
        d = vec if kind == "evil" else random_direction(subject.d_model, [layer], seed=layer)
        with steer(subject, d, alpha, [layer]):
            add(f"steer:{kind}:L{layer}:a{alpha}", gen(items))
    if args.organism is not None:
        subject = load_subject("smollm2-135m-instruct", adapter=args.organism, device="cpu")
        add("organism:evil-cooking", gen(items))
    # shuffled, so the labeller reads conditions interleaved and cannot label by position
    random.Random(args.seed).shuffle(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out, rows)
    (args.out.with_suffix(".provenance.json")).write_text(json.dumps(
        {"script": "experiments/coherence_generations.py", "args": {
            k: str(v) for k, v in vars(args).items()}, "n": len(rows),
         **provenance(args.seed)}, indent=1))
    print(f"{len(rows)} generations -> {args.out}")


if __name__ == "__main__":
    main()
