"""Trainer callbacks that measure the model while it trains.

``PeriodicMetric`` evaluates any metric of the model being trained every N optimizer steps
(the re-alignment curve: misalignment after 0, 10, 20, 30 steps of SFT on good data) and
appends one JSON line per evaluation, so a curve survives a killed run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from persona_probe.models import Subject
from persona_probe.stats import bootstrap


def training_subject(base: Subject, model: torch.nn.Module) -> Subject:
    """A Subject view of the model under training (peft wrapper included), sharing the base's
    tokenizer and provenance, for metrics computed mid-training."""
    return Subject(model=model, tokenizer=base.tokenizer, spec=base.spec,
                   revision=base.revision, adapter="(training)", extra=base.extra)


def periodic_metric(base: Subject, metric: Callable[[Subject], Sequence[float]], every: int,
                    path: str | Path, name: str = "metric", at_start: bool = True):
    """A TrainerCallback: per-item values of ``metric`` every ``every`` steps (and at step 0),
    with a bootstrap CI, appended to ``path``."""
    from transformers import TrainerCallback

    path = Path(path)

    def record(model: torch.nn.Module, step: int) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            values = [float(v) for v in metric(training_subject(base, model))]
        if was_training:
            model.train()
        est = bootstrap(np.array(values))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "metric": name, **est.to_dict(),
                                 "values": values}) + "\n")

    class PeriodicMetric(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            if at_start and state.global_step == 0:
                record(model, 0)

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every == 0:
                record(model, state.global_step)

    return PeriodicMetric()
