"""DPO on (prompt, chosen, rejected) pairs with TRL, LoRA over an optionally merged start.

One trainer for every preference method in the toolkit: conscience DPO (pairs the frozen
conscience chose) and distillation by preference (chosen = the constitution-prompted answer,
rejected = the model's unprompted one). The output directory is a PEFT adapter plus
``training_log.jsonl`` and ``persona_probe.json`` (written last: its presence means done).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from persona_probe.artifacts import changed_keys, write_json
from persona_probe.configs import config_from_dict
from persona_probe.errors import PersonaProbeError
from persona_probe.models import load_subject
from persona_probe.provenance import provenance
from persona_probe.training.settings import LoRASettings, check_training_settings


class DPOError(PersonaProbeError):
    """DPO settings or pairs that cannot be used as given."""


@dataclass
class DPOSettings:
    beta: float = 0.1          # DPO temperature on the log-ratio margin
    lr: float = 5e-5           # peak learning rate
    max_steps: int = 8         # optimiser steps
    batch_size: int = 4        # pairs per step
    lora_r: int = 16           # LoRA rank (a new adapter; ignored when continuing one)
    lora_alpha: int = 32       # LoRA scaling numerator
    seed: int = 0              # LoRA init and data order

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.lr <= 0:
            raise DPOError("beta and lr must be > 0")
        if self.max_steps < 1 or self.batch_size < 1:
            raise DPOError("max_steps and batch_size must be >= 1")
        check_training_settings(self, DPOError)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "dpo settings") -> DPOSettings:
        return config_from_dict(cls, raw, where, DPOError)


def run_dpo(pairs: Sequence[dict], settings: DPOSettings, model: str,
            start_adapters: Sequence[str | Path] | str | None, out: Path,
            continue_adapter: Path | None = None) -> dict[str, Any]:
    """DPO steps on ``pairs`` (each ``{"prompt", "chosen", "rejected"}``) from ``model`` with
    ``start_adapters`` merged; continues ``continue_adapter`` if given, else trains a new LoRA.
    Saves the adapter to ``out`` and returns the log: pair loss before and after (over all
    pairs), first and final step loss, steps."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise DPOError("no preference pairs to train on")
    bad = [i for i, p in enumerate(pairs) if not all(str(p.get(k, "")).strip()
                                                    for k in ("prompt", "chosen", "rejected"))]
    if bad:
        raise DPOError(f"pairs {bad[:5]} lack a non-empty prompt, chosen or rejected")
    base = load_subject(model, adapter=start_adapters)
    set_seed(settings.seed)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}],
                               "chosen": [{"role": "assistant", "content": p["chosen"]}],
                               "rejected": [{"role": "assistant", "content": p["rejected"]}]}
                              for p in pairs])
    args = DPOConfig(output_dir=str(out / "checkpoints"), max_steps=settings.max_steps,
                     per_device_train_batch_size=settings.batch_size,
                     learning_rate=settings.lr, beta=settings.beta, logging_steps=1,
                     save_strategy="no", report_to=[], seed=settings.seed,
                     use_cpu=base.device.type == "cpu", disable_tqdm=True,
                     # TRL defaults to bf16, which is ~100x slower than fp32 on CPUs here
                     bf16=base.dtype == torch.bfloat16, fp16=False)
    if continue_adapter is not None:
        net = PeftModel.from_pretrained(base.model, str(continue_adapter), is_trainable=True)
        peft_config = None
    else:
        net = base.model
        peft_config = LoRASettings.of(settings).peft_config()
    trainer = DPOTrainer(model=net, args=args, train_dataset=data, eval_dataset=data,
                         processing_class=base.tokenizer, peft_config=peft_config)
    before = trainer.evaluate()["eval_loss"]       # DPO loss over all pairs
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    trainer.model.save_pretrained(out)
    log = [h for h in trainer.state.log_history if "loss" in h]
    with open(out / "training_log.jsonl", "w", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(h) + "\n" for h in log))
    return {"pairs": len(pairs), "steps": trainer.state.global_step,
            "pair_loss_before": before, "pair_loss_after": after,
            "first_loss": log[0]["loss"] if log else math.nan,
            "final_loss": log[-1]["loss"] if log else math.nan, "log": log,
            "base_model": base.provenance()}


def train_dpo(pairs: Sequence[dict], settings: DPOSettings, model: str,
              start_adapters: Sequence[str | Path] | str | None, out: str | Path) -> Path:
    """``run_dpo`` once: ``out`` as is when it holds a finished run (``persona_probe.json``)
    of the same settings, model, start adapters and pairs (by sha256), else trained and
    recorded with them and provenance; a finished run of other inputs is refused."""
    import hashlib

    out = Path(out)
    done = out / "persona_probe.json"
    inputs = {"settings": asdict(settings), "model": model,
              "start_adapters": [str(a) for a in (
                  [start_adapters] if isinstance(start_adapters, (str, Path))
                  else start_adapters or [])],
              "pairs_sha256": hashlib.sha256(json.dumps(
                  [[p["prompt"], p["chosen"], p["rejected"]] for p in pairs]).encode()
                  ).hexdigest()}
    if done.is_file():
        old = json.loads(done.read_text(encoding="utf-8"))
        changed = changed_keys(old, inputs, keys=inputs)  # the record holds more
        if changed:
            raise DPOError(f"{out} holds a finished DPO run of other inputs (they differ in: "
                           f"{', '.join(changed)}); choose another directory or delete it")
        return out
    out.mkdir(parents=True, exist_ok=True)
    log = run_dpo(pairs, settings, model, start_adapters, out)
    write_json(done, {**inputs, **{k: v for k, v in log.items() if k != "log"},
                      "provenance": provenance(settings.seed)})
    return out
