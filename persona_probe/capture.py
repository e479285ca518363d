"""Capture residual activations of a subject over a prompt set into an ActivationStore.

Batches are bucketed by length (right padding, attention-masked), the forward pass stops after
the deepest hook point needed (the LM head never runs), only the requested positions are
copied out, and padding and special tokens are never stored. The batch plan is fixed by the
inputs, so a killed capture resumes to a byte-identical store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from persona_probe import distributed
from persona_probe.artifacts import write_json
from persona_probe.batching import pad_batch, plan_batches
from persona_probe.chat import EncodedChat
from persona_probe.errors import PersonaProbeError, PromptSetError
from persona_probe.hooks import HookPoint, parse_hook, residual_hooks
from persona_probe.models import Subject, parse_dtype
from persona_probe.prompts import PromptItem, check_items
from persona_probe.provenance import provenance
from persona_probe.store import ActivationStore, ActivationStoreWriter

Positions = Literal["all", "prompt_last", "response", "response_mean"]
POSITIONS: tuple[str, ...] = ("all", "prompt_last", "response", "response_mean")


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture and how; every field is recorded in the store's metadata."""

    hooks: tuple[str, ...] = ("blocks.15.hook_resid_post",)  # TransformerLens residual hooks read
    positions: Positions = "response"           # all | prompt_last | response | response_mean
                                                # (see docs/DESIGN.md)
    storage_dtype: str = "float16"              # float16 | bfloat16 | float32, on disk
    batch_size: int = 16                        # most chats in one forward pass
    # most padded tokens in one forward pass (bounds memory on long chats)
    max_batch_tokens: int = 8192
    max_tokens: int | None = None               # longest chat allowed (None: model's context)
    on_overflow: Literal["error", "truncate"] = "error"  # a chat over max_tokens: error|truncate
    shard_rows: int = 16384                     # rows per shard file (resumes restart at one)
    include_special: bool = False               # keep special tokens (BOS, turn markers) under
                                                # positions='all'

    def __post_init__(self) -> None:
        if not self.hooks:
            raise PersonaProbeError("give at least one hook point (e.g. blocks.15.hook_resid_post)")
        for h in self.hooks:
            parse_hook(h)
        if self.positions not in POSITIONS:
            raise PersonaProbeError(f"unknown positions {self.positions!r}; use one of "
                                    f"{', '.join(POSITIONS)}")
        if self.on_overflow not in ("error", "truncate"):
            raise PersonaProbeError("on_overflow must be 'error' or 'truncate'")
        if self.batch_size < 1 or self.max_batch_tokens < 1 or self.shard_rows < 1:
            raise PersonaProbeError("batch_size, max_batch_tokens and shard_rows must be >= 1")
        parse_dtype(self.storage_dtype)


@dataclass(frozen=True)
class _Planned:
    """One encoded item and the token positions it contributes rows from."""

    item: int
    enc: EncodedChat
    positions: list[int]
    mean: bool

    @property
    def rows(self) -> int:
        return 1 if self.mean else len(self.positions)


def select_positions(enc: EncodedChat, positions: str, special_ids: set[int],
                     include_special: bool) -> list[int]:
    """Token positions of one chat that a position mode reads (before any averaging)."""
    if positions == "all":
        return [t for t, tok in enumerate(enc.input_ids)
                if include_special or tok not in special_ids]
    if positions == "prompt_last":
        return [enc.prompt_last]
    return list(range(enc.response_start, enc.response_end))


class _StopForward(Exception):
    """Raised by the last hook to end the forward pass early."""


def _stop_forward(_resid: torch.Tensor) -> None:
    """Residual hook that ends the forward pass (caught by the caller)."""
    raise _StopForward


def _fingerprint(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _plan(subject: Subject, items: list[PromptItem], config: CaptureConfig,
          mean: bool | None = None) -> tuple[list[HookPoint], list[_Planned]]:
    """Encode every item and choose its positions; errors name the item."""
    hps = sorted({parse_hook(h, subject.n_layers) for h in config.hooks})
    mean = config.positions == "response_mean" if mean is None else mean
    special = set(subject.tokenizer.all_special_ids)
    planned = []
    for i, item in enumerate(items):
        try:
            enc = subject.encode_chat(item.messages, config.max_tokens, config.on_overflow)
        except PromptSetError as exc:
            raise PromptSetError(f"item {item.id!r}: {exc}") from None
        pos = select_positions(enc, config.positions, special, config.include_special)
        if config.positions.startswith("response") and not enc.has_response:
            raise PromptSetError(
                f"item {item.id!r} has no assistant response, so positions="
                f"{config.positions!r} has nothing to read; generate responses first "
                "(--generate N) or use positions prompt_last or all")
        planned.append(_Planned(i, enc, pos, mean))
    return hps, planned


def _stop_point(hps: list[HookPoint]) -> HookPoint:
    depth = max(hp.depth for hp in hps)
    return HookPoint(depth - 1, "post") if depth > 0 else HookPoint(0, "pre")


def mean_activations(subject: Subject, items: list[PromptItem], hooks: list[str] | tuple[str, ...],
                     positions: Positions = "response", batch_size: int = 16,
                     max_tokens: int | None = None,
                     on_overflow: Literal["error", "truncate"] = "error") -> torch.Tensor:
    """Per-item mean residual over ``positions`` at each hook, in memory: (items, hooks, d)
    float32, hooks in the order given. For persona vectors and probe sets, where a store on disk
    would be overhead. ``on_overflow='truncate'`` keeps the first ``max_tokens`` of a longer
    chat (see ``Subject.encode_chat``)."""
    check_items(items)
    pos = "response" if positions == "response_mean" else positions
    config = CaptureConfig(hooks=tuple(hooks), positions=pos, batch_size=batch_size,
                           max_tokens=max_tokens, storage_dtype="float32",
                           on_overflow=on_overflow)
    hps, planned = _plan(subject, items, config, mean=True)
    out = torch.zeros((len(items), len(hooks), subject.d_model), dtype=torch.float32)
    for batch in plan_batches([len(p.enc) for p in planned], batch_size,
                              config.max_batch_tokens):
        acts, _ = _run_batch(subject, [planned[i] for i in batch], hps, _stop_point(hps),
                             subject.tokenizer.pad_token_id, torch.float32, True)
        for j, h in enumerate(hooks):
            out[batch, j] = acts[parse_hook(h, subject.n_layers).name]
    return out


def collect_rows(subject: Subject, items: list[PromptItem], hooks: list[str] | tuple[str, ...],
                 positions: Positions = "all", batch_size: int = 16,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The rows ``capture`` would store, in memory (float32): residuals per hook name and the
    index (item, position, role, token_id). For eval-sized prompt sets."""
    check_items(items)
    config = CaptureConfig(hooks=tuple(hooks), positions=positions, batch_size=batch_size,
                           storage_dtype="float32")
    hps, planned = _plan(subject, items, config)
    acts: dict[str, list[torch.Tensor]] = {hp.name: [] for hp in hps}
    index: dict[str, list[torch.Tensor]] = {}
    for batch in plan_batches([len(p.enc) for p in planned], batch_size,
                              config.max_batch_tokens):
        a, idx = _run_batch(subject, [planned[i] for i in batch], hps, _stop_point(hps),
                            subject.tokenizer.pad_token_id, torch.float32,
                            positions == "response_mean")
        for name, rows in a.items():
            acts[name].append(rows)
        for k, v in idx.items():
            index.setdefault(k, []).append(v)
    return ({n: torch.cat(v) for n, v in acts.items()},
            {k: torch.cat(v) for k, v in index.items()})


def capture(subject: Subject, items: list[PromptItem], out: str | Path,
            config: CaptureConfig = CaptureConfig(), resume: bool = False,
            overwrite: bool = False, progress: bool = True, seed: int | None = None,
            ) -> ActivationStore:
    """Run ``subject`` over ``items`` and write the residuals at ``config.hooks`` to ``out``.

    Under torchrun (an initialised process group) the batches are split into contiguous,
    equally costly ranges, one per rank; each rank writes its own store under ``out/ranks/``
    and rank 0 merges them into ``out`` (hard links, one index). The rows, their order and the
    store's fingerprint are those of a single-process capture."""
    check_items(items)
    hps, planned = _plan(subject, items, config)
    hook_names = [hp.name for hp in hps]
    store_dtype = parse_dtype(config.storage_dtype)
    batches = plan_batches([len(p.enc) for p in planned], config.batch_size,
                           config.max_batch_tokens)
    meta = {
        "model": subject.provenance(), "positions": config.positions,
        "storage_dtype": str(store_dtype).removeprefix("torch."), "config": asdict(config),
        "n_items": len(items),
    }
    meta["fingerprint"] = _fingerprint({**meta, "tokens": [p.enc.input_ids for p in planned],
                                        "batches": batches})
    meta["provenance"] = provenance(seed)
    item_records = [{"id": it.id, "category": it.category, "subcategory": it.subcategory,
                     "messages": it.messages} for it in items]
    ids = [it.id for it in items]
    run = _BatchRunner(subject, planned, hps, store_dtype, config.positions == "response_mean")
    total_rows = sum(p.rows for p in planned)
    d = distributed.info()
    if not d.active:
        writer = ActivationStoreWriter(out, meta, ids, hook_names, subject.d_model,
                                       config.shard_rows, resume, overwrite)
        write_json(Path(out) / "chats.json", item_records)
        if writer.complete:
            return ActivationStore(out)
        run.write(batches, writer, progress)
        return writer.finalize({"n_rows": total_rows})
    return _capture_ranks(run, batches, Path(out), meta, ids, item_records, config, resume,
                          overwrite, progress, total_rows)


RANKS_DIR = "ranks"


def _capture_ranks(run: _BatchRunner, batches: list[list[int]], out: Path, meta: dict,
                   ids: list[str], item_records: list[dict], config: CaptureConfig,
                   resume: bool, overwrite: bool, progress: bool, total_rows: int,
                   ) -> ActivationStore:
    """Distributed capture: rank 0 opens (or resumes) the store, every rank captures its range
    of batches into ``out/ranks/RANK`` (each resumable on its own), rank 0 merges them."""
    d = distributed.info()
    writer, error, complete = None, None, False
    if d.is_main:
        try:
            writer = ActivationStoreWriter(out, meta, ids, run.hook_names, run.subject.d_model,
                                           config.shard_rows, resume, overwrite)
            write_json(out / "chats.json", item_records)
            complete = writer.complete
        except PersonaProbeError as exc:
            error = exc
    distributed.raise_if_any(error)
    if distributed.broadcast(complete):
        distributed.barrier()
        return ActivationStore(out)
    costs = [sum(len(run.planned[i].enc) for i in b) for b in batches]
    lo, hi = distributed.balanced_ranges(costs, d.world_size)[d.rank]
    rank_meta = {**meta, "rank": d.rank, "world_size": d.world_size, "batch_range": [lo, hi],
                 "fingerprint": _fingerprint([meta["fingerprint"], d.rank, d.world_size, lo,
                                              hi])}
    try:
        sub = ActivationStoreWriter(out / RANKS_DIR / f"{d.rank:05d}", rank_meta, ids,
                                    run.hook_names, run.subject.d_model, config.shard_rows,
                                    resume=True)
        if not sub.complete:
            run.write(batches[lo:hi], sub, progress and d.is_main)
            sub.finalize()
    except PersonaProbeError as exc:
        error = exc
    distributed.raise_if_any(error)
    if d.is_main:
        assert writer is not None
        writer.truncate(0)   # a merge killed half-way starts again from the rank stores
        for r in range(d.world_size):
            writer.adopt(ActivationStore(out / RANKS_DIR / f"{r:05d}", verify="none"))
        writer.finalize({"n_rows": total_rows, "world_size": d.world_size})
        shutil.rmtree(out / RANKS_DIR, ignore_errors=True)
    distributed.barrier()
    return ActivationStore(out)


class _BatchRunner:
    """The capture loop over a fixed batch plan, skipping rows a resumed writer already has."""

    def __init__(self, subject: Subject, planned: list[_Planned], hps: list[HookPoint],
                 store_dtype: torch.dtype, mean: bool):
        self.subject, self.planned, self.hps = subject, planned, hps
        self.store_dtype, self.mean = store_dtype, mean
        self.hook_names = [hp.name for hp in hps]

    def write(self, batches: list[list[int]], writer: ActivationStoreWriter,
              progress: bool) -> None:
        skip = writer.rows_committed
        total = sum(self.planned[i].rows for b in batches for i in b)
        bar = tqdm(total=total, initial=skip, desc="capture", unit="row", disable=not progress)
        done, pad, stop = 0, self.subject.tokenizer.pad_token_id, _stop_point(self.hps)
        for batch in batches:
            rows = sum(self.planned[i].rows for i in batch)
            if done + rows <= skip:
                done += rows
                continue
            acts, index = _run_batch(self.subject, [self.planned[i] for i in batch], self.hps,
                                     stop, pad, self.store_dtype, self.mean)
            drop = max(0, skip - done)
            writer.append({h: a[drop:] for h, a in acts.items()},
                          {k: v[drop:] for k, v in index.items()})
            done += rows
            bar.update(rows - drop)
        bar.close()


@torch.no_grad()
def _run_batch(subject: Subject, batch: list[_Planned], hps: list[HookPoint],
               stop_point: HookPoint, pad: int, store_dtype: torch.dtype, mean: bool,
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    input_ids, mask = pad_batch([p.enc.input_ids for p in batch], pad)
    b_idx = torch.tensor([r for r, p in enumerate(batch) for _ in p.positions], dtype=torch.long)
    t_idx = torch.tensor([t for p in batch for t in p.positions], dtype=torch.long)
    dev = subject.device
    b_dev, t_dev = b_idx.to(dev), t_idx.to(dev)
    acts: dict[str, torch.Tensor] = {}

    def reader(name: str):
        def fn(resid: torch.Tensor) -> None:
            sel = resid[b_dev, t_dev]
            if mean:  # average over each item's response tokens in float32, then cast
                sums = torch.zeros((len(batch), resid.shape[-1]), dtype=torch.float32, device=dev)
                sums.index_add_(0, b_dev, sel.float())
                counts = torch.bincount(b_dev, minlength=len(batch)).clamp_min(1)
                sel = sums / counts[:, None]
            acts[name] = sel.to(store_dtype).cpu()
        return fn

    fns = [(hp, reader(hp.name)) for hp in hps] + [(stop_point, _stop_forward)]
    with residual_hooks(subject.model, fns):
        try:
            subject.model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev),
                          use_cache=False)
        except _StopForward:
            pass
    if mean:
        index = {"item": torch.tensor([p.item for p in batch]),
                 "position": torch.full((len(batch),), -1), "role": torch.full((len(batch),), 2),
                 "token_id": torch.full((len(batch),), -1)}
    else:
        index = {"item": torch.tensor([p.item for p in batch for _ in p.positions]),
                 "position": t_idx,
                 "role": torch.tensor([p.enc.roles[t] for p in batch for t in p.positions]),
                 "token_id": input_ids[b_idx, t_idx]}
    return acts, {k: v.to(torch.int64) for k, v in index.items()}
