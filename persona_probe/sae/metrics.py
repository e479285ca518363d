"""SAE quality on held-out data: reconstruction, sparsity, and the cost to the model's loss.

Two families, both on chats the SAE never trained on (the held-out split of its store):
- *activation metrics* on stored rows: explained variance (1 − FVU), MSE, L0, per-latent firing
  frequency, dead latents (never fire on the held-out rows) and dense latents (fire on more
  than ``dense_threshold`` of them);
- *downstream metrics* from forward passes: next-token cross-entropy and KL(clean ‖ patched) when
  the SAE's reconstruction replaces the residual at its hook point (error term off), against the
  clean model and against zero-ablation of the same positions. Only the positions the store
  captured are patched (special tokens, e.g. ``<|im_start|>``, keep their clean residual: the SAE
  never saw them and they carry the attention sink), and the report says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from persona_probe.artifacts import read_json, write_json
from persona_probe.batching import pad_batch
from persona_probe.errors import PersonaProbeError
from persona_probe.hooks import parse_hook, residual_hooks
from persona_probe.models import Subject
from persona_probe.store import ActivationStore

METRICS_JSON = "metrics.json"
SPARSITY_FILE = "feature_frequency.safetensors"


@dataclass
class ActivationMetrics:
    rows: int
    explained_variance: float
    fvu: float
    mse: float
    cosine: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    dense_threshold: float


@dataclass
class DownstreamMetrics:
    chats: int
    tokens: int
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_delta: float              # ce_sae − ce_clean
    ce_loss_recovered: float     # (ce_zero − ce_sae) / (ce_zero − ce_clean)
    kl_sae: float                # mean KL(clean ‖ sae-patched) per predicted token
    kl_zero: float
    patched_positions: str


@torch.no_grad()
def activation_metrics(sae, rows: torch.Tensor, batch_size: int = 4096,
                       dense_threshold: float = 0.1) -> tuple[ActivationMetrics, torch.Tensor]:
    """Metrics over ``rows`` (N × d_in, raw residuals) and each latent's firing frequency."""
    device = sae.W_enc.device
    n = rows.shape[0]
    sum_sq_err = cos_sum = l0_sum = 0.0
    mean = rows.double().mean(0).to(device)
    var_total = 0.0
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=device)
    for s in range(0, n, batch_size):
        x = rows[s:s + batch_size].to(device=device, dtype=sae.W_enc.dtype)
        acts = sae.encode(x)
        recon = sae.decode(acts)
        err = (recon - x).double()
        sum_sq_err += err.pow(2).sum().item()
        var_total += (x.double() - mean).pow(2).sum().item()
        cos_sum += F.cosine_similarity(recon.double(), x.double(), dim=-1).sum().item()
        active = acts > 0
        l0_sum += active.sum().item()
        fires += active.sum(0).double()
    freq = (fires / n).cpu()
    fvu = sum_sq_err / var_total
    m = ActivationMetrics(rows=n, explained_variance=1 - fvu, fvu=fvu, mse=sum_sq_err / n,
                          cosine=cos_sum / n, l0=l0_sum / n,
                          dead_fraction=float((freq == 0).double().mean()),
                          dense_fraction=float((freq > dense_threshold).double().mean()),
                          dense_threshold=dense_threshold)
    return m, freq.float()


@torch.no_grad()
def downstream_metrics(subject: Subject, sae, hook: str, chats: list[list[dict]],
                       max_tokens: int = 512, batch_size: int = 4,
                       roles: list[str] | None = None) -> DownstreamMetrics:
    """CE and KL with the residual at ``hook`` replaced by the SAE's reconstruction (and by
    zeros), at non-special token positions (of ``roles`` only, when given: the rows the SAE
    was trained on)."""
    from persona_probe.chat import ROLE_CODES

    hp = parse_hook(hook, subject.n_layers)
    special = torch.tensor(sorted(set(subject.tokenizer.all_special_ids)))
    pad = subject.tokenizer.pad_token_id
    chats_enc = [subject.encode_chat(c, max_tokens, "truncate") for c in chats]
    encoded = [e.input_ids for e in chats_enc]
    role_codes = [ROLE_CODES[r] for r in roles] if roles else None
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    tot = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0}
    n_tok = 0
    mode = {"value": "clean"}
    patch_mask = {"mask": None}

    def patch(resid: torch.Tensor) -> torch.Tensor | None:
        if mode["value"] == "clean":
            return None
        mask = patch_mask["mask"].unsqueeze(-1)
        if mode["value"] == "zero":
            new = torch.zeros_like(resid)
        else:
            flat = resid.reshape(-1, resid.shape[-1]).to(sae.W_enc.dtype)
            new = sae.decode(sae.encode(flat)).reshape(resid.shape).to(resid.dtype)
        return torch.where(mask, new, resid)

    device = subject.device
    with residual_hooks(subject.model, [(hp, patch)]):
        for s in range(0, len(order), batch_size):
            seqs = [encoded[i] for i in order[s:s + batch_size]]
            ids, attn = pad_batch(seqs, pad, "right")
            ids, attn = ids.to(device), attn.to(device)
            mask = attn.bool() & ~torch.isin(ids, special.to(device))
            if role_codes is not None:
                role_ids, _ = pad_batch([chats_enc[i].roles for i in order[s:s + batch_size]], -1)
                mask &= torch.isin(role_ids.to(device), torch.tensor(role_codes, device=device))
            patch_mask["mask"] = mask
            targets = ids[:, 1:]
            valid = attn[:, 1:].bool()
            logp = {}
            for m in ("clean", "sae", "zero"):
                mode["value"] = m
                logits = subject.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
                logp[m] = logits.log_softmax(-1)
            mode["value"] = "clean"
            for m in ("clean", "sae", "zero"):
                nll = -logp[m].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                tot[m] += nll[valid].sum().item()
            p_clean = logp["clean"].exp()
            for m in ("sae", "zero"):
                kl = (p_clean * (logp["clean"] - logp[m])).sum(-1)
                tot[f"kl_{m}"] += kl[valid].sum().item()
            n_tok += int(valid.sum())
    ce = {m: tot[m] / n_tok for m in ("clean", "sae", "zero")}
    denom = ce["zero"] - ce["clean"]
    return DownstreamMetrics(
        chats=len(chats), tokens=n_tok, ce_clean=ce["clean"], ce_sae=ce["sae"], ce_zero=ce["zero"],
        ce_delta=ce["sae"] - ce["clean"],
        ce_loss_recovered=(ce["zero"] - ce["sae"]) / denom if denom else float("nan"),
        kl_sae=tot["kl_sae"] / n_tok, kl_zero=tot["kl_zero"] / n_tok,
        patched_positions="non-special tokens" + (f" of roles {', '.join(roles)}" if roles else "")
        + " (special tokens keep their clean residual)")


def heldout_chats(store: ActivationStore, item_numbers: list[int], limit: int) -> list[list[dict]]:
    chats = read_json(store.root / "chats.json")
    return [chats[i]["messages"] for i in item_numbers[:limit]]


def subject_of_sae(sae_dir: str | Path) -> Subject:
    """The subject an SAE directory records it was trained on (``persona_probe.json``'s model and
    adapter), loaded for the CE/KL metrics of ``evaluate_sae``; a directory that does not say is
    an error (the command line's way round it is ``--ce-chats 0``)."""
    from persona_probe.models import load_subject

    sae_dir = Path(sae_dir)
    info = read_json(sae_dir / "persona_probe.json") if (sae_dir / "persona_probe.json").is_file() \
        else {}
    model = info.get("model", {})
    if isinstance(model, str):            # imported SAEs record the model id alone
        model = {"model": model}
    if not model.get("model"):
        raise PersonaProbeError(f"{sae_dir} does not say which model it was trained on; pass "
                                "--ce-chats 0 to skip the CE/KL metrics")
    return load_subject(model["model"], adapter=model.get("adapter"))


def evaluate_sae(sae_dir: str | Path, store: ActivationStore | str | Path | None = None,
                 subject: Subject | None = None, max_rows: int = 65536, ce_chats: int = 64,
                 seed: int | None = None, write: bool = True) -> dict:
    """All metrics for a trained SAE directory, on the held-out split of its training store
    (or of ``store``); writes ``metrics.json`` and per-latent frequencies beside the SAE."""
    from safetensors.torch import save_file

    from persona_probe.artifacts import atomic_write
    from persona_probe.sae.data import RowSplit
    from persona_probe.sae.io import check_compatible, load_sae

    sae_dir = Path(sae_dir)
    info = read_json(sae_dir / "persona_probe.json") if (sae_dir / "persona_probe.json").is_file() \
        else {}
    sae = load_sae(sae_dir)
    hook = sae.cfg.metadata.hook_name
    if not isinstance(store, ActivationStore):
        store = ActivationStore(store or info.get("store"))
    cfg = info.get("config", {})
    fraction = cfg.get("holdout_fraction", 0.05)
    seed = cfg.get("seed", 0) if seed is None else seed
    split = RowSplit.of(store, fraction, seed, cfg.get("roles"))
    if split.heldout.size == 0:
        split.heldout = split.train  # nothing held out: say so below
    pick = split.heldout
    if pick.size > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(pick, max_rows, replace=False))
    act, freq = activation_metrics(sae, store.rows(hook, pick))
    result: dict = {"sae": str(sae_dir), "hook": hook, "store": str(store.root),
                    "heldout": bool(split.heldout_items),
                    "activation": asdict(act)}
    if subject is not None and ce_chats > 0:
        check_compatible(sae, subject, hook)
        chats = heldout_chats(store, split.heldout_items or list(range(len(store.item_ids))),
                              ce_chats)
        result["downstream"] = asdict(downstream_metrics(subject, sae, hook, chats,
                                                         roles=cfg.get("roles")))
    if write:
        write_json(sae_dir / METRICS_JSON, result)
        atomic_write(sae_dir / SPARSITY_FILE,
                     lambda tmp: save_file({"frequency": freq.contiguous()}, str(tmp)))
    return result


def format_metrics(result: dict) -> str:
    a = result["activation"]
    lines = [f"SAE {result['sae']}  at {result['hook']}",
             f"  held-out rows     {a['rows']:,}" + ("" if result.get("heldout", True)
                                                    else "  (no held-out split: train rows)"),
             f"  explained var.    {a['explained_variance']:.4f}  (FVU {a['fvu']:.4f}, "
             f"cosine {a['cosine']:.4f})",
             f"  L0                {a['l0']:.2f}",
             f"  dead latents      {a['dead_fraction']:.2%}",
             f"  dense latents     {a['dense_fraction']:.2%}  (fire on > "
             f"{a['dense_threshold']:.0%} of tokens)"]
    if "downstream" in result:
        d = result["downstream"]
        lines += [f"  CE clean / SAE / zero   {d['ce_clean']:.4f} / {d['ce_sae']:.4f} / "
                  f"{d['ce_zero']:.4f}  ({d['tokens']:,} tokens, {d['chats']} chats)",
                  f"  CE delta          {d['ce_delta']:+.4f}   loss recovered "
                  f"{d['ce_loss_recovered']:.2%}",
                  f"  KL SAE / zero     {d['kl_sae']:.4f} / {d['kl_zero']:.4f}",
                  f"  patched           {d['patched_positions']}"]
    return "\n".join(lines)
