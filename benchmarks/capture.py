"""Capture throughput and memory, all methods interleaved in one process (ISSUE: Foundation).

Methods, each reading blocks.{L}.hook_resid_post at every real token:
  hf_full          raw HF forward, all layers + LM head
  hf_stopped       raw HF forward stopped after layer L (the limit for any capture)
  persona_probe    persona_probe.capture writing a full ActivationStore (fp16, positions=all)
  tl_cache         TransformerLens bridge run_with_cache(names_filter, stop_at_layer)
  nnsight          nnsight trace with .save() and tracer.stop()
Datasets: (a) fixed 16x128-token batches; (b) a realistic variable-length chat mix (HH-RLHF
transcripts, emergent-misalignment code chats, built-in prompts). Baselines see what a user
would hand them: (a) the same batches; (b) dataset-order batches of 16 (`*_naive`) and, for
reference, persona_probe's length-bucketed batches (`*_bucketed`).
Memory: peak RSS of a fresh capture process at ~10k, ~100k and ~300k tokens.

Run: .venv/bin/python benchmarks/capture.py [--rounds 3] [--dtype float32,bfloat16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from persona_probe.batching import pad_batch, plan_batches  # noqa: E402
from persona_probe.capture import CaptureConfig, _StopForward, _stop_forward, capture  # noqa: E402
from persona_probe.datasets import load_chat_jsonl, load_hh_rlhf, shared_data_dir  # noqa: E402
from persona_probe.hooks import HookPoint, residual_hooks  # noqa: E402
from persona_probe.models import load_subject  # noqa: E402
from persona_probe.prompts import PromptItem, load_builtin  # noqa: E402

LAYER = 15
HOOK = f"blocks.{LAYER}.hook_resid_post"
MEMORY_POINTS = (10_000, 100_000, 300_000)


def chat_mix(n_hh: int = 24, n_em: int = 6, n_builtin: int = 18) -> list[PromptItem]:
    data = shared_data_dir()
    if data is None:
        sys.exit("benchmarks need ../shared/data (or PERSONA_PROBE_DATA) for real chats")
    hh = load_hh_rlhf(data / "hh_rlhf/harmless_base_test.jsonl.gz", limit=n_hh)
    em = load_chat_jsonl(data / "emergent_misalignment/train/insecure.jsonl", limit=n_em)
    short = [it.with_response("I can help with that. Here is a short, careful answer.")
             for it in load_builtin("all")[::6][:n_builtin]]
    mix = hh + em + short
    g = torch.Generator().manual_seed(0)
    return [mix[i] for i in torch.randperm(len(mix), generator=g).tolist()]


def fixed_items(subject, n_seq: int = 64, seq_len: int = 128) -> list[list[int]]:
    """Real text cut into equal-length token sequences."""
    data = shared_data_dir()
    hh = load_hh_rlhf(data / "hh_rlhf/harmless_base_test.jsonl.gz", limit=400)
    stream = []
    for it in hh:
        stream += subject.encode_chat(it.messages, 10**6).input_ids
    return [stream[i * seq_len:(i + 1) * seq_len] for i in range(n_seq)]


@torch.no_grad()
def run_hf(model, batches, stop: bool) -> None:
    fns = [(HookPoint(LAYER, "post"), _stop_forward)] if stop else []
    with residual_hooks(model, fns):
        for ids, mask in batches:
            try:
                out = model(input_ids=ids, attention_mask=mask, use_cache=False)
                out.logits.sum()
            except _StopForward:
                pass


@torch.no_grad()
def run_tl(bridge, batches) -> None:
    for ids, mask in batches:
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n == HOOK,
                                         stop_at_layer=LAYER + 1, attention_mask=mask)
        cache[HOOK][mask.bool()].to(torch.float16)


@torch.no_grad()
def run_nnsight(wrapped, batches) -> None:
    for ids, mask in batches:
        with wrapped.trace({"input_ids": ids, "attention_mask": mask}) as tracer:
            out = wrapped.model.layers[LAYER].output
            saved = (out[0] if isinstance(out, tuple) else out).save()
            tracer.stop()
        saved[mask.bool()].to(torch.float16)


def run_ours(subject, items, cfg) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        capture(subject, items, Path(tmp) / "s", cfg, progress=False)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_dtype(dtype: str, device: str, rounds: int) -> list[dict]:
    from nnsight.modeling.transformers import TransformersModel
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    subject = load_subject(device=device, dtype=dtype)
    tl_model = AutoModelForCausalLM.from_pretrained(subject.model.name_or_path,
                                                    dtype=subject.dtype).to(subject.device)
    bridge = TransformerBridge.boot_transformers(subject.model.name_or_path, hf_model=tl_model,
                                                 tokenizer=subject.tokenizer,
                                                 dtype=subject.dtype, device=subject.device)
    wrapped = TransformersModel(subject.model, tokenizer=subject.tokenizer)
    pad, dev = subject.tokenizer.pad_token_id, subject.device
    cfg = CaptureConfig(hooks=(HOOK,), positions="all", storage_dtype="float16", batch_size=16,
                        max_batch_tokens=16 * 512, max_tokens=512, on_overflow="truncate",
                        include_special=True)
    results = []
    # (a) fixed 16 x 128
    seqs = fixed_items(subject)
    fixed_batches = [tuple(t.to(dev) for t in pad_batch(seqs[i:i + 16], pad))
                     for i in range(0, len(seqs), 16)]
    # (b) variable chat mix
    items = chat_mix()
    encs = [subject.encode_chat(it.messages, 512, "truncate").input_ids for it in items]
    bucketed = [tuple(t.to(dev) for t in pad_batch([encs[i] for i in b], pad))
                for b in plan_batches([len(e) for e in encs], 16, 16 * 512)]
    naive = [tuple(t.to(dev) for t in pad_batch(encs[i:i + 16], pad))
             for i in range(0, len(encs), 16)]
    tokens_fixed = sum(map(len, seqs))
    tokens_mix = sum(map(len, encs))
    # The fixed set as chats whose rendering is exactly those tokens is not possible in general,
    # so persona_probe on (a) runs its capture core on the same batches via _run_batch.
    from persona_probe.capture import _Planned, _run_batch
    from persona_probe.chat import EncodedChat

    planned = [_Planned(i, EncodedChat(s, [3] * len(s), len(s), len(s)), list(range(len(s))),
                        False) for i, s in enumerate(seqs)]

    def ours_fixed() -> None:
        from persona_probe.store import ActivationStoreWriter
        with tempfile.TemporaryDirectory() as tmp:
            w = ActivationStoreWriter(Path(tmp) / "s", {"fingerprint": "bench"},
                                      [str(i) for i in range(len(seqs))], [HOOK],
                                      subject.d_model, 16384)
            for i in range(0, len(planned), 16):
                acts, index = _run_batch(subject, planned[i:i + 16], [HookPoint(LAYER, "post")],
                                         HookPoint(LAYER, "post"), pad, torch.float16, False)
                w.append(acts, index)
            w.finalize()

    methods = {
        "fixed": (tokens_fixed, {
            "hf_full": lambda: run_hf(subject.model, fixed_batches, False),
            "hf_stopped": lambda: run_hf(subject.model, fixed_batches, True),
            "persona_probe": ours_fixed,
            "tl_cache": lambda: run_tl(bridge, fixed_batches),
            "nnsight": lambda: run_nnsight(wrapped, fixed_batches),
        }),
        "chat_mix": (tokens_mix, {
            "hf_full_naive": lambda: run_hf(subject.model, naive, False),
            "hf_stopped_bucketed": lambda: run_hf(subject.model, bucketed, True),
            "persona_probe": lambda: run_ours(subject, items, cfg),
            "tl_cache_naive": lambda: run_tl(bridge, naive),
            "tl_cache_bucketed": lambda: run_tl(bridge, bucketed),
            "nnsight_naive": lambda: run_nnsight(wrapped, naive),
        }),
    }
    for dataset, (ntok, fns) in methods.items():
        for name, fn in fns.items():  # warm-up
            print(f"[{dtype}] {dataset} warm-up {name}: {timed(fn):.1f} s", flush=True)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                times[name].append(timed(fn))
                print(f"[{dtype}] {dataset} {name}: {times[name][-1]:.1f} s", flush=True)
        for name, ts in times.items():
            results.append({"dtype": dtype, "device": str(dev), "dataset": dataset,
                            "method": name, "tokens": ntok, "median_s": statistics.median(ts),
                            "tok_per_s": ntok / statistics.median(ts), "times": ts})
    return results


def peak_memory(n_tokens: int, dtype: str, device: str) -> dict:
    """Peak RSS of a fresh process capturing about n_tokens (positions=all) to a store.

    Batches are capped at 2048 padded tokens in both runs, so peak activation memory is the same
    per batch and any growth would come from rows accumulating (there should be none)."""
    code = f"""
import os, resource, tempfile, sys
os.environ['HF_HUB_OFFLINE'] = '1'
sys.path.insert(0, {str(Path(__file__).parent)!r})
from persona_probe.capture import CaptureConfig, capture
from persona_probe.models import load_subject
from persona_probe.datasets import load_hh_rlhf, shared_data_dir
subject = load_subject(device={device!r}, dtype={dtype!r})
items = load_hh_rlhf(shared_data_dir() / 'hh_rlhf/harmless_base_test.jsonl.gz', limit=3000)
chosen, total = [], 0
for it in items:
    n = len(subject.encode_chat(it.messages, 512, 'truncate'))
    if total >= {n_tokens}:
        break
    chosen.append(it); total += n
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as tmp:
    st = capture(subject, chosen, tmp + '/s', CaptureConfig(hooks=('{HOOK}',), positions='all',
                 max_tokens=512, on_overflow='truncate', shard_rows=4096,
                 max_batch_tokens=2048), progress=False)
    rows = st.n_rows
    store_bytes = sum(f.stat().st_size for f in st.root.rglob('*.safetensors'))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print('RESULT', total, rows, store_bytes, before, after)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    _, total, rows, store_bytes, before, after = line.split()
    return {"target_tokens": n_tokens, "tokens": int(total), "rows": int(rows),
            "store_mib": int(store_bytes) / 2**20,
            "rss_after_load_mib": int(before) / 1024, "peak_rss_mib": int(after) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="float32",
                    help="comma-separated; empty for memory only. bf16 is ~7x slower on CPUs "
                         "without bf16 matmul units")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default="benchmarks/results/capture.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    command = " ".join(["python", *sys.argv])
    report.update({"torch_threads": torch.get_num_threads(), "device": args.device})
    report.setdefault("results", [])
    results = report["results"]

    def save() -> None:  # after every stage, so a long run that is stopped keeps what it measured
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(out)

    for dt in [d for d in args.dtype.split(",") if d]:
        new = bench_dtype(dt, args.device, args.rounds)
        results[:] = [r for r in results if r["dtype"] != dt] + new
        report["throughput_command"] = command
        save()
    if args.memory:
        report["memory"] = [peak_memory(n, "float32", args.device) for n in MEMORY_POINTS]
        report["memory_command"] = command
        save()
    memory = report.get("memory", [])
    for dt in [d for d in args.dtype.split(",") if d]:
        for ds, limit in (("fixed", "hf_stopped"), ("chat_mix", "hf_stopped_bucketed")):
            rows = [r for r in results if r["dtype"] == dt and r["dataset"] == ds]
            lim = next(r["tok_per_s"] for r in rows if r["method"] == limit)
            print(f"\n[{dt}] {ds}: {rows[0]['tokens']} tokens")
            for r in rows:
                print(f"  {r['method']:<22} {r['tok_per_s']:>9.0f} tok/s  "
                      f"{r['tok_per_s'] / lim:5.2f}x limit")
    for m in memory:
        print(f"memory: {m['tokens']} tokens -> {m['rows']} rows, peak RSS "
              f"{m['peak_rss_mib']:.0f} MiB (after load {m['rss_after_load_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
