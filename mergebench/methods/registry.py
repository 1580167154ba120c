"""The merge-method registry: one entry per method, each a pure tensor function.

A method is a function ``(base, stack, params, ctx) -> merged`` that sees **one tensor at a time**:

- ``base``: the base model's tensor, float32, shape ``S``.
- ``stack``: float32 ``[n, *S]``: the task vectors ``τᵢ = θᵢ − θ₀`` when the method is registered with
  ``inputs="deltas"`` (the default), or the expert weights ``θᵢ`` with ``inputs="weights"``. The method
  may modify ``stack`` in place (the engine never reuses it), which keeps peak memory at one stack.
- ``params``: the method's frozen parameter dataclass (a :class:`Params` subclass).
- ``ctx``: :class:`MergeContext`: the tensor's name, the per-expert weights, the seed, the global top-k
  thresholds computed by the engine's statistics pass and any per-tensor data statistics.

Methods do no I/O, never see a file, a repo or a thread. The engine decides which tensors are
mergeable (embeddings and the output head are copied from the base by default), computes whole-model
statistics in extra streaming passes, and casts the result to the output dtype once.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import pydantic
from torch import Tensor

from mergebench.errors import ConfigError
from mergebench.finite import bad_numbers, describe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    """Base class of every method's parameters (frozen dataclasses with defaults).

    Subclasses validate ranges in ``__post_init__`` by raising :class:`~mergebench.errors.ConfigError`
    (and call ``super().__post_init__()``, which warns about a negative ``scaling``).
    """

    def __post_init__(self) -> None:
        scaling = getattr(self, "scaling", None)
        if isinstance(scaling, int | float) and scaling < 0:
            logger.warning("%s: scaling = %s is negative; the merge will move *away* from the experts.",
                           type(self).__name__, scaling)

    def global_topk(self) -> float | None:
        """Fraction ``k`` for which the engine must compute each expert's exact global top-k threshold.

        ``None`` (the default) means the method needs no whole-model pass.
        """
        return None

    def tensor_topk(self) -> float | None:
        """Fraction ``k`` for which the engine may pass each tensor's own exact top-k thresholds in
        ``ctx.thresholds`` (the method computes them itself when they are absent). ``None`` by default."""
        return None

    def elementwise(self) -> bool:
        """Whether each output entry depends only on the inputs at the same position and the context
        (including the thresholds the engine computes for :meth:`global_topk` and :meth:`tensor_topk`).

        The engine then splits tensors into cache-sized chunks merged on several threads with reused
        buffers, which is several times faster than whole-tensor float32 stacks and needs no stack of the
        largest tensor. ``False`` (the default) for anything that looks at a whole tensor (per-tensor
        top-k, matrix statistics) or at positions (DARE's masks).
        """
        return False

    def uses_data(self) -> bool:
        """Whether these values need the method's statistics stage (:attr:`MethodSpec.data_stats`).

        ``True`` by default; a method whose data use depends on a parameter overrides it
        (``localize_stitch`` needs trained masks only with ``mode: trained``).
        """
        return True


P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class MergeContext:
    """Everything about one tensor that a method may need besides the tensors themselves."""

    name: str
    """The tensor's name, e.g. ``model.layers.0.mlp.up_proj.weight``."""
    expert_ids: tuple[int, ...]
    """Each expert's position in the recipe's ``models`` list (DARE seeds its masks with it)."""
    weights: tuple[float, ...] | None = None
    """Per-expert coefficients from the recipe, or ``None`` when the user gave none."""
    seed: int = 0
    thresholds: Tensor | None = None
    """``[n]`` float32: expert i's exact top-k threshold on ``|τᵢ|``: over the whole model when ``global_topk()``
    is set, over this tensor when ``tensor_topk()`` is (the engine computes it in chunks)."""
    data: Mapping[str, Tensor] = field(default_factory=dict)
    """Per-expert data statistics for this tensor, keyed by stage: ``{"gram": [n, in, in]}``, ``{"fisher": [n, *S]}``
    or ``{"mask": [n, *S] bool}``; empty when the tensor has none (see :class:`mergebench.stats.StatisticsReader`)."""


MethodFn = Callable[[Tensor, Tensor, Any, MergeContext], Tensor]


@dataclass(frozen=True)
class MethodSpec(Generic[P]):
    """A registered method: its function and the metadata the engine, the CLI and cards read."""

    name: str
    fn: MethodFn
    params_cls: type[P]
    inputs: Literal["deltas", "weights"]
    version: int
    grid: Mapping[str, tuple[Any, ...]]
    data_stats: str | None
    """Name of the statistics stage the method needs (``"gram"``, ``"fisher"``, ``"mask"``) or ``None``."""
    paper: str

    @property
    def doc(self) -> str:
        return (sys.modules[self.fn.__module__].__doc__ or "").strip()

    @property
    def title(self) -> str:
        return self.doc.splitlines()[0] if self.doc else self.name

    @property
    def data_dependent(self) -> bool:
        """Whether the method *can* need data statistics; :meth:`stats_stage` says whether given values do."""
        return self.data_stats is not None

    def stats_stage(self, params: Params) -> str | None:
        """The statistics stage these parameter values need (``"gram"``, ``"fisher"``, ``"mask"``) or ``None``."""
        return self.data_stats if self.data_stats is not None and params.uses_data() else None

    def defaults(self) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(self.params_cls)}

    def make_params(self, values: Mapping[str, Any] | None = None) -> P:
        """Build validated parameters; unknown names and wrong types are :class:`ConfigError`."""
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(self.params_cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                suggestion = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(
                    f"Unknown parameter '{key}' for method '{self.name}'.{suggestion}",
                    hint=f"Valid parameters: {', '.join(known) or '(none)'}. "
                         f"See `mergebench methods show {self.name}`.",
                )
        try:
            params = pydantic.TypeAdapter(self.params_cls).validate_python(values)
        except pydantic.ValidationError as e:
            for err in e.errors():  # a range check in __post_init__: keep its message and hint
                inner = (err.get("ctx") or {}).get("error")
                if isinstance(inner, ConfigError):
                    raise ConfigError(f"Invalid parameters for method '{self.name}': {inner.message}",
                                      hint=inner.hint) from e
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ConfigError(f"Invalid parameters for method '{self.name}': {problems}") from e
        # checked after conversion: YAML 1.1 reads `1e39` as a string, which pydantic then turns into a float
        problems = bad_numbers(dataclasses.asdict(params), "parameters")
        if problems:
            raise ConfigError(f"Invalid parameters for method '{self.name}': {describe(problems)}.",
                              hint=f"Use finite values; see the ranges in `mergebench methods show {self.name}`.")
        return params


class MethodRegistry:
    """Name → :class:`MethodSpec`. Rejects duplicates; lookups suggest the closest valid name."""

    def __init__(self) -> None:
        self._specs: dict[str, MethodSpec[Any]] = {}

    def register(
        self,
        name: str,
        *,
        params: type[Params],
        inputs: Literal["deltas", "weights"] = "deltas",
        version: int = 1,
        grid: Mapping[str, tuple[Any, ...]] | None = None,
        data_stats: str | None = None,
        paper: str = "",
    ) -> Callable[[MethodFn], MethodFn]:
        def decorator(fn: MethodFn) -> MethodFn:
            if name in self._specs:
                raise ValueError(f"Merge method '{name}' is registered twice.")
            self._specs[name] = MethodSpec(
                name=name, fn=fn, params_cls=params, inputs=inputs, version=version,
                grid=dict(grid or {}), data_stats=data_stats, paper=paper,
            )
            return fn

        return decorator

    def get(self, name: str) -> MethodSpec[Any]:
        try:
            return self._specs[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._specs), n=1)
            suggestion = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"Unknown merge method '{name}'.{suggestion}",
                hint=f"Available methods: {', '.join(sorted(self._specs))}. See `mergebench methods ls`.",
            ) from None

    def names(self) -> list[str]:
        return list(self._specs)

    def __iter__(self):
        return iter(self._specs.values())


REGISTRY = MethodRegistry()
register = REGISTRY.register
get = REGISTRY.get
