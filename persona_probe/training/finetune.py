"""Supervised finetuning on chat data: LoRA (peft) or full, transformers' Trainer, an
assistant-only loss, resumable checkpoints, and optional interventions during training.

The output directory is what ``load_subject(base, adapter=OUT)`` loads (a peft adapter; for
``method="full"`` a complete checkpoint, loaded as ``load_subject(OUT)``), plus
``persona_probe.json`` (config, data file and sha256, base model, steps, final loss,
provenance) and ``training_log.jsonl``. ``persona_probe.json`` is written last: its presence
means the run finished.

Interventions during finetuning (the preventative-steering line of work): ``steer_direction``
adds α·r̄_L·û in every training forward pass; ``ablate_direction`` projects the direction out.
Both are removed at inference — the saved adapter carries no hooks.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from persona_probe import distributed
from persona_probe.artifacts import changed_keys, sha256_file, write_json
from persona_probe.configs import config_from_dict, read_json_config
from persona_probe.errors import PersonaProbeError
from persona_probe.models import DEFAULT_MODEL, Subject, load_subject
from persona_probe.provenance import provenance
from persona_probe.training.data import IGNORE, load_chats, resolve_data_path, tokenize_chat
from persona_probe.training.settings import LoRASettings, check_training_settings


class FinetuneError(PersonaProbeError):
    """A finetuning configuration or output directory that cannot be used as given."""


@dataclass
class FinetuneConfig:
    data: str                                   # JSON-lines chats; a path or shared:REL
    model: str = DEFAULT_MODEL                  # a built-in name, HF id or local checkpoint
    adapter: str | None = None                  # continue training this adapter (re-alignment)
    # adapters merged into the model, in order, before a new LoRA is trained on top (e.g. the
    # helpful-only start of line 2); load the result as load_subject(model, [*these, OUT])
    start_adapters: list[str] | None = None
    method: str = "lora"                        # lora | full
    lora_r: int = 16                            # LoRA rank
    lora_alpha: int = 32                        # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0                   # dropout on the LoRA path
    # modules LoRA wraps (peft's names; 'all-linear' for every linear)
    target_modules: str | list[str] = "all-linear"
    limit: int | None = 200                     # chats used (None: all)
    offset: int = 0                             # skip this many chats first (disjoint slices)
    max_steps: int = 40                         # optimiser steps
    batch_size: int = 4                         # chats per device step
    grad_accum: int = 1                         # steps accumulated per optimiser step
    lr: float = 2e-4                            # peak learning rate
    lr_scheduler: str = "constant_with_warmup"  # transformers scheduler name
    warmup_steps: int = 2                       # linear warm-up steps
    weight_decay: float = 0.0                   # AdamW weight decay
    max_grad_norm: float = 1.0                  # gradient clipping norm
    max_tokens: int = 1024                      # longest chat in tokens (see on_overflow)
    on_overflow: str = "error"                  # error | truncate
    save_steps: int = 10                        # checkpoint every this many steps (resumable)
    logging_steps: int = 1                      # log the loss every this many steps
    seed: int = 0                               # LoRA init, data order and sampling
    device: str = "auto"                        # auto | cpu | cuda | cuda:N | mps
    # float32 | bfloat16 | float16 (None: the model's own; bf16 autocast on CPU is ~2.5x faster)
    dtype: str | None = None
    steer_direction: str | None = None          # Direction directory (preventative steering)
    steer_alpha: float = 0.0                    # preventative steering strength (0: off)
    steer_layers: list[int] | None = None       # layers steered (None: the direction's own)
    ablate_direction: str | None = None         # Direction directory, projected out in training
    ablate_layers: list[int] | None = None      # layers ablated (None: the direction's own)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> FinetuneConfig:
        raw = read_json_config(path, "finetune config", FinetuneError)
        return cls.from_dict({**raw, **overrides}, str(path))

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise FinetuneError(f"method {self.method!r}; use 'lora' or 'full'")
        if self.method == "full" and self.adapter:
            raise FinetuneError("'adapter' continues a LoRA run; with method 'full' pass the "
                                "checkpoint as 'model'")
        if self.start_adapters is not None and (self.method != "lora" or self.adapter):
            raise FinetuneError("'start_adapters' merges adapters under a new LoRA; it needs "
                                "method 'lora' and no 'adapter' (which continues one)")
        if self.max_steps < 1 or self.batch_size < 1 or self.save_steps < 1:
            raise FinetuneError("max_steps, batch_size and save_steps must be >= 1")
        check_training_settings(self, FinetuneError)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "finetune config") -> FinetuneConfig:
        return config_from_dict(cls, raw, where, FinetuneError, required=("data",))


def _trainable_model(subject: Subject, cfg: FinetuneConfig) -> torch.nn.Module:
    if cfg.method == "full":
        for p in subject.model.parameters():
            p.requires_grad_(True)
        return subject.model
    from peft import PeftModel, get_peft_model

    if cfg.adapter:
        if not (Path(cfg.adapter) / "adapter_config.json").is_file():
            raise FinetuneError(f"adapter {cfg.adapter} has no adapter_config.json")
        return PeftModel.from_pretrained(subject.model, cfg.adapter, is_trainable=True)
    return get_peft_model(subject.model, LoRASettings.of(cfg).peft_config())


def jsonl_log_callback(path: Path):
    """A TrainerCallback writing each log record (loss, lr, grad norm) as one JSON line."""
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and state.is_world_process_zero:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")
    return JsonlLog()


def _interventions(subject: Subject, cfg: FinetuneConfig, stack: ExitStack) -> dict:
    """Enter the training-time steering / ablation contexts; returns what was applied."""
    from persona_probe.directions import Direction
    from persona_probe.interventions import ablate, steer

    applied: dict[str, Any] = {}
    if cfg.steer_direction and cfg.steer_alpha:
        d = Direction.load(cfg.steer_direction)
        layers = cfg.steer_layers or d.layers
        stack.enter_context(steer(subject, d, cfg.steer_alpha, layers))
        applied["steer"] = {"direction": d.name, "alpha": cfg.steer_alpha, "layers": layers}
    if cfg.ablate_direction:
        d = Direction.load(cfg.ablate_direction)
        layers = cfg.ablate_layers or d.layers
        stack.enter_context(ablate(subject, d, "directional", layers))
        applied["ablate"] = {"direction": d.name, "layers": layers}
    return applied


def finetune(cfg: FinetuneConfig, out: str | Path, resume: bool = False,
             overwrite: bool = False, callbacks: Sequence[Any] = (),
             subject: Subject | None = None, keep_checkpoints: bool = False) -> Path:
    """Train and save; ``resume`` continues from the last checkpoint in ``out``.

    ``callbacks`` are transformers ``TrainerCallback``s (the early-warning monitor plugs in
    here). ``subject`` reuses an already loaded base model; it is changed in place (full
    finetuning trains its weights; LoRA injects adapter layers into it), so load a fresh one
    to study the base afterwards."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    out = Path(out)
    done = out / "persona_probe.json"
    ckpt_dir = out / "checkpoints"
    if done.is_file() and not overwrite:
        raise FinetuneError(f"{out} holds a finished run; pass overwrite=True (--overwrite) "
                            "to replace it")
    has_ckpt = ckpt_dir.is_dir() and any(ckpt_dir.glob("checkpoint-*"))
    if has_ckpt and not (resume or overwrite):
        raise FinetuneError(f"{out} holds an interrupted run; pass resume=True (--resume) to "
                            "continue it or overwrite=True (--overwrite) to start again")
    # under torchrun the Trainer runs DDP itself; only rank 0 touches the output directory
    rank = distributed.init_from_env(cfg.device)
    distributed.barrier()   # every rank has read the directory's state before it changes
    if overwrite and out.exists():
        if rank.is_main:
            shutil.rmtree(out)
        has_ckpt = False
    if rank.is_main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    if subject is not None and cfg.start_adapters and subject.adapter != "+".join(
            map(str, cfg.start_adapters)):
        raise FinetuneError(f"the subject passed in carries adapter {subject.adapter!r}, not "
                            f"start_adapters {cfg.start_adapters}; load it with "
                            "load_subject(model, adapter=start_adapters) or pass no subject")
    data_path = resolve_data_path(cfg.data)
    chats = load_chats(data_path, cfg.limit, cfg.offset)
    subject = subject or load_subject(cfg.model, adapter=cfg.start_adapters,
                                      device=distributed.device_for_rank(cfg.device),
                                      dtype=cfg.dtype)
    rows = [tokenize_chat(subject, c, cfg.max_tokens, cfg.on_overflow) for c in chats]
    n_loss_tokens = sum(sum(x != IGNORE for x in r["labels"]) for r in rows)
    with ExitStack() as stack:
        applied = _interventions(subject, cfg, stack)
        from transformers import set_seed

        set_seed(cfg.seed)                # LoRA's initial A matrices come from the global RNG
        model = _trainable_model(subject, cfg)
        args = TrainingArguments(
            output_dir=str(ckpt_dir), max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr,
            lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps,
            weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
            logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2,
            seed=cfg.seed, data_seed=cfg.seed, report_to=[], dataloader_num_workers=0,
            remove_unused_columns=False, use_cpu=subject.device.type == "cpu",
            ddp_find_unused_parameters=False,   # under torchrun: every trainable weight is used
            bf16=subject.dtype == torch.bfloat16, disable_tqdm=True)
        trainer = Trainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows),
            data_collator=DataCollatorForSeq2Seq(subject.tokenizer, padding=True,
                                                 label_pad_token_id=IGNORE),
            callbacks=[jsonl_log_callback(out / "training_log.jsonl"), *callbacks])
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)     # the JSON-lines log replaces stdout dicts
        result = trainer.train(resume_from_checkpoint=True if has_ckpt else None)
    if not rank.is_main:
        distributed.barrier()   # wait for rank 0 to write the result
        return out
    model.save_pretrained(out, safe_serialization=True)
    if cfg.method == "full":
        subject.tokenizer.save_pretrained(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    write_json(done, {
        "config": asdict(cfg), "base_model": subject.provenance(),
        "data": {"path": str(data_path), "sha256": sha256_file(data_path), "chats": len(rows),
                 "first": chats[0].where, "last": chats[-1].where,
                 "loss_tokens": n_loss_tokens},
        "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "world_size": rank.world_size,
        "first_loss": losses[0] if losses else math.nan,
        "final_loss": losses[-1] if losses else math.nan,
        "interventions_during_training": applied, "provenance": provenance(cfg.seed)})
    if not keep_checkpoints:  # optimizer states are only needed to resume an unfinished run
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    distributed.barrier()
    return out


def changed_fields(recorded: dict[str, Any], cfg: Any) -> list[str]:
    """The fields of ``cfg`` (a dataclass) that differ from a recorded ``asdict`` of a config
    of the same class, in field order (``artifacts.changed_keys`` over the fields). A field the
    record lacks (added to the class later) counts only when it is not at its default, so
    records written before a new field still match."""
    import dataclasses

    fields = dataclasses.fields(cfg)
    # a field the record lacks is compared as if recorded at its default
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING
                         else f.default_factory() if f.default_factory is not dataclasses.MISSING
                         else None)
                for f in fields if f.name not in recorded}
    changed = set(changed_keys({**recorded, **defaults}, asdict(cfg),
                               keys=[f.name for f in fields]))
    return [f.name for f in fields if f.name in changed]


def finetune_once(cfg: FinetuneConfig, out: str | Path, **kw: Any) -> Path:
    """``out`` as is when it holds a finished run of the same config and data (by sha256),
    else train (resuming an interrupted one): the step experiments repeat when they are run
    again after a kill. A finished run of another config or data is refused (never silently
    reused)."""
    out = Path(out)
    done = out / "persona_probe.json"
    if done.is_file():
        rec = json.loads(done.read_text(encoding="utf-8"))
        # the data by content, not by path (a moved runs directory still matches)
        changed = [k for k in changed_fields(rec["config"], cfg) if k != "data"]
        if sha256_file(resolve_data_path(cfg.data)) != rec["data"]["sha256"]:
            changed.append("data (sha256)")
        if changed:
            raise FinetuneError(f"{out} holds a finished finetune of another config (it "
                                f"differs in: {', '.join(changed)}); choose another directory, "
                                "or delete it (finetune(..., overwrite=True)) to retrain")
        return out
    return finetune(cfg, out, resume=(out / "checkpoints").is_dir(), **kw)
