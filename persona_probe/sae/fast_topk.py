"""A sparse training step for TopK SAEs: the same loss and gradients as sae-lens's
``TopKTrainingSAE.training_forward_pass``, without dense work the maths does not need.

Only the encoder's pre-activations are dense (every latent must be scored to pick the top k).
Everything after the top-k choice touches k decoder rows per token: the reconstruction is an
``embedding_bag`` over the chosen rows, and all four parameter gradients are sparse-dense
products with k non-zeros per token, sharing one latent-major index (`_Pattern`). A dense step
spends three more B×d×D matmuls (decode, and two in backward); this one spends O(B·k·d) on them.
``tests/test_sae.py`` checks loss and every parameter gradient against the sae-lens reference.

Two differences, both exact in real arithmetic:
- with ``rescale_acts_by_decoder_norm`` the decoder norm ``n`` multiplies the pre-activation and
  divides it again in decode (``relu(pre·n)/n = relu(pre)``), so the gradient through ``n`` is
  zero; sae-lens lets autograd find that zero, here ``n`` only ranks the latents;
- the inputs are data, so no gradient flows to them; the gradient reaching ``b_dec`` through
  ``x − b_dec`` is the column sum, ``−(∂L/∂b_enc)·W_encᵀ``, one vector-matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import warnings

import numpy as np
import torch
import torch.nn.functional as F

# The CSR matrices built here are valid by construction; torch's beta notice is noise.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class _Pattern:
    """Where the non-zeros are: token-major (B×D CSR, for the forward direction) and
    latent-major (D×B CSR, for the weight gradients), from one sort of the chosen latents."""

    def __init__(self, idx: torch.Tensor, d_sae: int):
        B, k = idx.shape
        self.shape, self.d_sae, self.idx = (B, k), d_sae, idx
        self.flat = idx.reshape(-1)
        self.crow = torch.arange(0, B * k + 1, k, device=idx.device)
        if idx.device.type == "cpu":  # torch's parallel sort is slow on few cores; numpy radix
            perm = torch.from_numpy(np.argsort(self.flat.numpy(), kind="stable"))
        else:
            perm = torch.sort(self.flat, stable=True).indices
        self.perm = perm
        counts = torch.bincount(self.flat, minlength=d_sae)
        self.crow_t = torch.zeros(d_sae + 1, dtype=torch.long, device=idx.device)
        torch.cumsum(counts, 0, out=self.crow_t[1:])
        self.col_t = torch.div(perm, k, rounding_mode="floor")

    def by_token(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.flat, values.reshape(-1),
                                       (self.shape[0], self.d_sae), check_invariants=False)

    def by_latent(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, values.reshape(-1)[self.perm],
                                       (self.d_sae, self.shape[0]), check_invariants=False)


class _EncodeSelected(torch.autograd.Function):
    """pre[b, j] = (x[b] − b_dec)·W_enc[:, idx[b, j]] + b_enc[idx[b, j]], read from the dense
    scores already computed; backward touches only the selected entries."""

    @staticmethod
    def forward(ctx, b_dec, W_enc, b_enc, x_in, selected, pattern, apply_b_dec):  # type: ignore[override]
        ctx.save_for_backward(W_enc, x_in)
        ctx.pattern, ctx.apply_b_dec = pattern, apply_b_dec
        return selected

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        W_enc, x_in = ctx.saved_tensors
        p: _Pattern = ctx.pattern
        grad_b_enc = torch.zeros(p.d_sae, dtype=g.dtype, device=g.device)
        grad_b_enc.index_add_(0, p.flat, g.reshape(-1))
        grad_W_enc = torch.sparse.mm(p.by_latent(g), x_in).t()
        grad_b_dec = -(grad_b_enc @ W_enc.t()) if ctx.apply_b_dec else None
        return grad_b_dec, grad_W_enc, grad_b_enc, None, None, None, None


class _DecodeSelected(torch.autograd.Function):
    """recon[b] = Σⱼ a[b, j]·W_dec[idx[b, j]] (no bias), with sparse backward."""

    @staticmethod
    def forward(ctx, a, W_dec, pattern):  # type: ignore[override]
        ctx.save_for_backward(a, W_dec)
        ctx.pattern = pattern
        return F.embedding_bag(pattern.idx, W_dec, per_sample_weights=a, mode="sum")

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        a, W_dec = ctx.saved_tensors
        p: _Pattern = ctx.pattern
        g_out = g_out.contiguous()
        grad_a = torch.sparse.sampled_addmm(p.by_token(torch.zeros_like(a)), g_out, W_dec.t(),
                                            beta=0.0).values().view(p.shape)
        grad_W_dec = torch.sparse.mm(p.by_latent(a), g_out)
        return grad_a, grad_W_dec, None


@dataclass
class TopKStep:
    """What one step produced, in sae-lens's vocabulary."""

    loss: torch.Tensor
    mse_loss: torch.Tensor
    aux_loss: torch.Tensor
    top_idx: torch.Tensor      # (B, k) latents chosen per token, ascending
    top_acts: torch.Tensor     # (B, k) their activations, in sae-lens's (rescaled) units


def supports_sparse_step(sae) -> bool:
    """The sparse step covers plain TopK SAEs on float32/float64 without input normalization
    layers that the aux loss cannot handle."""
    return (sae.cfg.architecture() == "topk" and sae.W_enc.dtype in (torch.float32, torch.float64)
            and sae.cfg.normalize_activations in ("none", "expected_average_only_in")
            and getattr(sae.cfg, "reshape_activations", "none") == "none")


def _select(pattern_idx: torch.Tensor, score: torch.Tensor, norms: torch.Tensor | None,
            ) -> torch.Tensor:
    sel = score.gather(1, pattern_idx)
    return sel / norms[pattern_idx] if norms is not None else sel


def topk_training_loss(sae, sae_in: torch.Tensor, dead_neuron_mask: torch.Tensor | None,
                       ) -> TopKStep:
    """Loss of a sae-lens ``TopKTrainingSAE`` on ``sae_in`` (already normalized), with autograd
    wired to the SAE's parameters; call ``.loss.backward()`` as with the reference."""
    cfg = sae.cfg
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    x = sae_in.to(W_enc.dtype)
    with torch.no_grad():
        x_in = x - b_dec if cfg.apply_b_dec_to_input else x
        norms = W_dec.norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None
        # scores = pre·n, computed in one addmm with the norms folded into the weights
        score = (torch.addmm(b_enc * norms, x_in, W_enc * norms) if norms is not None
                 else torch.addmm(b_enc, x_in, W_enc))
        idx = score.topk(cfg.k, dim=-1, sorted=False).indices.sort(dim=-1).values
        pattern = _Pattern(idx, cfg.d_sae)
        pre_sel = _select(idx, score, norms)
    pre = _EncodeSelected.apply(b_dec, W_enc, b_enc, x_in, pre_sel, pattern,
                                cfg.apply_b_dec_to_input)
    a = pre.relu()
    recon = _DecodeSelected.apply(a, W_dec, pattern) + b_dec
    mse = (recon - x).pow(2).sum(-1).mean()
    aux = _aux_loss(sae, x, x_in, recon, score, norms, dead_neuron_mask)
    top_acts = (a * norms[idx]).detach() if norms is not None else a.detach()
    return TopKStep(mse + aux, mse, aux, idx, top_acts)


def _aux_loss(sae, x, x_in, recon, score, norms, dead_mask) -> torch.Tensor:
    """sae-lens's TopK auxiliary loss: the top dead latents (by pre-activation, no ReLU) learn to
    reconstruct the live latents' residual error."""
    if dead_mask is None or (num_dead := int(dead_mask.sum())) == 0:
        return recon.new_zeros(())
    k_aux = x.shape[-1] // 2
    scale = min(num_dead / k_aux, 1.0)
    k_aux = min(k_aux, num_dead)
    with torch.no_grad():
        aux_idx = torch.where(dead_mask[None], score, -torch.inf).topk(k_aux, sorted=False)
        aux_idx = aux_idx.indices.sort(dim=-1).values
        pattern = _Pattern(aux_idx, sae.cfg.d_sae)
        pre_sel = _select(aux_idx, score, norms)
    pre = _EncodeSelected.apply(sae.b_dec, sae.W_enc, sae.b_enc, x_in, pre_sel, pattern,
                                sae.cfg.apply_b_dec_to_input)
    recon_aux = _DecodeSelected.apply(pre, sae.W_dec, pattern)
    residual = (x - recon).detach()
    return sae.cfg.aux_loss_coefficient * scale * (recon_aux - residual).pow(2).sum(-1).mean()
