"""Task Arithmetic (Ilharco et al., 2023, arXiv:2212.04089).

θ = θ₀ + λ · Σᵢ wᵢ τᵢ      (τᵢ = θᵢ − θ₀; wᵢ = 1 unless the recipe gives per-expert weights)

Same as mergekit's ``task_arithmetic`` with ``normalize: false`` and peft's ``task_arithmetic``
(which multiplies each τᵢ by its weight and sums); neither applies a separate λ, so λ·wᵢ there.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mergebench.methods.common import weighted_sum
from mergebench.methods.registry import MergeContext, Params, param, register


@dataclass(frozen=True)
class TaskArithmeticParams(Params):
    ELEMENTWISE = True

    scaling: float = param(1.0, "λ, applied to the summed task vectors.")


@register(
    "task_arithmetic",
    params=TaskArithmeticParams,
    title="Task Arithmetic (Ilharco et al., 2023)",
    paper="https://arxiv.org/abs/2212.04089",
    formula="θ = θ₀ + λ · Σᵢ wᵢ τᵢ      (τᵢ = θᵢ − θ₀; wᵢ = 1 unless the recipe gives per-expert weights)",
    grid={"scaling": (0.2, 0.4, 0.6, 0.8, 1.0)},
)
def task_arithmetic(base: Tensor, deltas: Tensor, p: TaskArithmeticParams, ctx: MergeContext) -> Tensor:
    return base.add_(weighted_sum(deltas, ctx.weights), alpha=p.scaling)
