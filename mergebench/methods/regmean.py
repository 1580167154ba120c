"""RegMean: merge linear layers by regression on their inputs (Jin et al., 2023, arXiv:2212.09849).

For each linear weight W (out × in) inside the transformer blocks:
  Gᵢ = mean over tokens of x xᵀ     (x: the layer's input as expert i runs on its own domain's validation rows)
  G̃ᵢ = α·Gᵢ + (1 − α)·diag(Gᵢ)
  Wᵀ = (Σᵢ wᵢG̃ᵢ)⁻¹ Σᵢ wᵢG̃ᵢWᵢᵀ       (minimises Σᵢ wᵢ‖XᵢW'ᵀ − XᵢWᵢᵀ‖² with off-diagonals shrunk by α)
Every other mergeable tensor (norms, biases, a weight without a Gram):  θ_merged = Σᵢ wᵢθᵢ / Σᵢ wᵢ
Then θ = θ₀ + λ·(θ_merged − θ₀)   (λ = 1 returns θ_merged exactly)

The Gram matrices come from :mod:`mergebench.stats.gram`. Inputs are expert weights, not deltas.

Parameters: ``alpha`` α ∈ [0, 1] (0.5; α = 0 uses only the diagonals, a per-input-feature weighted
mean), ``num_samples`` ≥ 1 (1000, rows per expert for the Gram stage), ``scaling`` λ (1.0). Recipe
weights wᵢ (default 1) weight each expert's regression term.

Solving: ``A = Σᵢ wᵢG̃ᵢ``, ``B = Σᵢ wᵢG̃ᵢWᵢᵀ`` accumulated one expert at a time, then a Cholesky solve of the
Jacobi-equilibrated system ``(SAS)·Y = SB``, ``Wᵀ = SY`` with ``S = diag(A)^-½``. Equilibrating matters: the
diagonal of a Gram matrix can span many decades (SmolLM2's layer-11 down-projection: 0.03 to 1.6·10⁶), so
unscaled pivots look singular although ``SAS = α·C + (1 − α)·I`` (C a correlation matrix) is well conditioned
for any α < 1.
An input feature that is never active (``diag(A) = 0``; A is PSD, so its whole row and column are 0) is not
constrained by the data: its column keeps the experts' mean. When the equilibrated matrix is still not
positive definite or ill-conditioned (Cholesky pivot ratio ``(min lⱼⱼ / max lⱼⱼ)²`` below :data:`RCOND`, e.g.
α = 1 with fewer tokens than features), a warning is logged and the least-squares solution closest to the
experts' mean is used: ``Y = Ȳ + Ã⁺(SB − ÃȲ)`` (Ã = SAS, Ȳ = S⁻¹W̄ᵀ, Ã⁺ its symmetric pseudo-inverse), which
keeps the experts' mean along directions the data never excites (plain ``A⁺B`` would set them to 0).

Differences: the paper's code sums x xᵀ over tokens (we average, which only rescales G per expert — it
changes the merge when experts saw different token counts: each expert gets equal say here) and inverts
with ``torch.inverse``; MergeBench's reference paired experts with the wrong domain's data (fixed by
construction in :mod:`mergebench.stats`). mergekit and peft have no RegMean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from mergebench.errors import StatisticsError
from mergebench.methods.common import expert_weights, f32, rescale_from_base, weighted_mean
from mergebench.methods.registry import MergeContext, Params, PerExpert, Range, param, register

logger = logging.getLogger(__name__)

RCOND = 1e-6
"""Smallest accepted Cholesky pivot ratio of the equilibrated system before falling back to the pseudo-inverse."""


@dataclass(frozen=True)
class RegMeanParams(Params):
    alpha: float = param(0.5, "α: scale of the off-diagonal Gram entries (1 = plain regression, 0 = diagonal only).",
                         within=Range(ge=0, le=1))
    num_samples: int = param(1000, "Validation rows of each expert's own domain used for its Gram matrices.",
                             within=Range(ge=1))
    scaling: float = param(1.0, "λ: θ = θ₀ + λ·(θ_regmean − θ₀).")


def solve_normal_equations(a: Tensor, b: Tensor, fallback: Tensor, name: str) -> Tensor:
    """``X`` with ``A X = B`` (A symmetric PSD ``[in, in]``, B ``[in, out]``); see the module docstring.

    ``fallback`` (``[in, out]``, the experts' mean Wᵀ) fills the rows of never-active inputs and anchors the
    least-squares solution when A is singular. ``a`` and ``b`` are overwritten (they can be 0.8 GB each at
    Llama-3.1-8B's down-projection).
    """
    diagonal = a.diagonal().clone()
    live = diagonal > 0
    scale = torch.where(live, diagonal.clamp_min(torch.finfo(a.dtype).tiny).rsqrt(), torch.zeros_like(diagonal))
    a.mul_(scale[:, None]).mul_(scale[None, :])                        # Ã = SAS: unit diagonal on live inputs
    a.diagonal().masked_fill_(~live, 1.0)                              # dead inputs: Ã row = eᵢ, so Yᵢ = 0
    b.mul_(scale[:, None])                                             # SB (dead rows are 0 already)
    factor, info = torch.linalg.cholesky_ex(a)
    pivot = factor.diagonal()
    rcond = float((pivot.min() / pivot.max()) ** 2) if int(info) == 0 else 0.0
    if rcond >= RCOND:
        y: Tensor = torch.cholesky_solve(b, factor)
        del factor
        if bool(torch.isfinite(y).all()):
            return torch.where(live[:, None], y.mul_(scale[:, None]), fallback)
    del factor
    logger.warning("RegMean: the Gram sum of '%s' is singular or ill-conditioned (equilibrated Cholesky pivot "
                   "ratio %.3g < %g); using the least-squares solution closest to the experts' mean.",
                   name, rcond, RCOND)
    anchor = fallback / torch.where(live, scale, torch.ones_like(scale))[:, None]   # Ȳ = S⁻¹W̄ᵀ on live rows
    b.sub_(a @ anchor)
    y = anchor.add_(torch.linalg.pinv(a, hermitian=True) @ b)
    return torch.where(live[:, None], y.mul_(scale[:, None]), fallback)


def regmean_linear(weights: Tensor, grams: PerExpert, alpha: float, coefficients: tuple[float, ...],
                   name: str) -> Tensor:
    """RegMean of one linear weight: ``weights`` ``[n, out, in]``, ``grams`` ``[n, in, in]`` → ``[out, in]``.

    The Gram matrices are consumed one expert at a time (a lazy ``grams`` is read one row per step)."""
    n, _, d_in = weights.shape
    if grams.shape != (n, d_in, d_in):
        raise StatisticsError(f"Tensor '{name}': Gram statistics are {tuple(grams.shape)} but the weights "
                              f"{tuple(weights.shape)} need ({n}, {d_in}, {d_in}).",
                              hint="Recompute the 'gram' statistics for these models.")
    a = torch.zeros(d_in, d_in, dtype=torch.float32, device=weights.device)
    b = torch.zeros(d_in, weights.shape[1], dtype=torch.float32, device=weights.device)
    diagonal = torch.zeros(d_in, dtype=torch.float32, device=weights.device)
    for w_i, gram, c in zip(weights, grams, coefficients, strict=True):
        g_i = f32(gram)
        d_i = g_i.diagonal()
        a.add_(g_i, alpha=alpha * c)                                   # Σ α·wᵢGᵢ
        b.addmm_(g_i, w_i.T, alpha=alpha * c)                          # Σ α·wᵢGᵢWᵢᵀ
        b.addcmul_(d_i[:, None], w_i.T, value=(1.0 - alpha) * c)       # Σ (1−α)·wᵢ diag(Gᵢ) Wᵢᵀ
        diagonal.add_(d_i, alpha=(1.0 - alpha) * c)
        del gram, g_i, d_i                                             # before the next expert's Gram is read
    a.diagonal().add_(diagonal)                                        # + Σ (1−α)·wᵢ diag(Gᵢ)
    mean = weighted_mean(weights, coefficients).T
    return solve_normal_equations(a, b, mean, name).T


@register(
    "regmean",
    params=RegMeanParams,
    title="RegMean: merge linear layers by regression on their inputs (Jin et al., 2023)",
    paper="https://arxiv.org/abs/2212.09849",
    formula="""
        For each linear weight W (out × in) inside the transformer blocks:
          Gᵢ = mean over tokens of x xᵀ     (x: the layer's input as expert i runs on its own domain's validation rows)
          G̃ᵢ = α·Gᵢ + (1 − α)·diag(Gᵢ)
          Wᵀ = (Σᵢ wᵢG̃ᵢ)⁻¹ Σᵢ wᵢG̃ᵢWᵢᵀ       (minimises Σᵢ wᵢ‖XᵢW'ᵀ − XᵢWᵢᵀ‖² with off-diagonals shrunk by α)
        Every other mergeable tensor (norms, biases, a weight without a Gram):  θ_merged = Σᵢ wᵢθᵢ / Σᵢ wᵢ
        Then θ = θ₀ + λ·(θ_merged − θ₀)   (λ = 1 returns θ_merged exactly)
    """,
    inputs="weights",
    version=2,  # 2: the equilibrated Cholesky solve (version 1 fell back to a truncating pseudo-inverse)
    grid={"alpha": (0.1, 0.5, 0.9)},
    data_stats="gram",
    normalises_weights=True,
)
def regmean(base: Tensor, experts: Tensor, p: RegMeanParams, ctx: MergeContext) -> Tensor:
    base, experts = f32(base), f32(experts)
    grams = ctx.data.get("gram")
    if grams is None:
        merged = weighted_mean(experts, ctx.weights)
    elif experts.dim() != 3:
        raise StatisticsError(f"Tensor '{ctx.name}' has Gram statistics but is not a matrix "
                              f"(shape {tuple(experts.shape[1:])}).")
    else:
        merged = regmean_linear(experts, grams, p.alpha, expert_weights(ctx.weights, experts.shape[0]), ctx.name)
    return rescale_from_base(base, merged, p.scaling)
