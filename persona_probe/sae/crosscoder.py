"""A BatchTopK crosscoder for model diffing: one dictionary that reads and reconstructs the
residuals of a base model B and a finetuned model F at the same token and hook point.

Why a crosscoder: an SAE per model gives two unrelated dictionaries, so "what changed" has to be
matched up afterwards. A crosscoder shares one set of latents between the models, each latent
with one decoder row per model; a latent that only the finetuned model uses ends up with a
finetuned decoder row and a (near) zero base row, so the change shows up in the decoder norms.

Architecture (x = concat(h_B, h_F), 2·d_model wide)::

    pre  = ReLU(x · W_enc + b_enc)                         (d_sae)
    a    = BatchTopK(pre)   training: the k·N largest entries of the N×d_sae batch are kept
                            (so L0 averages k); inference: pre · [pre > θ], θ the running mean
                            (EMA, ``threshold_momentum``) of the smallest kept activation per
                            training batch, as in the BatchTopK literature
    x̂_B  = a · W_dec_B + b_dec_B,   x̂_F = a · W_dec_F + b_dec_F
    loss = ‖x̂_B − x_B‖² + ‖x̂_F − x_F‖²  (mean over rows)  + aux_coefficient · AuxK

AuxK (dead latents, as the project's TopK step): latents that fired in none of the last
``dead_window`` steps pick their ``aux_k`` largest pre-activations per row and learn to
reconstruct the live latents' residual error in both models. Decoder rows start at unit norm
and are *not* constrained afterwards: their relative norms are what diffing reads.

Input scaling: with ``normalize_inputs`` each model's rows are multiplied by
s_m = √d_model / E‖h_m‖ during training, so both models weigh the same in the loss and latents
are comparable across models. At the end the scales are folded into the weights (the returned
and saved crosscoder takes raw residuals and returns raw reconstructions; ``W_dec_F[i]`` is in
the finetuned model's own units, ready for interventions) and recorded in ``cfg.json``.

Decoder-norm ratio (always in the *normalized* units, i.e. with the scales multiplied back)::

    r_i = ‖W_dec_F[i]‖ / (‖W_dec_B[i]‖ + ‖W_dec_F[i]‖)

classified as base-only (r < ``base_only_max``, default 0.1), shared (``shared_min`` ≤ r ≤
``shared_max``, default 0.3–0.7), finetuned-only (r > ``finetuned_only_min``, default 0.9), and
other in between, the cut-offs used in the crosscoder model-diffing literature.

Saved format (a directory, written atomically file by file, ``cfg.json`` last so its presence
commits the rest):
- ``crosscoder_weights.safetensors``: W_enc (2d × d_sae; rows 0..d-1 read the base model),
  b_enc, W_dec_B, W_dec_F (d_sae × d), b_dec_B, b_dec_F, threshold; float32 or float16
  (``save_dtype``); raw-residual units (scales folded in);
- ``cfg.json``: format and version, the config, d_model, d_sae, hook, the layer convention
  ``blocks.{L}.hook_resid_post = HF hidden_states[L+1]``, the model identities the caller gave
  (``models``), the folded input scales, the training fingerprint, provenance and the sha256
  of the weights file (checked on load);
- ``metrics.json``: what ``train_crosscoder`` measured (see there).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from persona_probe.artifacts import atomic_write, read_json, sha256_file, write_json
from persona_probe.configs import config_from_dict
from persona_probe.errors import PersonaProbeError
from persona_probe.hooks import parse_hook, residual_hooks
from persona_probe.models import Subject, resolve_device
from persona_probe.sae.train import adam_tensors, restore_adam

FORMAT = "persona_probe.batchtopk_crosscoder"
FORMAT_VERSION = 1
CFG_JSON = "cfg.json"
WEIGHTS = "crosscoder_weights.safetensors"
METRICS_JSON = "metrics.json"
CHECKPOINT = "checkpoint"
TRAINER_JSON = "trainer.json"
LAYER_CONVENTION = "blocks.{L}.hook_resid_post = HF hidden_states[L+1]"
MODEL_KEYS = ("base", "finetuned")
CLASSES = ("shared", "base_only", "finetuned_only", "other")
FINGERPRINT_SAMPLE_ROWS = 4096
EVAL_CHUNK = 4096

# The CSR matrices built here are valid by construction; torch's beta notice is noise.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class CrosscoderError(PersonaProbeError):
    """A crosscoder that cannot be trained, loaded or applied as asked; the message says why."""


class CrosscoderConfigError(CrosscoderError):
    """A crosscoder config that cannot describe a run."""


class CrosscoderLoadError(CrosscoderError):
    """A crosscoder directory that is missing, incomplete or corrupted."""


# --- configuration -------------------------------------------------------------------------

@dataclass
class CrosscoderConfig:
    """Everything that decides a trained crosscoder (validated on construction)."""

    d_model: int                              # residual width of both models (required)
    hook: str = "blocks.15.hook_resid_post"   # hook point the rows were read at; the saved
                                              # crosscoder reads and edits the models there
    expansion_factor: int = 8                 # d_sae = expansion_factor · d_model, unless d_sae
    d_sae: int | None = None                  # latents (None: expansion_factor · d_model)
    k: int = 32                               # mean active latents per row (BatchTopK)
    lr: float = 3e-4                          # peak Adam learning rate
    lr_decay_fraction: float = 0.2            # linear decay to 0 over the last fraction of steps
    batch_size: int = 4096                    # rows (tokens, both models) per optimizer step
    steps: int = 1000                         # optimizer steps
    seed: int = 0                             # weight init, held-out split and batch order
    aux_coefficient: float = 1 / 32           # AuxK weight (0 turns it off)
    aux_k: int | None = None                  # dead latents per row in AuxK; None: d_model // 2
    dead_window: int = 200                    # steps without firing before a latent is dead
    threshold_momentum: float = 0.99          # EMA of the smallest kept activation → θ
    max_grad_norm: float = 1.0                # gradient clipping norm
    normalize_inputs: bool = True             # per-model scalar to E‖h‖ = √d_model
    holdout_fraction: float = 0.05            # rows never trained on; the metrics use them
    base_only_max: float = 0.1                # r < this: base-only
    shared_min: float = 0.3                   # shared_min ≤ r ≤ shared_max: shared
    shared_max: float = 0.7                   # upper end of the shared class (see shared_min)
    finetuned_only_min: float = 0.9           # r > this: finetuned-only
    save_dtype: Literal["float32", "float16"] = "float32"  # float32 | float16: saved weights
    log_every: int = 10                       # steps per loss-curve point
    checkpoint_every: int = 500               # steps between checkpoints (only with out)
    device: str = "auto"                      # auto | cpu | cuda | cuda:N (training device)

    def __post_init__(self) -> None:
        for name in ("d_model", "expansion_factor", "k", "batch_size", "steps", "dead_window",
                     "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CrosscoderConfigError(f"{name} must be a positive integer, not {value!r}")
        for name in ("d_sae", "aux_k"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise CrosscoderConfigError(f"{name} must be a positive integer or null, not "
                                            f"{value!r}")
        if self.k > self.n_latents:
            raise CrosscoderConfigError(f"k ({self.k}) exceeds d_sae ({self.n_latents}); lower k "
                                        "or widen the dictionary")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise CrosscoderConfigError(f"lr must be a positive number, not {self.lr!r}")
        if not 0 <= self.lr_decay_fraction <= 1:
            raise CrosscoderConfigError("lr_decay_fraction must lie in [0, 1]")
        if not (math.isfinite(self.aux_coefficient) and self.aux_coefficient >= 0):
            raise CrosscoderConfigError("aux_coefficient must be 0 or more")
        if not 0 <= self.threshold_momentum < 1:
            raise CrosscoderConfigError("threshold_momentum must lie in [0, 1)")
        if not self.max_grad_norm > 0:
            raise CrosscoderConfigError("max_grad_norm must be positive")
        if not 0 < self.holdout_fraction < 1:
            raise CrosscoderConfigError("holdout_fraction must lie strictly between 0 and 1 (the "
                                        "metrics need held-out rows)")
        cuts = (self.base_only_max, self.shared_min, self.shared_max, self.finetuned_only_min)
        if not (0 <= cuts[0] < cuts[1] <= cuts[2] < cuts[3] <= 1):
            raise CrosscoderConfigError(
                "decoder-norm ratio cut-offs must satisfy 0 ≤ base_only_max < shared_min ≤ "
                f"shared_max < finetuned_only_min ≤ 1, got {cuts}")
        if self.save_dtype not in ("float32", "float16"):
            raise CrosscoderConfigError(f"save_dtype must be float32 or float16, not "
                                        f"{self.save_dtype!r}")
        try:
            parse_hook(self.hook)
        except PersonaProbeError as exc:
            raise CrosscoderConfigError(str(exc)) from None

    @property
    def n_latents(self) -> int:
        return int(self.d_sae or self.expansion_factor * self.d_model)

    @property
    def n_aux(self) -> int:
        return min(int(self.aux_k or max(1, self.d_model // 2)), self.n_latents)

    def lr_at(self, step: int) -> float:
        """Constant, then linear decay to 0: a pure function of the step (resumes need no
        scheduler state)."""
        decay = int(self.steps * self.lr_decay_fraction)
        start = self.steps - decay
        if decay and step >= start:
            return self.lr * (self.steps - step) / decay
        return self.lr

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "crosscoder config",
                  ) -> CrosscoderConfig:
        return config_from_dict(cls, raw, where, CrosscoderConfigError, required=("d_model",))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the model -----------------------------------------------------------------------------

class Crosscoder(nn.Module):
    """BatchTopK crosscoder over (h_B, h_F); see the module docstring for the maths.

    ``encode``/``decode`` take and return raw residuals once training has finished (the input
    scales are folded into the weights); ``input_scale`` records them for the decoder-norm
    ratio."""

    def __init__(self, cfg: CrosscoderConfig, input_scale: Mapping[str, float] | None = None,
                 models: Mapping[str, Any] | None = None):
        super().__init__()
        d, D = cfg.d_model, cfg.n_latents
        self.cfg, self.d_model, self.d_sae, self.hook = cfg, d, D, cfg.hook
        self.input_scale = {m: float((input_scale or {}).get(m, 1.0)) for m in MODEL_KEYS}
        self.models = dict(models or {})
        g = torch.Generator().manual_seed(cfg.seed)
        dec_b = torch.randn(D, d, generator=g)
        dec_f = torch.randn(D, d, generator=g)
        dec_b /= dec_b.norm(dim=-1, keepdim=True)
        dec_f /= dec_f.norm(dim=-1, keepdim=True)
        self.W_enc = nn.Parameter(torch.cat([dec_b, dec_f], dim=1).t().contiguous())  # tied init
        self.b_enc = nn.Parameter(torch.zeros(D))
        self.W_dec_B = nn.Parameter(dec_b)
        self.W_dec_F = nn.Parameter(dec_f)
        self.b_dec_B = nn.Parameter(torch.zeros(d))
        self.b_dec_F = nn.Parameter(torch.zeros(d))
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet

    # inference -----------------------------------------------------------------------------

    def _pair(self, h_b: torch.Tensor, h_f: torch.Tensor) -> torch.Tensor:
        if h_b.shape != h_f.shape:
            raise CrosscoderError(f"base and finetuned activations differ in shape "
                                  f"({tuple(h_b.shape)} vs {tuple(h_f.shape)}); pass the two "
                                  "models' residuals at the same tokens")
        if h_b.shape[-1] != self.d_model:
            raise CrosscoderError(f"activations have width {h_b.shape[-1]}, the crosscoder "
                                  f"d_model {self.d_model}; use the hook it was trained at "
                                  f"({self.hook}) on the same models")
        dt = self.W_enc.dtype
        return torch.cat([h_b.to(dt), h_f.to(dt)], dim=-1)

    def preactivations(self, h_b: torch.Tensor, h_f: torch.Tensor) -> torch.Tensor:
        """ReLU(x·W_enc + b_enc) for (..., d_model) inputs: (..., d_sae)."""
        x = self._pair(h_b, h_f)
        return torch.relu(x @ self.W_enc + self.b_enc)

    def encode(self, h_b: torch.Tensor, h_f: torch.Tensor, batch_topk: bool = False,
               ) -> torch.Tensor:
        """Latent activations. Default: the inference rule pre·[pre > θ] (per row, so a
        token's code does not depend on its batch); ``batch_topk`` applies the training rule to
        the rows given (top k·rows entries over the whole batch)."""
        pre = self.preactivations(h_b, h_f)
        if batch_topk:
            flat = pre.reshape(-1)
            n = min(self.cfg.k * max(1, flat.numel() // self.d_sae), flat.numel())
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[flat.topk(n, sorted=False).indices] = True
            return (flat * keep).reshape(pre.shape)
        if float(self.threshold) < 0:
            raise CrosscoderError("this crosscoder has no inference threshold yet (it is "
                                  "untrained); train it with train_crosscoder, or pass "
                                  "batch_topk=True")
        return pre * (pre > self.threshold.to(pre.dtype))

    def encode_latents(self, h_b: torch.Tensor, h_f: torch.Tensor, latents: list[int],
                       ) -> torch.Tensor:
        """``encode(h_b, h_f)[..., latents]`` computing only those columns (the inference rule
        is per latent, so this is exact)."""
        if float(self.threshold) < 0:
            raise CrosscoderError("this crosscoder has no inference threshold yet; train it")
        x = self._pair(h_b, h_f)
        pre = torch.relu(x @ self.W_enc[:, latents] + self.b_enc[latents])
        return pre * (pre > self.threshold.to(pre.dtype))

    def decode(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_B, x̂_F) from (..., d_sae) activations."""
        acts = acts.to(self.W_dec_B.dtype)
        return acts @ self.W_dec_B + self.b_dec_B, acts @ self.W_dec_F + self.b_dec_F

    def forward(self, h_b: torch.Tensor, h_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.encode(h_b, h_f))

    # diffing -------------------------------------------------------------------------------

    @torch.no_grad()
    def decoder_norm_ratio(self) -> torch.Tensor:
        """r_i = ‖W_dec_F[i]‖ / (‖W_dec_B[i]‖ + ‖W_dec_F[i]‖) in the training (normalized)
        units, so a latent equally important to both models reads 0.5 whatever the models'
        residual norms; NaN where both rows are zero."""
        nb = self.W_dec_B.float().norm(dim=-1) * self.input_scale["base"]
        nf = self.W_dec_F.float().norm(dim=-1) * self.input_scale["finetuned"]
        return nf / (nb + nf)

    @torch.no_grad()
    def latent_classes(self, alive: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Latent indices per class (shared, base_only, finetuned_only, other) by the config's
        ratio cut-offs; with ``alive`` (a d_sae bool mask) only those latents are classified."""
        r = self.decoder_norm_ratio().cpu()
        c = self.cfg
        labels = {"base_only": r < c.base_only_max,
                  "shared": (r >= c.shared_min) & (r <= c.shared_max),
                  "finetuned_only": r > c.finetuned_only_min}
        labels["other"] = ~(labels["base_only"] | labels["shared"] | labels["finetuned_only"])
        mask = torch.ones_like(r, dtype=torch.bool) if alive is None else alive.cpu().bool()
        return {name: torch.nonzero(labels[name] & mask).flatten() for name in CLASSES}

    # scaling -------------------------------------------------------------------------------

    @torch.no_grad()
    def fold_input_scale(self, scale_base: float, scale_finetuned: float) -> None:
        """Make a crosscoder trained on s_m·h_m take raw h_m: encoder rows × s_m, decoder and
        decoder bias ÷ s_m (activations, and so θ, are unchanged)."""
        d = self.d_model
        self.W_enc[:d] *= scale_base
        self.W_enc[d:] *= scale_finetuned
        for W, b, s in ((self.W_dec_B, self.b_dec_B, scale_base),
                        (self.W_dec_F, self.b_dec_F, scale_finetuned)):
            W /= s
            b /= s
        self.input_scale = {"base": self.input_scale["base"] * scale_base,
                            "finetuned": self.input_scale["finetuned"] * scale_finetuned}

    # io ------------------------------------------------------------------------------------

    def save(self, path: str | Path, metrics: dict[str, Any] | None = None,
             fingerprint: str | None = None) -> Path:
        return save_crosscoder(self, path, metrics, fingerprint)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str | None = None,
             ) -> Crosscoder:
        return load_crosscoder(path, device, dtype)


# --- the training step ----------------------------------------------------------------------

class _Pattern:
    """Where the kept (row, latent) entries are, in two layouts built once per selection:
    token-major CSR (rows ascending, latents ascending within a row: the entry order used
    everywhere here) and latent-major CSR (for the weight gradients). Rows may hold any number
    of entries (BatchTopK). The latent-major sort uses numpy on CPU: torch's parallel sort,
    which embedding_bag's own backward calls, is slow on few cores."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, d_sae: int):
        dev = rows.device
        self.rows, self.cols, self.shape = rows, cols, (n_rows, d_sae)
        self.crow = torch.zeros(n_rows + 1, dtype=torch.long, device=dev)
        torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=self.crow[1:])
        self.offsets = self.crow[:-1]
        if dev.type == "cpu":
            perm = torch.from_numpy(np.argsort(cols.numpy(), kind="stable"))
        else:
            perm = torch.sort(cols, stable=True).indices
        self.perm = perm
        self.crow_t = torch.zeros(d_sae + 1, dtype=torch.long, device=dev)
        torch.cumsum(torch.bincount(cols, minlength=d_sae), 0, out=self.crow_t[1:])
        self.col_t = rows[perm]

    def by_token(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.cols, values, self.shape,
                                       check_invariants=False)

    def by_latent(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, values[self.perm],
                                       (self.shape[1], self.shape[0]), check_invariants=False)


class _SelectedPre(torch.autograd.Function):
    """Pre-activations z[rows, cols], already computed densely without grad, wired to W_enc
    and b_enc with a sparse backward: only the selected entries have a gradient, so ∂W_enc is
    a sparse (d_sae × N) by dense (N × 2d) product instead of a dense N × 2d × d_sae one."""

    @staticmethod
    def forward(ctx, W_enc, b_enc, x, values, pattern):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.pattern = pattern
        return values

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        p: _Pattern = ctx.pattern
        grad_b = torch.zeros(p.shape[1], dtype=g.dtype, device=g.device).index_add_(0, p.cols, g)
        grad_W = torch.sparse.mm(p.by_latent(g), x).t()
        return grad_W, grad_b, None, None, None


class _Decode(torch.autograd.Function):
    """Σ over a row's entries of a·W_dec[latent] (no bias), with a sparse backward: ∂a by a
    sampled product at the entries, ∂W_dec by a latent-major sparse-dense product."""

    @staticmethod
    def forward(ctx, a, W_dec, pattern):  # type: ignore[override]
        ctx.save_for_backward(a, W_dec)
        ctx.pattern = pattern
        return F.embedding_bag(pattern.cols, W_dec, pattern.offsets, mode="sum",
                               per_sample_weights=a)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        a, W_dec = ctx.saved_tensors
        p: _Pattern = ctx.pattern
        g = g.contiguous()
        grad_a = torch.sparse.sampled_addmm(p.by_token(torch.zeros_like(a)), g, W_dec.t(),
                                            beta=0.0).values()
        grad_W = torch.sparse.mm(p.by_latent(a), g)
        return grad_a, grad_W, None


@dataclass
class StepOutput:
    loss: torch.Tensor
    mse_base: torch.Tensor
    mse_finetuned: torch.Tensor
    aux: torch.Tensor
    l0: torch.Tensor
    fired: torch.Tensor       # (d_sae,) bool
    min_kept: torch.Tensor    # smallest kept activation (the θ estimate of this batch)


PREFILTER = 0.75   # candidates for the batch top-k: activations above this fraction of θ


def _batch_topk_indices(flat: torch.Tensor, n: int, theta: float) -> torch.Tensor:
    """Flat indices of the ``n`` largest positive entries. Exact shortcut: when at least ``n``
    entries exceed c = PREFILTER·θ, the n largest are all among them, so the top-n runs on
    those candidates only (a full top-n over N·d_sae entries dominates a CPU step); otherwise,
    and before θ exists, the full top-n."""
    if theta > 0:
        cand = torch.nonzero(flat > PREFILTER * theta).squeeze(1)
        if cand.numel() >= n:
            return cand[flat[cand].topk(n, sorted=False).indices]
    idx = flat.topk(n, sorted=False).indices
    return idx[flat[idx] > 0]


def step_loss(model: Crosscoder, x_b: torch.Tensor, x_f: torch.Tensor,
              dead: torch.Tensor | None) -> StepOutput:
    """Loss of one (normalized) batch, differentiable in the crosscoder's parameters. The
    dense work is the encoder product; the decode touches only the kept latents."""
    N, D, k = x_b.shape[0], model.d_sae, model.cfg.k
    with torch.no_grad():
        x = torch.cat([x_b, x_f], dim=1)
        z = torch.addmm(model.b_enc, x, model.W_enc)
        flat = torch.relu(z).reshape(-1)
        idx = _batch_topk_indices(flat, min(k * N, flat.numel()), float(model.threshold))
        idx = (torch.from_numpy(np.sort(idx.numpy())) if idx.device.type == "cpu"
               else idx.sort().values)                  # row-major entry order
        pattern = _Pattern(idx // D, idx % D, N, D)
    vals = _SelectedPre.apply(model.W_enc, model.b_enc, x, flat[idx], pattern)
    rec_b = _Decode.apply(vals, model.W_dec_B, pattern) + model.b_dec_B
    rec_f = _Decode.apply(vals, model.W_dec_F, pattern) + model.b_dec_F
    mse_b = (rec_b - x_b).pow(2).sum(-1).mean()
    mse_f = (rec_f - x_f).pow(2).sum(-1).mean()
    aux = _aux_loss(model, x, z, x_b - rec_b.detach(), x_f - rec_f.detach(), dead)
    fired = torch.zeros(D, dtype=torch.bool, device=x.device)
    fired[pattern.cols] = True
    # no entry kept (every pre-activation ≤ 0): leave θ where it is
    min_kept = vals.detach().min() if vals.numel() else model.threshold.detach().clone()
    l0 = x.new_tensor(idx.numel() / N)
    return StepOutput(mse_b + mse_f + aux, mse_b.detach(), mse_f.detach(), aux.detach(),
                      l0, fired, min_kept)


def _aux_loss(model: Crosscoder, x: torch.Tensor, z: torch.Tensor, err_b: torch.Tensor,
              err_f: torch.Tensor, dead: torch.Tensor | None) -> torch.Tensor:
    """AuxK: each row's top ``aux_k`` dead latents (by pre-activation, no ReLU, as the project's
    TopK step) reconstruct the live latents' error in both models, weighted by
    min(dead / aux_k, 1)."""
    coef = model.cfg.aux_coefficient
    if dead is None or coef == 0 or (n_dead := int(dead.sum())) == 0:
        return x.new_zeros(())
    k_aux = min(model.cfg.n_aux, n_dead)
    scale = min(n_dead / model.cfg.n_aux, 1.0)
    N = x.shape[0]
    with torch.no_grad():
        dead_idx = torch.nonzero(dead).squeeze(1)
        top = dead_idx[z[:, dead_idx].topk(k_aux, dim=-1, sorted=False).indices]
        top = top.sort(dim=-1).values
        pattern = _Pattern(torch.arange(N, device=x.device).repeat_interleave(k_aux),
                           top.reshape(-1), N, model.d_sae)
        sel = z.gather(1, top).reshape(-1)
    vals = _SelectedPre.apply(model.W_enc, model.b_enc, x, sel, pattern)
    rb = _Decode.apply(vals, model.W_dec_B, pattern)
    rf = _Decode.apply(vals, model.W_dec_F, pattern)
    return coef * scale * ((rb - err_b).pow(2).sum(-1).mean() + (rf - err_f).pow(2).sum(-1).mean())


def make_optimizer(cfg: CrosscoderConfig, model: Crosscoder) -> torch.optim.Adam:
    """Adam; torch's fused kernel where the device has it (same update, faster)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def train_step(model: Crosscoder, opt: torch.optim.Optimizer, x_b: torch.Tensor,
               x_f: torch.Tensor, dead: torch.Tensor | None, step: int) -> StepOutput:
    """One optimizer step on a normalized batch (clip, Adam) and the θ update."""
    cfg = model.cfg
    for group in opt.param_groups:
        group["lr"] = cfg.lr_at(step)
    out = step_loss(model, x_b, x_f, dead)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        m = cfg.threshold_momentum
        thr = model.threshold
        thr.copy_(torch.where(thr < 0, out.min_kept, m * thr + (1 - m) * out.min_kept))
    out.loss = out.loss.detach()
    return out


# --- training ------------------------------------------------------------------------------

def _identity(value: Any) -> Any:
    """A JSON-able identity for a model: a Subject's provenance, or what the caller gave."""
    if isinstance(value, Subject):
        return value.provenance()
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, Mapping):
        return json.loads(json.dumps(dict(value), default=str))
    return str(value)


def _model_identities(models: Mapping[str, Any] | None) -> dict[str, Any]:
    models = dict(models or {})
    bad = sorted(set(models) - set(MODEL_KEYS))
    if bad:
        raise CrosscoderError(f"models has unknown keys {bad}; give 'base' and 'finetuned'")
    return {m: _identity(models.get(m)) for m in MODEL_KEYS}


def _check_rows(cfg: CrosscoderConfig, rows_b: torch.Tensor, rows_f: torch.Tensor) -> None:
    for name, t in (("rows_base", rows_b), ("rows_finetuned", rows_f)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.ndim != 2:
            raise CrosscoderError(f"{name} must be a float tensor of shape (n_tokens, d_model), "
                                  f"not {type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
    if rows_b.shape != rows_f.shape:
        raise CrosscoderError(
            f"rows_base {tuple(rows_b.shape)} and rows_finetuned {tuple(rows_f.shape)} differ in "
            "shape; a crosscoder needs both models' residuals at the same tokens in the same "
            "order (collect them with the same prompts, positions and hook)")
    if rows_b.shape[1] != cfg.d_model:
        raise CrosscoderError(f"rows have width {rows_b.shape[1]}, config.d_model is "
                              f"{cfg.d_model}; set d_model to the models' hidden size")
    for name, t in (("rows_base", rows_b), ("rows_finetuned", rows_f)):
        if not bool(torch.isfinite(t).all()):
            raise CrosscoderError(f"{name} contains inf or nan; recollect the activations (or "
                                  "drop those rows)")


def _fingerprint(cfg: CrosscoderConfig, rows_b: torch.Tensor, rows_f: torch.Tensor) -> str:
    """What must not change between a run and its resumption: the config (bar logging and
    device) and the data (shape, dtype and a sample of evenly spaced rows of both models)."""
    keys = {k: v for k, v in cfg.to_dict().items()
            if k not in ("log_every", "checkpoint_every", "device")}
    h = hashlib.sha256(json.dumps({"cfg": keys, "shape": list(rows_b.shape),
                                   "dtype": str(rows_b.dtype)}, sort_keys=True).encode())
    n = rows_b.shape[0]
    sample = torch.linspace(0, n - 1, min(n, FINGERPRINT_SAMPLE_ROWS)).round().long()
    for t in (rows_b, rows_f):
        h.update(t[sample.to(t.device)].float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _split(cfg: CrosscoderConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random held-out rows (``holdout_fraction``, at least one) and the training rows."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    n_held = max(1, round(n * cfg.holdout_fraction))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


class _BatchOrder:
    """Batch ``step`` = a slice of epoch ``step // batches_per_epoch``'s permutation of the
    training rows: a pure function of the step, so resumed runs see the same batches."""

    def __init__(self, train: torch.Tensor, batch_size: int, seed: int):
        self.train, self.b, self.seed = train, batch_size, seed
        self.per_epoch = len(train) // batch_size
        self._epoch, self._perm = -1, train

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            self._perm = self.train[torch.randperm(len(self.train), generator=g)]
            self._epoch = epoch
        return self._perm[i * self.b:(i + 1) * self.b]


@torch.no_grad()
def _mean_norm_and_mean(rows: torch.Tensor, idx: torch.Tensor) -> tuple[float, torch.Tensor]:
    norm, total = 0.0, torch.zeros(rows.shape[1], dtype=torch.float64)
    for chunk in idx.split(65536):
        r = rows[chunk.to(rows.device)].double()
        norm += float(r.norm(dim=-1).sum())
        total += r.sum(0).cpu()
    return norm / len(idx), total / len(idx)


@dataclass
class _State:
    step: int
    tokens: int
    scales: tuple[float, float]
    since_fired: torch.Tensor
    curve: list[dict[str, float]]
    window: list[float]          # sums of loss, mse_base, mse_finetuned, aux, l0 since the
    window_steps: int = 0        # last curve point, and how many steps they cover


def _save_checkpoint(out: Path, model: Crosscoder, opt: torch.optim.Optimizer, st: _State,
                     fingerprint: str) -> None:
    """Tensors first, then the pointer JSON that commits them; older tensors go last."""
    ck = out / CHECKPOINT
    ck.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    adam, adam_step = adam_tensors(model, opt)
    tensors.update(adam)
    tensors["since_fired"] = st.since_fired.contiguous()
    fname = f"state-{st.step:08d}.safetensors"
    atomic_write(ck / fname, lambda tmp: save_file(tensors, str(tmp)))
    write_json(ck / TRAINER_JSON, {"step": st.step, "tokens": st.tokens, "scales": st.scales,
                                   "adam_step": adam_step, "curve": st.curve,
                                   "window": st.window, "window_steps": st.window_steps,
                                   "state_file": fname, "fingerprint": fingerprint})
    for old in ck.glob("state-*.safetensors"):
        if old.name != fname:
            old.unlink()


def _load_checkpoint(out: Path, model: Crosscoder, opt: torch.optim.Optimizer,
                     fingerprint: str) -> _State | None:
    ck = out / CHECKPOINT
    if not (ck / TRAINER_JSON).is_file():
        return None
    meta = read_json(ck / TRAINER_JSON)
    if meta.get("fingerprint") != fingerprint:
        raise CrosscoderError(f"{out} holds a checkpoint of a different run (config or rows "
                              "changed); use another out directory, or overwrite=True to start "
                              "again")
    dev = str(model.W_enc.device)
    tensors = load_file(str(ck / meta["state_file"]), device=dev)
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()
                           if k.startswith("model.")})
    restore_adam(model, opt, tensors, meta["adam_step"])
    return _State(int(meta["step"]), int(meta["tokens"]), tuple(meta["scales"]),  # type: ignore
                  tensors["since_fired"], list(meta["curve"]), list(meta["window"]),
                  int(meta["window_steps"]))


def _prepare_out(out: Path, resume: bool, overwrite: bool, fingerprint: str) -> bool:
    """True when ``out`` already holds this finished run (resume then just loads it)."""
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise CrosscoderError(f"{out} already exists; pass resume=True to continue (or "
                                  "load) its run, or overwrite=True to replace it")
        elif (out / CFG_JSON).is_file() and not (out / CHECKPOINT).exists():
            if read_json(out / CFG_JSON).get("fingerprint") != fingerprint:
                raise CrosscoderError(f"{out} holds a finished crosscoder of a different run "
                                      "(config or rows differ); use another out directory or "
                                      "overwrite=True")
            return True
    out.mkdir(parents=True, exist_ok=True)
    return False


def train_crosscoder(config: CrosscoderConfig, rows_base: torch.Tensor,
                     rows_finetuned: torch.Tensor, out: str | Path | None = None,
                     resume: bool = False, *, overwrite: bool = False,
                     models: Mapping[str, Any] | None = None, stop_after: int | None = None,
                     progress: bool = False) -> tuple[Crosscoder, dict[str, Any]]:
    """Train a crosscoder on aligned rows (row i of both tensors = the same token, both models,
    ``config.hook``) and return it (raw-residual units) with its metrics.

    ``out``: save there (``cfg.json``, weights, ``metrics.json``) and checkpoint every
    ``checkpoint_every`` steps; ``resume`` continues a checkpoint (or loads the finished run).
    ``models``: identities of the two models for ``cfg.json`` ({'base': …, 'finetuned': …};
    strings, dicts or Subjects). ``stop_after``: stop after that many steps of this call (with
    a checkpoint), for time-boxed jobs; the metrics then say ``finished: False``.

    Metrics: ``loss_curve`` (per ``log_every`` steps: loss, per-model MSE, aux, L0, dead),
    ``explained_variance`` and ``mse`` per model on the held-out rows, ``l0`` (held-out, with
    θ), ``dead_latents`` (no firing in the last ``dead_window`` steps) and
    ``dead_latents_heldout``, and ``classes``: the share of live latents per decoder-norm class
    (``class_counts`` the numbers)."""
    _check_rows(config, rows_base, rows_finetuned)
    if resume and out is None:
        raise CrosscoderError("resume=True needs out (the directory of the run to resume)")
    fingerprint = _fingerprint(config, rows_base, rows_finetuned)
    device = resolve_device(config.device)
    out_path = Path(out) if out is not None else None
    if out_path is not None and _prepare_out(out_path, resume, overwrite, fingerprint):
        return load_crosscoder(out_path, device=str(device)), read_json(out_path / METRICS_JSON)
    n = rows_base.shape[0]
    train_idx, held_idx = _split(config, n)
    if len(train_idx) < config.batch_size:
        raise CrosscoderError(f"{len(train_idx)} training rows (after holding out "
                              f"{len(held_idx)}) are fewer than one batch ({config.batch_size}); "
                              "lower batch_size or collect more rows")
    identities = _model_identities(models)
    model = Crosscoder(config, models=identities).to(device)
    opt = make_optimizer(config, model)
    st = _load_checkpoint(out_path, model, opt, fingerprint) if out_path and resume else None
    if st is None:
        norm_b, mean_b = _mean_norm_and_mean(rows_base, train_idx)
        norm_f, mean_f = _mean_norm_and_mean(rows_finetuned, train_idx)
        root_d = math.sqrt(config.d_model)
        scales = ((root_d / norm_b, root_d / norm_f) if config.normalize_inputs else (1.0, 1.0))
        with torch.no_grad():  # the residual stream's large mean is not a feature
            model.b_dec_B.copy_((mean_b * scales[0]).to(model.b_dec_B))
            model.b_dec_F.copy_((mean_f * scales[1]).to(model.b_dec_F))
        st = _State(0, 0, scales, torch.zeros(model.d_sae, dtype=torch.long), [], [0.0] * 5)
    st.since_fired = st.since_fired.to(device)
    order = _BatchOrder(train_idx, config.batch_size, config.seed)
    end = config.steps if stop_after is None else min(config.steps, st.step + stop_after)
    window = torch.tensor(st.window, dtype=torch.float64, device=device)
    t0, start_step = time.perf_counter(), st.step
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=st.step, desc="train crosscoder", unit="step")
    model.train()
    while st.step < end:
        idx = order.indices(st.step)
        x_b = rows_base[idx.to(rows_base.device)].to(device, torch.float32) * st.scales[0]
        x_f = rows_finetuned[idx.to(rows_finetuned.device)].to(device, torch.float32) * st.scales[1]
        res = train_step(model, opt, x_b, x_f, st.since_fired > config.dead_window, st.step)
        st.since_fired += 1
        st.since_fired[res.fired] = 0
        st.step += 1
        st.tokens += x_b.shape[0]
        window += torch.stack([res.loss, res.mse_base, res.mse_finetuned, res.aux.to(res.loss),
                               res.l0.to(res.loss)]).double()
        st.window_steps += 1
        if st.step % config.log_every == 0 or st.step == config.steps:
            point = _curve_point(window / st.window_steps, st, config)
            window.zero_()
            st.window_steps = 0
            if not math.isfinite(point["loss"]):
                raise CrosscoderError(f"loss became {point['loss']} by step {st.step}; lower lr "
                                      f"(now {config.lr}) or check the rows for outliers")
            st.curve.append(point)
        if out_path is not None and st.step % config.checkpoint_every == 0 \
                and st.step < config.steps:
            st.window = window.tolist()
            _save_checkpoint(out_path, model, opt, st, fingerprint)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    final = copy.deepcopy(model)
    final.fold_input_scale(*st.scales)
    alive = (st.since_fired <= config.dead_window).cpu()
    metrics = _training_metrics(st, config, seconds, st.step - start_step, alive,
                                len(train_idx), len(held_idx))
    if st.step < config.steps:
        st.window = window.tolist()
        if out_path is not None:
            _save_checkpoint(out_path, model, opt, st, fingerprint)
        metrics["finished"] = False
        return final, metrics
    metrics |= evaluate_crosscoder(final, rows_base[held_idx.to(rows_base.device)],
                                   rows_finetuned[held_idx.to(rows_finetuned.device)], alive)
    metrics["finished"] = True
    if out_path is not None:
        save_crosscoder(final, out_path, metrics, fingerprint)
        shutil.rmtree(out_path / CHECKPOINT, ignore_errors=True)
    return final, metrics


def _curve_point(means: torch.Tensor, st: _State, cfg: CrosscoderConfig) -> dict[str, float]:
    stats = means.tolist()
    return {"step": st.step, "loss": stats[0], "mse_base": stats[1], "mse_finetuned": stats[2],
            "aux": stats[3], "l0": stats[4], "lr": cfg.lr_at(st.step - 1),
            "dead": int((st.since_fired > cfg.dead_window).sum())}


def _training_metrics(st: _State, cfg: CrosscoderConfig, seconds: float, steps_run: int,
                      alive: torch.Tensor, n_train: int, n_held: int) -> dict[str, Any]:
    return {"steps": st.step, "tokens_seen": st.tokens, "loss_curve": st.curve,
            "rows": {"train": n_train, "heldout": n_held},
            "l0_train": st.curve[-1]["l0"] if st.curve else None,
            "dead_latents": int((~alive).sum()), "d_sae": cfg.n_latents,
            "input_scale": {"base": st.scales[0], "finetuned": st.scales[1]},
            "train_seconds": seconds,
            "tokens_per_s": steps_run * cfg.batch_size / seconds if seconds > 0 else None}


@torch.no_grad()
def evaluate_crosscoder(model: Crosscoder, rows_base: torch.Tensor, rows_finetuned: torch.Tensor,
                        alive: torch.Tensor | None = None) -> dict[str, Any]:
    """Held-out quality with the inference rule: explained variance (1 − SSE/SST) and MSE per
    model, L0, latents that never fire on these rows, the inference threshold, and the shares of
    the decoder-norm classes among ``alive`` latents (default: all)."""
    dev = model.W_enc.device
    n = rows_base.shape[0]
    sums = {m: torch.zeros(rows_base.shape[1], dtype=torch.float64) for m in MODEL_KEYS}
    sq = {m: 0.0 for m in MODEL_KEYS}
    sse = {m: 0.0 for m in MODEL_KEYS}
    l0, fired = 0.0, torch.zeros(model.d_sae, dtype=torch.bool)
    for lo in range(0, n, EVAL_CHUNK):
        hb = rows_base[lo:lo + EVAL_CHUNK].to(dev, torch.float32)
        hf = rows_finetuned[lo:lo + EVAL_CHUNK].to(dev, torch.float32)
        acts = model.encode(hb, hf)
        recs = model.decode(acts)
        for m, h, rec in zip(MODEL_KEYS, (hb, hf), recs):
            hd = h.double()
            sums[m] += hd.sum(0).cpu()
            sq[m] += float(hd.pow(2).sum())
            sse[m] += float((rec.double() - hd).pow(2).sum())
        active = acts > 0
        l0 += float(active.sum())
        fired |= active.any(0).cpu()
    sst = {m: sq[m] - float(sums[m].pow(2).sum()) / n for m in MODEL_KEYS}
    classes = model.latent_classes(alive)
    counts = {c: int(len(v)) for c, v in classes.items()}
    total = sum(counts.values())
    return {"explained_variance": {m: 1 - sse[m] / sst[m] if sst[m] > 0 else float("nan")
                                   for m in MODEL_KEYS},
            "mse": {m: sse[m] / n for m in MODEL_KEYS},
            "l0": l0 / n, "dead_latents_heldout": int((~fired).sum()),
            "threshold": float(model.threshold),
            "classes": {c: (counts[c] / total if total else 0.0) for c in CLASSES},
            "class_counts": counts, "classified_latents": total,
            "cutoffs": {"base_only_max": model.cfg.base_only_max,
                        "shared_min": model.cfg.shared_min, "shared_max": model.cfg.shared_max,
                        "finetuned_only_min": model.cfg.finetuned_only_min}}


# --- save / load ---------------------------------------------------------------------------

def save_crosscoder(model: Crosscoder, path: str | Path, metrics: dict[str, Any] | None = None,
                    fingerprint: str | None = None) -> Path:
    """Write the directory format of the module docstring; ``cfg.json`` last commits it."""
    from persona_probe.provenance import provenance

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dt = getattr(torch, model.cfg.save_dtype)
    tensors = {k: v.detach().to("cpu", dt).contiguous() for k, v in model.state_dict().items()}
    atomic_write(path / WEIGHTS, lambda tmp: save_file(tensors, str(tmp),
                                                       metadata={"format": FORMAT}))
    if metrics is not None:
        write_json(path / METRICS_JSON, metrics)
    write_json(path / CFG_JSON, {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "architecture": "batchtopk_crosscoder", "config": model.cfg.to_dict(),
        "d_model": model.d_model, "d_sae": model.d_sae, "hook": model.hook,
        "layer_convention": LAYER_CONVENTION, "models": model.models,
        "input_scale": model.input_scale, "input_scale_folded": True,
        "threshold": float(model.threshold), "dtype": model.cfg.save_dtype,
        "fingerprint": fingerprint, "provenance": provenance(model.cfg.seed),
        "sha256": {WEIGHTS: sha256_file(path / WEIGHTS)}})
    return path


def load_crosscoder(path: str | Path, device: str = "cpu", dtype: str | None = None,
                    ) -> Crosscoder:
    """A saved crosscoder, with the weights' sha256 checked against ``cfg.json``. ``dtype``
    None means float32 on CPU (half-precision matmuls are slow there), the saved dtype
    elsewhere."""
    path = Path(path)
    if not (path / CFG_JSON).is_file() or not (path / WEIGHTS).is_file():
        raise CrosscoderLoadError(f"{path} is not a crosscoder directory (needs {CFG_JSON} and "
                                  f"{WEIGHTS}); train one with train_crosscoder(..., out=)")
    try:
        meta = read_json(path / CFG_JSON)
        if meta.get("format") != FORMAT:
            raise CrosscoderLoadError(f"{path / CFG_JSON} is not a {FORMAT} config (format "
                                      f"{meta.get('format')!r}); is this an SAE directory? "
                                      "Load SAEs with persona_probe.sae.load_sae")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise CrosscoderLoadError(f"{path} was written by a newer persona_probe (format "
                                      f"version {meta['format_version']}); upgrade persona_probe")
        cfg = CrosscoderConfig.from_dict(meta["config"], where=str(path / CFG_JSON))
        digest = meta["sha256"][WEIGHTS]
    except CrosscoderLoadError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CrosscoderLoadError(f"{path / CFG_JSON} is unreadable ({type(exc).__name__}: "
                                  f"{exc}); retrain the crosscoder or restore the file") from None
    if sha256_file(path / WEIGHTS) != digest:
        raise CrosscoderLoadError(f"{path / WEIGHTS} is corrupted or truncated (sha256 differs "
                                  f"from the one in {CFG_JSON}); restore it from its source or "
                                  "retrain the crosscoder")
    try:
        tensors = load_file(str(path / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types
        raise CrosscoderLoadError(f"{path / WEIGHTS} is unreadable ({exc}); retrain it") from None
    model = Crosscoder(cfg, input_scale=meta.get("input_scale"), models=meta.get("models"))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        raise CrosscoderLoadError(f"{path / WEIGHTS} holds tensors {got}, its config describes "
                                  f"{expected}; the files do not belong together, retrain")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    if dtype is None:
        dtype = "float32" if str(device).startswith("cpu") else meta.get("dtype", "float32")
    return model.to(device=device, dtype=getattr(torch, dtype)).eval()


# --- intervention --------------------------------------------------------------------------

class _BaseStop(Exception):
    """Ends the base model's pass once the crosscoder's hook point has been read."""


def _is_cache(value: Any) -> bool:
    """A KV cache, whatever the keyword (``past_key_values``; ``cache`` in transformers 5)."""
    return hasattr(value, "get_seq_length") or (
        isinstance(value, (tuple, list)) and bool(value) and isinstance(value[0], (tuple, list))
        and bool(value[0]) and isinstance(value[0][0], torch.Tensor))


def _cache_length(cache: Any) -> int:
    """Tokens already in a KV cache (HF Cache objects or legacy tuples)."""
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    try:
        return int(cache[0][0].shape[-2])
    except (TypeError, IndexError, AttributeError):
        return 1  # unknown kind of cache: assume it holds something


class PartnerCache:
    """The other model's residuals at a crosscoder's hook, by (model, its state, hook, exact
    input), for ``paired_latent_ablation``. The state (parameter edit counters, dtypes, hook
    count) keeps an entry made under a steering context or before an in-place weight edit
    from being read outside it; a weight swap that leaves all three unchanged (e.g. copying
    new values into a parameter with ``.data``) is not seen, so do not do that while a cache
    is in use. Entries of a model that has been freed go with it (weak keys)."""

    def __init__(self) -> None:
        import weakref

        self._by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @staticmethod
    def _digest(call: Mapping[str, torch.Tensor]) -> str:
        h = hashlib.sha256()
        for name in sorted(call):
            t = call[name].detach().cpu().contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype (bf16 too)
        return h.hexdigest()

    @staticmethod
    def _state(model: nn.Module) -> str:
        """What else decides the model's residual: its parameters' in-place edit counters and
        dtypes, and the hooks on its modules (a steer / ablate / shift context adds some), so
        an entry made in one state is never read in another."""
        versions = sum(int(p._version) for p in model.parameters())
        dtypes = sorted({str(p.dtype) for p in model.parameters()})
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        return f"v{versions}:{','.join(dtypes)}:h{hooks}"

    def key(self, model: nn.Module, hook: str, call: Mapping[str, torch.Tensor],
            ) -> tuple[nn.Module, str]:
        return model, f"{hook}:{self._state(model)}:{self._digest(call)}"

    def __contains__(self, key: tuple[nn.Module, str]) -> bool:
        return key[1] in self._by_model.get(key[0], {})

    def __getitem__(self, key: tuple[nn.Module, str]) -> torch.Tensor:
        return self._by_model[key[0]][key[1]]

    def __setitem__(self, key: tuple[nn.Module, str], value: torch.Tensor) -> None:
        self._by_model.setdefault(key[0], {})[key[1]] = value

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_model.values())


@contextmanager
def paired_latent_ablation(finetuned: Subject, base: Subject, crosscoder: Crosscoder,
                           latents: Iterable[int], side: str = "finetuned",
                           partner_cache: PartnerCache | None = None) -> Iterator[None]:
    """Remove crosscoder latents from one model's residual for the ``with`` block, the other
    model supplying its half of the code. ``side="finetuned"`` (default): h_F ← h_F −
    Σᵢ aᵢ·W_dec_F[i]; ``side="base"``: h_B ← h_B − Σᵢ aᵢ·W_dec_B[i]; in both, a = encode(h_B, h_F)
    with the partner's residual read at the same token, so the crosscoder's error term (and
    every other latent) stays as it was.

    Every forward pass of the edited model first runs the partner on the same input_ids /
    attention_mask / position_ids (stopped at the hook). Teacher-forced scoring only:
    generation with a KV cache feeds one token at a time, and the partner's pass would lack
    the context, so that is refused with an error.

    ``partner_cache``: a ``PartnerCache`` that keeps the other model's residuals by input, so
    scoring the same sequences under many edits (screening, null draws) runs the other model
    once per batch instead of once per edit. Only valid while the other model is unchanged."""
    if side not in MODEL_KEYS:
        raise CrosscoderError(f"side {side!r}: use 'finetuned' (edit the finetuned model) or "
                              "'base' (edit the base model)")
    idx = sorted({int(i) for i in latents})
    if not idx or idx[0] < 0 or idx[-1] >= crosscoder.d_sae:
        raise CrosscoderError(f"latents {idx or '[]'} not in 0..{crosscoder.d_sae - 1}")
    if base.model is finetuned.model:
        raise CrosscoderError("base and finetuned are the same model object; load the base "
                              "model separately (a crosscoder diffs two models)")
    for who, s in (("base", base), ("finetuned", finetuned)):
        if s.d_model != crosscoder.d_model:
            raise CrosscoderError(f"the {who} model {s.spec} has d_model {s.d_model}, the "
                                  f"crosscoder {crosscoder.d_model}; use the models it was "
                                  "trained on")
    edited, partner = (finetuned, base) if side == "finetuned" else (base, finetuned)
    hp = parse_hook(crosscoder.hook, edited.n_layers)
    parse_hook(crosscoder.hook, partner.n_layers)
    if hp.site == "mid":
        raise CrosscoderError(f"{hp.name} is read-only with torch hooks; train the crosscoder "
                              "at hook_resid_pre or hook_resid_post")
    W = (crosscoder.W_dec_F if side == "finetuned" else crosscoder.W_dec_B)[idx].detach()
    slot: dict[str, torch.Tensor] = {}
    names = ("input_ids", "attention_mask", "position_ids")

    def grab(resid: torch.Tensor) -> None:
        slot["partner"] = resid.detach()
        raise _BaseStop

    def before(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        slot.clear()
        call = {n: kwargs.get(n, args[i] if len(args) > i else None)
                for i, n in enumerate(names)}
        if call["input_ids"] is None or kwargs.get("inputs_embeds") is not None:
            raise CrosscoderError("paired_latent_ablation needs input_ids (the other model must "
                                  "see the same tokens); inputs_embeds are model-specific")
        caches = [v for v in (*args, *kwargs.values()) if _is_cache(v)]
        if any(_cache_length(c) > 0 for c in caches):
            raise CrosscoderError("paired_latent_ablation does not support generation with a "
                                  "KV cache (the other model's pass would lack the cached "
                                  "context); score teacher-forced sequences, or generate with "
                                  "use_cache=False")
        dev = partner.device
        call = {n: v.to(dev) for n, v in call.items() if v is not None}
        key = (partner_cache.key(partner.model, hp.name, call) if partner_cache is not None
               else None)
        if key is not None and key in partner_cache:
            slot["partner"] = partner_cache[key]
            return
        with torch.no_grad(), residual_hooks(partner.model, [(hp, grab)]):
            try:
                partner.model(**call, use_cache=False)
            except _BaseStop:
                pass
        if key is not None and "partner" in slot:
            partner_cache[key] = slot["partner"]
        if "partner" not in slot:
            raise CrosscoderError(f"the {'base' if side == 'finetuned' else 'finetuned'} "
                                  f"model's pass never reached {hp.name}")

    def edit(resid: torch.Tensor) -> torch.Tensor:
        other = slot.get("partner")
        if other is None or other.shape != resid.shape:
            got = None if other is None else tuple(other.shape)
            raise CrosscoderError(
                f"the other model's activation {got} does not match the edited residual "
                f"{tuple(resid.shape)} at {hp.name}; paired_latent_ablation works on whole "
                "teacher-forced forward passes of the edited model (not KV-cache generation "
                "or direct layer calls)")
        flat = resid.reshape(-1, resid.shape[-1]).to(W.device)
        flat_other = other.reshape(-1, other.shape[-1]).to(W.device)
        h_b, h_f = (flat_other, flat) if side == "finetuned" else (flat, flat_other)
        acts = crosscoder.encode_latents(h_b, h_f, idx)
        removed = (acts @ W.to(acts.dtype)).reshape(resid.shape).to(resid.device, resid.dtype)
        return resid - removed

    handle = edited.model.register_forward_pre_hook(before, with_kwargs=True)
    try:
        with residual_hooks(edited.model, [(hp, edit)]):
            yield
    finally:
        handle.remove()
        slot.clear()
