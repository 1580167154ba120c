"""Trained Localize-and-Stitch masks: one binary mask per expert, trained on its own domain's rows.

For expert i with task vector τ = θᵢ − θ₀ (float32, over the mergeable tensors only: embeddings and the
output head are excluded unless ``merge_embeddings``):

    t   = dataless threshold: the ⌈s·N⌉-th largest |τ| over all mergeable entries (exact,
          :mod:`mergebench.methods.topk`; ``topk_scope: tensor``: per tensor), the value the merge engine computes
    S⁰  = +sigmoid_bias where |τ| ≥ t, −sigmoid_bias elsewhere
    θ(S) = θ₀ + σ(S) ⊙ τ                      (non-mergeable tensors stay θ₀, as in the merged model)
    L(S) = (1/R) Σ_r ℓ_r(θ(S))                ℓ_r = mean response-token NLL of row r, R rows
    S^{e+1} = S^e − learning_rate · ∂L/∂S − l1_strength · σ'(S^e)      once per epoch (full batch)
    M   = [σ(S^E) ≥ 0.5]                       stored as bool under each mergeable tensor name

∂L/∂S = (∂L/∂θ)|θ(S) ⊙ τ ⊙ σ'(S): θ(S) is materialised once per epoch as a leaf tensor, the batches run
through ``torch.func.functional_call`` and accumulate ∂L/∂θ, and the chain rule is applied at the end. The
base model's own parameters are never modified, so one loaded base could serve every expert.
With ``learning_rate = 0`` and ``l1_strength = 0`` (or ``epochs = 0``) no forward pass runs and the masks are
exactly the dataless ones.

Like the authors' code, one full-batch step is taken per epoch (gradients averaged over all rows, hence
the large default learning rate 1e8). Unlike it, the L1 term is the gradient of ``l1_strength · Σσ(S)``,
which shrinks the mask; the authors' update adds ``l1_strength · sign(S) · σ'(S)``, which grows |S|.

Memory: the base model in float32 (4 bytes × parameters) + τ, S, θ(S) and its gradient over the mergeable
tensors (4 × 4 bytes × mergeable parameters) + activations of one batch. While τ is taken both models are
loaded (τ reuses the expert's parameter memory, the rest of the expert is then freed). Output: a bool file,
1 byte per mergeable parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mergebench.errors import StatisticsError
from mergebench.methods.topk import GlobalTopK, tensor_thresholds
from mergebench.stats.data import Sample, batches, per_sample_nll, require_responses

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskConfig:
    sparsity: float = 0.1
    sigmoid_bias: float = 3.0
    learning_rate: float = 1e8
    epochs: int = 1
    l1_strength: float = 0.0
    num_samples: int = 1000
    topk_scope: Literal["global", "tensor"] = "global"
    merge_embeddings: bool = False


def task_vectors(base: nn.Module, expert: nn.Module, mergeable: Callable[[str], bool]) -> dict[str, Tensor]:
    """``{name: θᵢ − θ₀}`` in float32 over the mergeable parameters (computed in the expert's memory)."""
    base_params = dict(base.named_parameters())
    deltas = {}
    with torch.no_grad():
        for name, p in expert.named_parameters():
            if mergeable(name) and p.is_floating_point():
                theta0 = base_params.get(name)
                if theta0 is None or theta0.shape != p.shape:
                    found = "missing" if theta0 is None else f"{tuple(theta0.shape)}"
                    raise StatisticsError(f"Parameter '{name}' is {tuple(p.shape)} in the expert but {found} in the "
                                          "base, so it has no task vector.",
                                          hint="Experts must be fine-tunes of the base: same architecture, "
                                               "tensor names and shapes.")
                deltas[name] = p.detach().float().sub_(theta0.detach().float().to(p.device))
    if not deltas:
        raise StatisticsError("The expert has no mergeable floating-point parameter, so there is no mask to train.",
                              hint="Check the models (merge_embeddings: true also masks embeddings and the head).")
    return deltas


def dataless_masks(deltas: dict[str, Tensor], sparsity: float, scope: str) -> dict[str, Tensor]:
    """``[|τ| ≥ t]`` per tensor with the global (default) or per-tensor top-s threshold."""
    if scope == "tensor":
        return {name: tau.abs() >= tensor_thresholds(tau[None], sparsity)[0] for name, tau in deltas.items()}
    acc = GlobalTopK(1, sparsity)
    for pass_index in range(acc.passes):
        for tau in deltas.values():
            acc.update(pass_index, tau[None].cpu())
        acc.finish_pass(pass_index)
    threshold = acc.thresholds()[0]
    return {name: tau.abs() >= threshold.to(tau.device) for name, tau in deltas.items()}


def mask_gradient(model: nn.Module, deltas: dict[str, Tensor], logits: dict[str, Tensor], samples: Sequence[Sample],
                  *, pad_id: int, batch_size: int, device: str) -> dict[str, Tensor]:
    """``∂L/∂S`` at ``S = logits``, L = mean over samples of each sample's mean response NLL under θ(S).

    By the chain rule ``∂L/∂S = (∂L/∂θ) ⊙ τ ⊙ σ(S)(1 − σ(S))``: θ(S) is built once as a leaf, the batches
    accumulate ``∂L/∂θ`` into its ``.grad``, and the product is taken at the end (4 mergeable-size tensors:
    τ, S, θ(S), ∂L/∂θ).
    """
    require_responses(samples)
    base_params = dict(model.named_parameters())
    thetas = {}
    with torch.no_grad():
        for name, tau in deltas.items():
            thetas[name] = torch.sigmoid(logits[name]).mul_(tau).add_(base_params[name]).requires_grad_(True)
    for batch in batches(samples, batch_size, pad_id, device):
        with torch.enable_grad():  # grad mode is global: lighteval, for one, switches it off at import
            out = torch.func.functional_call(model, thetas, args=(), kwargs={
                "input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False})
            loss = per_sample_nll(out.logits, batch.labels).sum() / len(samples)
            loss.backward(inputs=list(thetas.values()))
    grads = {}
    with torch.no_grad():
        for name in list(thetas):
            theta = thetas.pop(name)
            grad = theta.grad if theta.grad is not None else torch.zeros_like(theta)
            sig = torch.sigmoid(logits[name])
            grads[name] = grad.mul_(deltas[name]).mul_(sig.mul_(1.0 - sig))
    return grads


def train_masks(model: nn.Module, deltas: dict[str, Tensor], samples: Sequence[Sample], config: MaskConfig, *,
                pad_id: int, batch_size: int = 8, device: str = "cpu") -> dict[str, Tensor]:
    """Trained binary masks (bool, one per mergeable tensor) for one expert; see the module docstring.

    Args:
        model: the base model (float32, on ``device``); its parameters are read, never written.
        deltas: ``{name: τ}`` from :func:`task_vectors`.
        samples: the expert's own-domain rows, each with ≥ 1 response token.
    """
    require_responses(samples)
    initial = dataless_masks(deltas, config.sparsity, config.topk_scope)
    if config.epochs == 0 or (config.learning_rate == 0.0 and config.l1_strength == 0.0):
        logger.info("learning_rate = l1_strength = 0 or epochs = 0: trained masks are the dataless masks")
        return initial
    logits = {name: torch.where(m, config.sigmoid_bias, -config.sigmoid_bias).float() for name, m in initial.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    for epoch in range(config.epochs):
        grads = mask_gradient(model, deltas, logits, samples, pad_id=pad_id, batch_size=batch_size, device=device)
        with torch.no_grad():
            for name, s in logits.items():
                sig = torch.sigmoid(s)
                slope = sig.mul_(1.0 - sig)                     # σ'(S)
                step = grads.pop(name).mul_(config.learning_rate)
                s.sub_(step.add_(slope, alpha=config.l1_strength))
        kept = sum(int((torch.sigmoid(s) >= 0.5).sum()) for s in logits.values())
        total = sum(s.numel() for s in logits.values())
        logger.info("mask epoch %d/%d: %.4f of %d mergeable entries kept",
                    epoch + 1, config.epochs, kept / total, total)
    return {name: torch.sigmoid(s) >= 0.5 for name, s in logits.items()}
