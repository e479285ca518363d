"""One-command GPU check (issue 23): capture, SAE training, steering in generation and a LoRA
step on random-init models built on the GPU from SmolLM2-135M's and Qwen2.5-7B's
configurations (throughput does not depend on the weights), with tokens/s, model FLOP
utilisation (MFU) against the device's peak, and peak memory.

Made for a lent CUDA machine with no internet and no package registry: it runs on that
machine's own python3, torch and transformers (no ``make install``), imports persona_probe from
the tree, and never downloads anything. sae-lens (and the few packages it imports that such an
image lacks) can travel as wheels in ``.whl/`` (``make gpu-wheels`` fills it; ~3 MB): they are
installed with ``--no-deps`` into a temporary folder that is appended to ``sys.path``, so the
machine's own packages always win. Without them the sae-lens comparison is skipped, with the
reason recorded. ``wandb``, which sae-lens imports at module level only to log, is replaced by
a stub when absent (``benchmarks/gpu_shims``): its 20 MB wheel would not fit the transfer.

Each section's JSON is written atomically as soon as the section finishes
(``OUT/{capture,sae_train,steer_generate,lora_step}.json``, plus ``OUT/gpu_check.json``, the
run's manifest), so a run stopped part-way keeps what it measured. A global time budget
(``--budget-s``, 210 s by default, counted from after the imports) skips the remaining work
with a recorded reason, so the whole check ends within 4 minutes. ``benchmarks/report.py`` renders the GPU section of BENCHMARKS.md
from these files; ``--dry-run`` outputs (CPU, tiny models, one iteration; what the test suite
runs) carry ``"dry_run": true`` and are never rendered.

FLOPs (PaLM's convention, Chowdhery et al. 2022, app. B): N = the parameters a token's forward
pass multiplies by (decoder layers up to the last one run, plus the LM head when it runs; not
the embedding lookup). Forward = 2N + 4·L·d_attn·T per token (T the sequence length, L the
layers run, d_attn = heads × head_dim); a full training step is 3× that; a LoRA step 2× (the
frozen base needs no weight gradients; the adapters' FLOPs are < 1% and not counted).
Generation counts 2N per generated token and 2N_body per prompt token (memory-bound, so its MFU
is small by nature). SAE steps count the dense-equivalent 6·(2·d_in·d_sae) per token, against
the float32 peak (SAE weights are float32; TF32 stays as torch's default).

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out benchmarks/results/gpu   # on a GPU
    python3 benchmarks/gpu_check.py --dry-run --out /tmp/gpu-dry                # on CPU
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
if str(REPO) not in sys.path:          # persona_probe from the tree, with or without PYTHONPATH
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from timing import interleaved, sync  # noqa: E402  (benchmarks/timing.py, beside this script)

SCHEMA = "persona_probe.gpu_check/1"
SECTIONS = ("capture", "sae_train", "steer_generate", "lora_step")
MANIFEST = "gpu_check.json"

# The two configurations, as their config.json files give them (no hub download).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2-135m": ("llama", {
        "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "tie_word_embeddings": True, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}),
    "qwen2.5-7b": ("qwen2", {
        "num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "hidden_act": "silu", "use_sliding_window": False,
        "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643}),
}
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}

# Dense (no sparsity) peak rates by the vendors' datasheets, matched on
# torch.cuda.get_device_name() in this order (so "GH200" and "H200 NVL" precede "H200").
PEAKS: list[tuple[str, str, float, float]] = [   # (name contains, part, bf16, fp32 FLOP/s)
    ("GH200", "GH200", 989e12, 67e12),
    ("H200 NVL", "H200 NVL", 835e12, 60e12),
    ("H200", "H200 SXM", 989e12, 67e12),
    ("H100 NVL", "H100 NVL", 835e12, 60e12),
    ("H100 PCIe", "H100 PCIe", 756e12, 51e12),
    ("H100", "H100 SXM", 989e12, 67e12),
    ("A100", "A100", 312e12, 19.5e12),
    ("L40S", "L40S", 362e12, 91.6e12),
]

# Sizes: the real check, and the dry run (tiny models, one iteration).
FULL = {"capture": {"batch": 16, "seq": 512, "batches": 4, "rounds": 3},
        "sae_train": {"expansion": 8, "k": 32, "batch": 4096, "steps": 4, "rounds": 3},
        "steer_generate": {"batch": 8, "prompt": 128, "new_tokens": 64, "rounds": 3},
        "lora_step": {"batch": 8, "seq": 512, "steps": 3, "rounds": 3}}
DRY = {"capture": {"batch": 2, "seq": 16, "batches": 1, "rounds": 1},
       "sae_train": {"expansion": 4, "k": 8, "batch": 64, "steps": 1, "rounds": 1},
       "steer_generate": {"batch": 2, "prompt": 8, "new_tokens": 4, "rounds": 1},
       "lora_step": {"batch": 2, "seq": 16, "steps": 1, "rounds": 1}}
# Rough seconds a (section, model) unit needs on an H100-class GPU: a unit is skipped when
# less than this is left of the budget.
EST_S = {("capture", "smollm2-135m"): 8, ("capture", "qwen2.5-7b"): 15,
         ("sae_train", "smollm2-135m"): 10, ("sae_train", "qwen2.5-7b"): 25,
         ("steer_generate", "smollm2-135m"): 20, ("steer_generate", "qwen2.5-7b"): 35,
         ("lora_step", "smollm2-135m"): 10, ("lora_step", "qwen2.5-7b"): 25}


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader sees all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, default=str)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- packages the GPU image may lack ------------------------------------------------------------

def _wheel_tops(whl: Path) -> set[str]:
    """Top-level import names a wheel installs."""
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        if top_level:
            return {t.strip() for t in z.read(top_level[0]).decode().split() if t.strip()}
    tops = set()
    for n in names:
        first = n.split("/")[0]
        if not first.endswith((".dist-info", ".data")):
            tops.add(first.removesuffix(".py"))
    return tops


def prepare_packages(wheels: Path) -> dict[str, Any]:
    """Make sae-lens importable if it can be: install the carried wheels whose packages this
    Python lacks (``pip --no-deps --no-index`` into a temporary folder appended to sys.path),
    and stub wandb if absent. Returns what was done, for the report."""
    info: dict[str, Any] = {"wheels_dir": str(wheels), "installed_from_wheels": [],
                            "shims": [], "sae_lens": None, "sae_lens_error": None}
    if importlib.util.find_spec("sae_lens") is None:
        whls = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        need = [w for w in whls
                if not all(importlib.util.find_spec(t) is not None for t in _wheel_tops(w))]
        if need:
            site = Path(tempfile.mkdtemp(prefix="persona_probe_gpu_site_"))
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                   "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
                   "--target", str(site), *map(str, need)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode == 0:
                sys.path.append(str(site))
                importlib.invalidate_caches()
                info["installed_from_wheels"] = [w.name for w in need]
                info["site"] = str(site)
            else:
                info["sae_lens_error"] = ("pip install of the carried wheels failed: "
                                          + (res.stderr.strip().splitlines() or ["?"])[-1])
    if importlib.util.find_spec("wandb") is None and importlib.util.find_spec("sae_lens"):
        sys.path.append(str(ROOT / "gpu_shims"))
        importlib.invalidate_caches()
        info["shims"].append("wandb")
    if importlib.util.find_spec("sae_lens") is None:
        info["sae_lens_error"] = info["sae_lens_error"] or (
            f"sae_lens is not installed and {wheels} holds no wheel for it (fill it with "
            "`make gpu-wheels` and carry it)")
        return info
    try:
        from sae_lens.config import SAETrainerConfig  # noqa: F401
        from sae_lens.saes.topk_sae import TopKTrainingSAE  # noqa: F401
        from sae_lens.training.sae_trainer import SAETrainer  # noqa: F401

        import sae_lens
        info["sae_lens"] = getattr(sae_lens, "__version__", "unknown")
    except Exception as exc:   # an import chain broken by a version this image has
        info["sae_lens_error"] = f"import sae_lens failed: {type(exc).__name__}: {exc}"
    return info


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:
        return None


def peak_rates(device_name: str) -> dict[str, Any]:
    for key, part, bf16, fp32 in PEAKS:
        if key in device_name:
            return {"part": part, "bf16": bf16, "fp32": fp32,
                    "source": "vendor datasheet, dense (no sparsity)", "reason": None}
    return {"part": None, "bf16": None, "fp32": None, "source": None,
            "reason": f"device {device_name!r} is not in gpu_check.PEAKS; MFU left null"}


def measured_matmul(device: str, dtype: torch.dtype, n: int, reps: int) -> float:
    """FLOP/s of an n×n×n product in ``dtype`` (mean of ``reps`` after three warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def environment(device: str, dry_run: bool, packages: dict[str, Any]) -> dict[str, Any]:
    cuda = device.startswith("cuda")
    env: dict[str, Any] = {
        "device": device, "dry_run": dry_run, "python": platform.python_version(),
        "torch": torch.__version__, "transformers": _version("transformers"),
        "peft": _version("peft"), "numpy": _version("numpy"), "cuda": torch.version.cuda,
        "cpus": os.cpu_count(), "packages": packages,
        "allow_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update({"device_name": torch.cuda.get_device_name(0),
                    "capability": list(torch.cuda.get_device_capability(0)),
                    "multiprocessors": props.multi_processor_count,
                    "total_memory_gib": props.total_memory / 2**30,
                    "peak_flops": peak_rates(torch.cuda.get_device_name(0)),
                    "measured_matmul_flops": {
                        "bf16_8192": measured_matmul(device, torch.bfloat16, 8192, 10),
                        "fp32_4096": measured_matmul(device, torch.float32, 4096, 5)}})
    else:
        env.update({"device_name": f"cpu ({os.cpu_count()} cores)", "capability": None,
                    "total_memory_gib": None, "measured_matmul_flops": None,
                    "peak_flops": {"part": None, "bf16": None, "fp32": None, "source": None,
                                   "reason": "not a CUDA device (dry run)"}})
    return env


# --- models -------------------------------------------------------------------------------------

class Models:
    """The random-init models, built once on the device and reused by every section."""

    def __init__(self, device: str, dtype: torch.dtype, tiny: bool):
        self.device, self.dtype, self.tiny = device, dtype, tiny
        self.built: dict[str, Any] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def config(self, name: str):
        from transformers import LlamaConfig, Qwen2Config

        arch, kw = MODELS[name]
        kw = {**kw, **(TINY if self.tiny else {})}
        return {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**kw), kw

    def subject(self, name: str):
        if name in self.built:
            return self.built[name]
        from transformers import AutoModelForCausalLM

        from persona_probe.models import Subject

        config, kw = self.config(name)
        torch.manual_seed(0)
        sync(self.device)
        cuda = self.device.startswith("cuda")
        before = torch.cuda.memory_allocated() if cuda else 0
        t0 = time.perf_counter()
        with torch.device(self.device):
            try:
                model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
            except TypeError:      # transformers < 4.56 names it torch_dtype
                model = AutoModelForCausalLM.from_config(config, torch_dtype=self.dtype)
        p = next(model.parameters())
        if p.device.type != torch.device(self.device).type or p.dtype != self.dtype:
            model = model.to(device=self.device, dtype=self.dtype)
        model.eval()
        sync(self.device)
        subject = Subject(model=model, tokenizer=None, spec=f"random-init:{name}")
        self.built[name] = subject
        self.info[name] = {
            "model": name, "architecture": MODELS[name][0], "config": kw,
            "n_params": sum(q.numel() for q in model.parameters()),
            "n_matmul_params": matmul_params(model),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "build_s": time.perf_counter() - t0,
            "weights_gib": ((torch.cuda.memory_allocated() - before) / 2**30 if cuda else None)}
        return subject

    def drop(self, name: str) -> None:
        self.built.pop(name, None)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def matmul_params(model, layers: int | None = None, head: bool = True) -> int:
    """N: parameters in the first ``layers`` decoder layers (all when None), plus the LM head."""
    from persona_probe.hooks import decoder_layers

    blocks = list(decoder_layers(model))[:layers]
    n = sum(p.numel() for b in blocks for p in b.parameters())
    if head:
        n += model.get_output_embeddings().weight.numel()
    return n


def d_attn(config) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(config.num_attention_heads * head_dim)


def forward_flops_per_token(n: int, n_layers: int, config, seq: int) -> float:
    return 2 * n + 4 * n_layers * d_attn(config) * seq


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    return None if not peak or seconds <= 0 else flops / seconds / peak


def random_ids(vocab: int, shape: tuple[int, ...], device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # ids from 3 up: clear of the special ids (pad/bos/eos) of both configurations' tiny copies
    return torch.randint(3, vocab, shape, generator=g).to(device)


def med(times: list[float]) -> float:
    return statistics.median(times) if times else float("nan")


# --- sections -----------------------------------------------------------------------------------

class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dry = args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.sizes = DRY if self.dry else FULL
        self.out = Path(args.out)
        self.t_start = time.monotonic()
        self.deadline = self.t_start + args.budget_s
        self.models = Models(self.device, torch.bfloat16, tiny=self.dry)
        self.packages = prepare_packages(Path(args.wheels))
        self.env = environment(self.device, self.dry, self.packages)
        self.command = "python3 benchmarks/gpu_check.py " + " ".join(sys.argv[1:])
        self.manifest: dict[str, Any] = {
            "schema": SCHEMA, "section": "manifest", "dry_run": self.dry,
            "command": self.command, "started_utc": now_utc(), "budget_s": args.budget_s,
            "env": self.env, "sections": {}, "models": {}}
        write_json_atomic(self.out / MANIFEST, self.manifest)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def peak(self, kind: str = "bf16") -> float | None:
        return (self.env.get("peak_flops") or {}).get(kind)

    def run(self) -> int:
        sections = [s for s in SECTIONS if s in self.args.sections]
        for section in sections:
            t0 = time.perf_counter()
            report = {"schema": SCHEMA, "section": section, "dry_run": self.dry,
                      "command": self.command, "started_utc": now_utc(),
                      "budget_s": self.args.budget_s, "sizes": self.sizes[section],
                      "env": self.env, "models": [],
                      "status": "ok", "reason": None}
            for name in self.args.models:
                entry = self.unit(section, name)
                report["models"].append(entry)
            statuses = {m["status"] for m in report["models"]}
            if statuses <= {"skipped"}:
                report["status"] = "skipped"
                report["reason"] = "; ".join(sorted({m["reason"] for m in report["models"]}))
            elif statuses == {"error"}:
                report["status"] = "error"
                report["reason"] = "; ".join(m["reason"] for m in report["models"])
            elif statuses != {"ok"}:
                report["status"] = "partial"
            report["seconds"] = time.perf_counter() - t0
            report["elapsed_s"] = time.monotonic() - self.t_start
            write_json_atomic(self.out / f"{section}.json", report)
            self.manifest["sections"][section] = {"status": report["status"],
                                                  "seconds": report["seconds"]}
            self.manifest["models"] = self.models.info
            self.manifest["elapsed_s"] = time.monotonic() - self.t_start
            write_json_atomic(self.out / MANIFEST, self.manifest)
            print(f"== {section}: {report['status']} in {report['seconds']:.1f} s "
                  f"(elapsed {report['elapsed_s']:.0f} s of {self.args.budget_s:.0f})",
                  flush=True)
        self.manifest["finished_utc"] = now_utc()
        self.manifest["elapsed_s"] = time.monotonic() - self.t_start
        write_json_atomic(self.out / MANIFEST, self.manifest)
        return 0

    def unit(self, section: str, name: str) -> dict[str, Any]:
        need = 0 if self.dry else EST_S.get((section, name), 15)
        entry: dict[str, Any] = {"model": name, "status": "ok", "reason": None, "results": []}
        if self.left_s() < need:
            entry.update(status="skipped", reason=(
                f"time budget: {time.monotonic() - self.t_start:.0f} s of "
                f"{self.args.budget_s:.0f} s used, this part needs about {need} s"))
            return entry
        try:
            subject = self.models.subject(name)
            entry["model_info"] = self.models.info[name]
            getattr(self, section)(subject, name, entry)
        except Exception as exc:     # one failing part (e.g. out of memory) ends only itself
            entry.update(status="error", reason=f"{type(exc).__name__}: {exc}".strip()[:500],
                         traceback=traceback.format_exc(limit=6))
            print(entry["traceback"], flush=True)
            if self.cuda:
                torch.cuda.empty_cache()
        return entry

    # capture --------------------------------------------------------------------------------
    def capture(self, subject, name: str, entry: dict) -> None:
        from persona_probe.capture import _Planned, _run_batch, _stop_forward, _StopForward
        from persona_probe.chat import EncodedChat
        from persona_probe.hooks import HookPoint, residual_hooks
        from persona_probe.store import ActivationStoreWriter

        sz = self.sizes["capture"]
        model, cfg = subject.model, subject.model.config
        layer = min(15, subject.n_layers - 1)        # the shipped SAE's and GPU configs' layer
        hp = HookPoint(layer, "post")
        B, T = sz["batch"], sz["seq"]
        ids = [random_ids(cfg.vocab_size, (B, T), "cpu", seed=i) for i in range(sz["batches"])]
        dev_ids = [t.to(self.device) for t in ids]
        mask = torch.ones(B, T, dtype=torch.long, device=self.device)
        planned = [[_Planned(j, EncodedChat(row, [3] * T, T, T), list(range(T)), False)
                    for j, row in enumerate(t.tolist())] for t in ids]
        tmp = Path(tempfile.mkdtemp(prefix="gpu_check_store_"))
        writer = ActivationStoreWriter(tmp / "store", {"fingerprint": "gpu_check"},
                                       [str(j) for j in range(B)], [hp.name],
                                       subject.d_model, 16384)

        @torch.no_grad()
        def hf(i: int, stop: bool) -> None:
            fns = [(hp, _stop_forward)] if stop else []
            with residual_hooks(model, fns):
                try:
                    model(input_ids=dev_ids[i], attention_mask=mask, use_cache=False).logits
                except _StopForward:
                    pass

        def ours(i: int) -> None:
            acts, index = _run_batch(subject, planned[i], [hp], hp, cfg.pad_token_id,
                                     torch.float16, False)
            writer.append(acts, index)

        methods = {"hf_full": lambda i: hf(i, False), "hf_stopped": lambda i: hf(i, True),
                   "persona_probe": ours}
        peak_mem: dict[str, float] = {}
        try:
            times = interleaved(methods, list(range(sz["batches"])), sz["rounds"], self.device,
                                self.deadline, peak_mem)
            writer.finalize()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        tokens = B * T
        n_stop = matmul_params(model, layer + 1, head=False)
        n_full = matmul_params(model)
        per_tok = {"hf_full": forward_flops_per_token(n_full, subject.n_layers, cfg, T),
                   "hf_stopped": forward_flops_per_token(n_stop, layer + 1, cfg, T),
                   "persona_probe": forward_flops_per_token(n_stop, layer + 1, cfg, T)}
        limit = tokens / med(times["hf_stopped"])
        for m, ts in times.items():
            tok_s = tokens / med(ts)
            entry["results"].append({
                "method": m, "tokens_per_step": tokens, "ms_per_step": med(ts) * 1e3,
                "tok_per_s": tok_s, "x_limit": tok_s / limit,
                "flops_per_token": per_tok[m], "mfu": mfu(per_tok[m] * tokens, med(ts),
                                                          self.peak()),
                "peak_mem_gib": peak_mem.get(m), "rounds_ms": [t * 1e3 for t in ts]})
        entry.update(hook=hp.name, store_dtype="float16", limit="hf_stopped",
                     flops_formula="2N + 4·L·d_attn·T per token; hf_full: all layers + LM head; "
                                   "stopped: layers 0..hook")

    # SAE training ---------------------------------------------------------------------------
    def sae_train(self, subject, name: str, entry: dict) -> None:
        sz = self.sizes["sae_train"]
        d_in = subject.d_model
        d_sae, k, B = sz["expansion"] * d_in, sz["k"], sz["batch"]
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(B, d_in, generator=g)).to(self.device)
                   for _ in range(sz["steps"])]       # E‖x‖ ≈ √d_in, as both trainers scale to
        if self.packages["sae_lens"] is None:   # persona_probe's trainer builds sae-lens SAEs
            entry.update(status="skipped", reason=f"no sae-lens: {self.packages['sae_lens_error']}")
            return
        methods: dict[str, Callable] = {}
        errors: dict[str, str] = {}
        for method, make in (("pp_sparse", lambda: self._ours(d_in, d_sae, k, B, "sparse")),
                             ("pp_reference", lambda: self._ours(d_in, d_sae, k, B, "reference")),
                             ("sae_lens", lambda: self._sae_lens(d_in, d_sae, k, B))):
            try:
                fn = make()
                fn(batches[0])              # fails here, not inside the timing loop
                methods[method] = fn
            except Exception as exc:
                errors[method] = f"{type(exc).__name__}: {exc}"[:400]
        w = torch.randn(d_in, d_sae, device=self.device)
        methods["matmul"] = lambda x: torch.mm(x, w)
        peak_mem: dict[str, float] = {}
        times = interleaved(methods, batches, sz["rounds"], self.device, self.deadline,
                            peak_mem)
        enc_flops = 2 * B * d_in * d_sae
        rate = enc_flops / med(times["matmul"])
        limit_tok = rate / (2 * d_in * d_sae)
        dense_per_tok = 6 * 2 * d_in * d_sae
        ref = times.get("sae_lens")
        for m in ("sae_lens", "pp_reference", "pp_sparse"):
            if m not in times:
                continue
            tok_s = B / med(times[m])
            entry["results"].append({
                "method": m, "tokens_per_step": B, "ms_per_step": med(times[m]) * 1e3,
                "tok_per_s": tok_s, "x_sae_lens": med(ref) / med(times[m]) if ref else None,
                "fraction_of_limit": tok_s / limit_tok, "flops_per_token": dense_per_tok,
                "mfu": mfu(dense_per_tok * B, med(times[m]), self.peak("fp32")),
                "dense_equiv_mfu_vs_matmul": tok_s * dense_per_tok / rate,
                "peak_mem_gib": peak_mem.get(m), "rounds_ms": [t * 1e3 for t in times[m]]})
        entry.update(shape={"d_in": d_in, "d_sae": d_sae, "k": k, "batch": B}, dtype="float32",
                     matmul_flops_per_s=rate, limit_tok_per_s=limit_tok,
                     matmul_rounds_ms=[t * 1e3 for t in times["matmul"]],
                     failed_methods=errors,
                     data="random normal rows (E‖x‖ ≈ √d_in); TopK step cost does not depend "
                          "on the values",
                     flops_formula="dense-equivalent 6·(2·d_in·d_sae) per token vs the fp32 peak")
        if errors and not entry["results"]:
            raise RuntimeError("; ".join(f"{m}: {e}" for m, e in errors.items()))
        if errors:
            entry["status"] = "partial"
            entry["reason"] = "; ".join(f"{m}: {e}" for m, e in errors.items())

    def _ours(self, d_in: int, d_sae: int, k: int, B: int, step: str):
        from persona_probe.sae.config import SAETrainConfig, build_training_sae
        from persona_probe.sae.train import _use_sparse, make_optimizer, train_step

        cfg = SAETrainConfig(store="-", d_sae=d_sae, k=k, batch_size=B, lr=3e-4,
                             device=self.device, step=step)  # type: ignore[arg-type]
        torch.manual_seed(0)
        sae = build_training_sae(cfg, d_in, {}, device=self.device)
        opt = make_optimizer(cfg, sae)
        sparse = _use_sparse(cfg, sae)
        dead = torch.zeros(d_sae, dtype=torch.bool, device=self.device)
        state = {"step": 0}

        def fn(x):
            train_step(sae, opt, x, dead, cfg, state["step"], sparse, {})
            state["step"] += 1
        return fn

    def _sae_lens(self, d_in: int, d_sae: int, k: int, B: int):
        from sae_lens.config import SAETrainerConfig
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.training.sae_trainer import SAETrainer

        torch.manual_seed(0)
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k,
                                                    device=self.device))
        cfg = SAETrainerConfig(total_training_samples=10**9, train_batch_size_samples=B,
                               lr=3e-4, lr_end=3e-4, device=self.device)
        trainer = SAETrainer(cfg, sae, data_provider=iter(()))
        return lambda x: trainer.step(x)

    # steering in generation -------------------------------------------------------------------
    def steer_generate(self, subject, name: str, entry: dict) -> None:
        from persona_probe.directions import random_direction
        from persona_probe.hooks import HookPoint, residual_hooks
        from persona_probe.interventions import steer

        sz = self.sizes["steer_generate"]
        model, cfg = subject.model, subject.model.config
        B, P, new = sz["batch"], sz["prompt"], sz["new_tokens"]
        L = subject.n_layers
        mid = min(15, L - 1)
        three = sorted({max(0, mid - 5), mid, min(L - 1, mid + 5)})
        ids = random_ids(cfg.vocab_size, (B, P), self.device, seed=1)
        mask = torch.ones_like(ids)
        d = random_direction(subject.d_model, list(range(L)), seed=0, name="probe")
        # r̄ (steer's unit) on these prompts, put where residual_norms caches it: a random-init
        # model has no chat template, and α = 0 makes the value irrelevant to the timing
        hps = [HookPoint(x, "post") for x in sorted(set(three) | {mid})]
        norms: dict = {}
        with torch.no_grad(), residual_hooks(model, [(hp, (lambda hp: lambda r: norms.__setitem__(
                hp, float(r.float().norm(dim=-1).mean())))(hp)) for hp in hps]):
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        subject.cache.setdefault("residual_norms", {}).update(
            {("default", hp): v for hp, v in norms.items()})

        @torch.no_grad()
        def gen() -> torch.Tensor:
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, top_p=None, top_k=None,
                                  temperature=None, pad_token_id=cfg.pad_token_id)

        def with_steer(layers: list[int]):
            def fn(_):
                with steer(subject, d, 0.0, layers):
                    out = gen()
                assert out.shape[1] == P + new
            return fn

        methods = {"plain": lambda _: gen(), f"steer_{1}_layer": with_steer([mid]),
                   f"steer_{len(three)}_layers": with_steer(three)}
        peak_mem: dict[str, float] = {}
        times = interleaved(methods, [None], sz["rounds"], self.device, self.deadline, peak_mem)
        n_full = matmul_params(model)
        n_body = matmul_params(model, head=False)
        flops = 2 * n_full * B * new + 2 * n_body * B * P
        plain = times["plain"]
        for m, ts in times.items():
            ratios = [t / p for t, p in zip(ts, plain)]
            entry["results"].append({
                "method": m, "new_tokens": B * new, "median_s": med(ts),
                "tok_per_s": B * new / med(ts), "overhead": med(ratios) - 1,
                "mfu": mfu(flops, med(ts), self.peak()), "peak_mem_gib": peak_mem.get(m),
                "rounds_s": ts})
        entry.update(batch=B, prompt_tokens=P, new_tokens=new, layers={"1": [mid], "3": three},
                     alpha=0.0, flops_formula="2N per generated token + 2N_body per prompt "
                                              "token (attention and the KV cache not counted)")

    # LoRA step ------------------------------------------------------------------------------------
    def lora_step(self, subject, name: str, entry: dict) -> None:
        from persona_probe.training.finetune import FinetuneConfig, _trainable_model

        sz = self.sizes["lora_step"]
        B, T = sz["batch"], sz["seq"]
        ft = FinetuneConfig(data="-", device=self.device, dtype="bfloat16")  # project defaults
        cfg = subject.model.config
        n_full = matmul_params(subject.model)
        model = _trainable_model(subject, ft)
        try:
            params = [p for p in model.parameters() if p.requires_grad]
            try:
                opt = torch.optim.AdamW(params, lr=ft.lr, weight_decay=ft.weight_decay,
                                        fused=self.cuda)
            except (RuntimeError, TypeError):
                opt = torch.optim.AdamW(params, lr=ft.lr, weight_decay=ft.weight_decay)
            batches = [random_ids(cfg.vocab_size, (B, T), self.device, seed=10 + i)
                       for i in range(sz["steps"])]
            mask = torch.ones(B, T, dtype=torch.long, device=self.device)
            model.train()

            def step(x: torch.Tensor) -> None:
                # as transformers' Trainer with bf16=True: autocast, clip at max_grad_norm, AdamW
                with torch.autocast(device_type=torch.device(self.device).type,
                                    dtype=torch.bfloat16):
                    loss = model(input_ids=x, attention_mask=mask, labels=x).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, ft.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)

            peak_mem: dict[str, float] = {}
            times = interleaved({"lora_step": step}, batches, sz["rounds"], self.device,
                                self.deadline, peak_mem)
            per_tok = 2 * forward_flops_per_token(n_full, subject.n_layers, cfg, T)
            ts = times["lora_step"]
            entry["results"].append({
                "method": "lora_step", "tokens_per_step": B * T, "ms_per_step": med(ts) * 1e3,
                "tok_per_s": B * T / med(ts), "flops_per_token": per_tok,
                "mfu": mfu(per_tok * B * T, med(ts), self.peak()),
                "peak_mem_gib": peak_mem.get("lora_step"), "rounds_ms": [t * 1e3 for t in ts]})
            entry.update(lora={"r": ft.lora_r, "alpha": ft.lora_alpha,
                               "target_modules": ft.target_modules,
                               "trainable_params": sum(p.numel() for p in params)},
                         batch=B, seq=T, optimizer="AdamW (fused on CUDA), clip 1.0, bf16 autocast",
                         flops_formula="2·(2N + 4·L·d_attn·T) per token (forward + input "
                                       "gradients; the frozen base has no weight gradients)")
        finally:
            model.train(False)
            if hasattr(model, "unload"):
                model.unload()            # the base model back without adapters
            self.models.drop(name)        # last section: free its memory for the next model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu"))
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, tiny models (2 layers, d 64), one iteration: the same code paths "
                         "and JSON schema in a few seconds (never rendered as GPU figures)")
    ap.add_argument("--budget-s", type=float, default=210.0,
                    help="stop starting work after this many seconds (the check must end in 4 min)")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--wheels", default=str(REPO / ".whl"),
                    help="folder of carried wheels (sae-lens and what it imports)")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device is visible; this check is for a GPU machine (on CPU use "
              "--dry-run)", file=sys.stderr)
        return 2
    if args.dry_run:
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
