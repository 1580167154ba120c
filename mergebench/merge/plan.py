"""Plan a merge from headers and configs alone: compatibility, tensor order, output layout, memory.

Everything here is pure: it takes :class:`~mergebench.hub.models.ResolvedModel` objects (headers already read)
and returns a :class:`MergePlan`, so ``mergebench plan`` can show the whole merge and report every
incompatibility at once before a single weight byte is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mergebench.errors import IncompatibleModelsError
from mergebench.hub.models import ResolvedModel
from mergebench.methods.common import is_embedding
from mergebench.stream.format import DTYPE_NAMES, DTYPES, FLOAT_DTYPES, element_size

DEFAULT_SHARD_SIZE = 5_000_000_000
"""Largest output shard: 5 GB in Hugging Face's decimal convention (``save_pretrained``'s "5GB")."""



CONFIG_KEYS = (
    "model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
)
"""Config fields that must agree for two checkpoints to be mergeable."""

STREAM_OVERHEAD_BYTES = 256 << 20
"""Interpreter, torch and client libraries: a fixed allowance in the memory estimate."""


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    in_dtype: str
    out_dtype: str
    mergeable: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def out_bytes(self) -> int:
        return self.numel * element_size(self.out_dtype)


@dataclass(frozen=True)
class ShardPlan:
    filename: str
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class MergePlan:
    """The whole merge, decided before any weight is read."""

    tensors: tuple[TensorPlan, ...]
    """In visiting order: the base's shard order, then offset order (sequential reads)."""
    shards: tuple[ShardPlan, ...]
    n_experts: int
    bytes_per_model: dict[str, int]
    read_ahead_bytes: int

    @property
    def output_bytes(self) -> int:
        return sum(t.out_bytes for t in self.tensors)

    @property
    def largest_numel(self) -> int:
        return max((t.numel for t in self.tensors if t.mergeable), default=0)

    @property
    def peak_memory_bytes(self) -> int:
        """Upper estimate of resident memory: an fp32 stack of the experts, the fp32 base and result,
        the read-ahead budget and a fixed allowance for libraries."""
        return (self.n_experts + 2) * self.largest_numel * 4 + self.read_ahead_bytes + STREAM_OVERHEAD_BYTES

    @property
    def sharded(self) -> bool:
        return len(self.shards) > 1

    def shard_of(self) -> dict[str, str]:
        return {name: shard.filename for shard in self.shards for name in shard.tensors}



def check_compatible(base: ResolvedModel, experts: Sequence[ResolvedModel]) -> None:
    """Raise :class:`IncompatibleModelsError` listing every mismatch of configs, names, shapes, dtypes."""
    problems: list[str] = []
    for expert in experts:
        for key in CONFIG_KEYS:
            a, b = base.config.get(key), expert.config.get(key)
            if a != b and not (a is None and b is None):
                problems.append(f"config '{key}' is {a!r} in '{base.label}' but {b!r} in '{expert.label}'")
        names, other = set(base.weight_map), set(expert.weight_map)
        for name in sorted(names - other):
            problems.append(f"tensor '{name}' of '{base.label}' is missing from '{expert.label}'")
        for name in sorted(other - names):
            problems.append(f"tensor '{name}' of '{expert.label}' is not in the base '{base.label}'")
        for name in sorted(names & other):
            t0, t1 = base.tensor(name), expert.tensor(name)
            if t0.shape != t1.shape:
                problems.append(f"tensor '{name}' is {t0.shape} in '{base.label}' but {t1.shape} in '{expert.label}'")
            elif t0.dtype != t1.dtype:
                problems.append(
                    f"tensor '{name}' is {t0.dtype} in '{base.label}' but {t1.dtype} in '{expert.label}'")
    if problems:
        raise IncompatibleModelsError(problems)


def build_plan(base: ResolvedModel, experts: Sequence[ResolvedModel], *, dtype: str | None = None,
               merge_embeddings: bool = False, shard_size: int = DEFAULT_SHARD_SIZE,
               read_ahead_bytes: int = 512 << 20) -> MergePlan:
    """Check compatibility and lay out the merge.

    Args:
        dtype: output dtype for floating-point tensors as a torch name (``"bfloat16"``); default: the base's.
        merge_embeddings: merge embedding/output-head tensors too instead of copying the base's.
        shard_size: maximum bytes per output shard (a tensor larger than this gets a shard of its own).
    """
    check_compatible(base, experts)
    out_float = _dtype_code(dtype) if dtype else None
    order = sorted(base.weight_map, key=lambda n: (base.weight_map[n], base.tensor(n).begin))
    tensors = []
    for name in order:
        entry = base.tensor(name)
        is_float = entry.dtype in FLOAT_DTYPES
        tensors.append(TensorPlan(
            name=name, shape=entry.shape, in_dtype=entry.dtype,
            out_dtype=(out_float or entry.dtype) if is_float else entry.dtype,
            mergeable=is_float and bool(experts) and (merge_embeddings or not is_embedding(name)),
        ))
    bytes_per_model = {base.label: sum(base.tensor(t.name).nbytes for t in tensors)}
    for expert in experts:
        bytes_per_model[expert.label] = sum(expert.tensor(t.name).nbytes for t in tensors if t.mergeable)
    return MergePlan(tuple(tensors), _layout(tensors, shard_size), len(experts), bytes_per_model,
                     read_ahead_bytes)


def _dtype_code(name: str) -> str:
    import torch

    torch_dtype = getattr(torch, name, None)
    if not isinstance(torch_dtype, torch.dtype) or DTYPE_NAMES.get(torch_dtype) not in FLOAT_DTYPES:
        from mergebench.errors import ConfigError

        raise ConfigError(f"Unsupported output dtype '{name}'.",
                          hint="Use one of: float32, bfloat16, float16, float64.")
    return DTYPE_NAMES[torch_dtype]


def _layout(tensors: Sequence[TensorPlan], shard_size: int) -> tuple[ShardPlan, ...]:
    groups: list[list[str]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.out_bytes > shard_size:
            groups.append([])
            size = 0
        groups[-1].append(t.name)
        size += t.out_bytes
    if len(groups) == 1:
        return (ShardPlan("model.safetensors", tuple(groups[0])),)
    n = len(groups)
    return tuple(ShardPlan(f"model-{i + 1:05d}-of-{n:05d}.safetensors", tuple(g)) for i, g in enumerate(groups))


__all__ = ["DTYPES", "MergePlan", "ShardPlan", "TensorPlan", "build_plan", "check_compatible"]
