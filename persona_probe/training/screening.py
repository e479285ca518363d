"""Training-data screening: which samples would push the model along a persona direction?

For each training chat, the mean activation over its response tokens is projected on the
persona vector û at layer L, and the same is done for the base model's own greedy reply to the
same prompt. The score is the difference: how much further along û the training response sits
than what the model would have said anyway (the persona-vectors paper's projection difference).
High scores are flagged; the flagged chats are exported as a dataset to inspect or drop.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from persona_probe.artifacts import atomic_write
from persona_probe.capture import mean_activations
from persona_probe.directions import Direction
from persona_probe.errors import PersonaProbeError
from persona_probe.evals.records import write_summary
from persona_probe.generation import generate_responses
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem
from persona_probe.training.data import Chat


def _split(chat: Chat) -> tuple[list[dict], str]:
    last = max(i for i, m in enumerate(chat.messages) if m["role"] == "assistant")
    return chat.messages[:last], chat.messages[last]["content"]


def screen(subject: Subject, direction: Direction, chats: list[Chat], layer: int | None = None,
           top_fraction: float = 0.1, max_new_tokens: int = 64, batch_size: int = 16,
           out: str | Path | None = None) -> list[dict]:
    """Rows sorted by score (descending), each with ``flagged`` for the top fraction."""
    layer = layer if layer is not None else direction.layers[len(direction.layers) // 2]
    if layer not in direction.layers:
        raise PersonaProbeError(f"direction {direction.name} has no vector at layer {layer}; "
                                f"it has {direction.layers}")
    if not 0 < top_fraction <= 1:
        raise PersonaProbeError("top_fraction must be in (0, 1]")
    hook = f"blocks.{layer}.hook_resid_post"
    unit = direction.at(layer).float()
    data_items, prompts = [], []
    for i, c in enumerate(chats):
        prefix, reply = _split(c)
        data_items.append(PromptItem(f"s{i}", [*prefix, {"role": "assistant", "content": reply}]))
        prompts.append(PromptItem(f"s{i}", prefix))
    proj_data = (mean_activations(subject, data_items, [hook], "response", batch_size)[:, 0]
                 @ unit).numpy()
    own = {it.id: it for it in generate_responses(subject, prompts, max_new_tokens, batch_size,
                                                  progress=False)}
    kept = [it for it in prompts if it.id in own]
    proj_base = np.full(len(chats), np.nan)
    if kept:
        acts = mean_activations(subject, [own[it.id] for it in kept], [hook], "response",
                                batch_size)[:, 0]
        for it, v in zip(kept, (acts @ unit).numpy()):
            proj_base[int(it.id[1:])] = v
    rows = [{"where": c.where, "score": float(d - b), "proj_data": float(d),
             "proj_base": float(b), "base_reply": own[f"s{i}"].messages[-1]["content"]
             if f"s{i}" in own else None}
            for i, (c, d, b) in enumerate(zip(chats, proj_data, proj_base))]
    order = sorted(range(len(rows)), key=lambda i: -np.nan_to_num(rows[i]["score"], nan=-1e9))
    n_flag = max(1, int(round(top_fraction * len(rows))))
    ranked = []
    for rank, i in enumerate(order):
        ranked.append({**rows[i], "rank": rank, "flagged": rank < n_flag})
    if out is not None:
        out = Path(out)
        text = "".join(json.dumps(r) + "\n" for r in ranked)
        atomic_write(out / "scores.jsonl", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        flagged = "".join(json.dumps({"messages": chats[i].messages, "source": chats[i].where})
                          + "\n" for i in order[:n_flag])
        atomic_write(out / "flagged.jsonl", lambda tmp: tmp.write_text(flagged, "utf-8"))
        write_summary(out, {"direction": direction.name, "layer": layer, "n": len(rows),
                            "flagged": n_flag, "top_fraction": top_fraction,
                            "model": subject.provenance(),
                            "score_mean": float(np.nanmean([r["score"] for r in rows]))})
    return ranked
