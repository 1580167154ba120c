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

Metadata is **declared, never scraped**: each method file passes its ``title``, ``paper``, ``formula``, search
``grid``, statistics stage and weight rule to :func:`register`, and its parameter dataclass declares every
parameter's type, default, range and one-line help with :func:`param` (ranges are checked on construction, so
a declared range is always the enforced one). ``mergebench methods ls|show``, ``docs/methods.md``, merged-model
cards and the Space all read these declarations; the module docstrings are for readers only.
"""

from __future__ import annotations

import dataclasses
import difflib
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

import pydantic
import torch
from torch import Tensor

from mergebench.errors import ConfigError
from mergebench.finite import bad_numbers, describe
from mergebench.methods.common import weight_sum
from mergebench.methods.params import ParamInfo, Params, Range, param, params_info

__all__ = ["REGISTRY", "MergeContext", "MethodRegistry", "MethodSpec", "ParamInfo", "Params", "PerExpert", "Range",
           "get", "param", "register"]


P = TypeVar("P", bound=Params)


class PerExpert(Protocol):
    """One tensor's statistics of every expert, ``[n, *S]``: a stacked tensor, or a reader that loads one
    expert's row per step of the iteration (:class:`mergebench.stats.cache.ExpertRows`), so a method that
    consumes them one expert at a time holds one row, not the stack (RegMean's Gram of Llama-3.1-8B's
    down-projection is 0.8 GB per expert)."""

    @property
    def shape(self) -> torch.Size: ...

    def __iter__(self) -> Iterator[Tensor]: ...


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
    offset: int = 0
    """Row-major position in the whole tensor of the first entry passed: the engine merges an elementwise method in
    contiguous chunks of the flattened tensor (DARE draws its masks from positions)."""
    thresholds: Tensor | None = None
    """``[n]`` float32: expert i's exact top-k threshold on ``|τᵢ|``: over the whole model when ``global_topk()``
    is set, over this tensor when ``tensor_topk()`` is (the engine computes it in chunks)."""
    data: Mapping[str, PerExpert] = field(default_factory=dict)
    """Per-expert data statistics for this tensor, keyed by stage: ``{"gram": [n, in, in]}``, ``{"fisher": [n, *S]}``
    or ``{"mask": [n, *S] bool}``; empty when the tensor has none (see :class:`mergebench.stats.StatisticsReader`).
    Iterate them one expert at a time: the engine's rows are read from disk as the iteration asks."""


MethodFn = Callable[[Tensor, Tensor, Any, MergeContext], Tensor]


@dataclass(frozen=True)
class MethodSpec(Generic[P]):
    """A registered method: its function and the declared metadata the engine, the CLI, docs and cards read."""

    name: str
    fn: MethodFn
    params_cls: type[P]
    title: str
    """Human name with its citation, e.g. ``TIES-Merging: trim, elect sign, disjoint merge (Yadav et al., 2023)``."""
    paper: str
    """Link to the paper (an arXiv abstract page)."""
    formula: str
    """The exact formula this implementation computes (Unicode maths, several lines), shown verbatim on cards."""
    inputs: Literal["deltas", "weights"]
    version: int
    """Bumped when a fix changes the method's numbers: part of a merge's and a runner grid point's fingerprint,
    so neither ``--resume`` nor a re-run reuses what the older code computed."""
    grid: Mapping[str, tuple[Any, ...]]
    """This project's validation search grid (``{}``: the method has none)."""
    data_stats: str | None
    """Name of the statistics stage the method needs (``"gram"``, ``"fisher"``, ``"mask"``) or ``None``."""
    normalises_weights: bool = False
    """Whether the method divides by the sum of the recipe's expert weights, so weights summing to 0 are an error."""

    @property
    def elementwise(self) -> bool:
        """The declared :attr:`Params.ELEMENTWISE` (:meth:`Params.elementwise` decides for given values)."""
        return self.params_cls.ELEMENTWISE

    @property
    def parameters(self) -> tuple[ParamInfo, ...]:
        """Every declared parameter with its type, default, range and help."""
        return params_info(self.params_cls)

    @property
    def data_dependent(self) -> bool:
        """Whether the method *can* need data statistics; :meth:`stats_stage` says whether given values do."""
        return self.data_stats is not None

    def stats_stage(self, params: Params) -> str | None:
        """The statistics stage these parameter values need (``"gram"``, ``"fisher"``, ``"mask"``) or ``None``."""
        return self.data_stats if self.data_stats is not None and params.uses_data() else None

    def defaults(self) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(self.params_cls)}

    def describe(self) -> dict[str, Any]:
        """The declared metadata as plain JSON-able data (``mergebench methods show --format json``)."""
        return {
            "name": self.name, "title": self.title, "paper": self.paper, "version": self.version,
            "formula": self.formula, "inputs": self.inputs,
            "parameters": [{"name": p.name, "type": p.type, "default": p.default,
                            "range": str(p.range) if p.range else None, "doc": p.doc} for p in self.parameters],
            "grid": {k: list(v) for k, v in self.grid.items()}, "statistics": self.data_stats,
            "elementwise": self.elementwise, "normalises_weights": self.normalises_weights,
        }

    def check_weights(self, weights: Sequence[float] | None) -> None:
        """Reject recipe weights the method cannot use: a (nearly) zero sum when it divides by the sum.

        Raises:
            ConfigError: the weights sum to 0 and :attr:`normalises_weights` is set.
        """
        if weights is not None and self.normalises_weights:
            weight_sum(weights, what=f"method '{self.name}'")

    def make_params(self, values: Mapping[str, Any] | None = None, *,
                    weights: Sequence[float] | None = None) -> P:
        """Build validated parameters; unknown names, wrong types, values out of their declared range and
        ``weights`` (the recipe's per-expert coefficients) the method cannot use are :class:`ConfigError`."""
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
            errors = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ConfigError(f"Invalid parameters for method '{self.name}': {errors}",
                              hint=f"Types and ranges: `mergebench methods show {self.name}`.") from e
        # checked after conversion: YAML 1.1 reads `1e39` as a string, which pydantic then turns into a float
        problems = bad_numbers(dataclasses.asdict(params), "parameters")
        if problems:
            raise ConfigError(f"Invalid parameters for method '{self.name}': {describe(problems)}.",
                              hint=f"Use finite values; see the ranges in `mergebench methods show {self.name}`.")
        self.check_weights(weights)
        return params


def _check_declaration(name: str, params: type[Params], metadata: Mapping[str, str],
                       grid: Mapping[str, tuple[Any, ...]]) -> None:
    """A method must declare its title, paper, formula and every parameter's help; its grid names parameters."""
    missing = [key for key, value in metadata.items() if not value.strip()]
    if missing:
        raise ValueError(f"Merge method '{name}' declares no {', '.join(missing)}.")
    fields = {f.name: f for f in dataclasses.fields(params)}
    undocumented = [f for f, spec in fields.items() if not spec.metadata.get("doc")]
    if undocumented:
        raise ValueError(f"Merge method '{name}': declare parameters {undocumented} with param(default, doc).")
    unknown = [key for key in grid if key not in fields]
    if unknown:
        raise ValueError(f"Merge method '{name}': grid names unknown parameters {unknown}.")


class MethodRegistry:
    """Name → :class:`MethodSpec`. Rejects duplicates and incomplete declarations; lookups suggest the closest name."""

    def __init__(self) -> None:
        self._specs: dict[str, MethodSpec[Any]] = {}

    def register(
        self,
        name: str,
        *,
        params: type[Params],
        title: str,
        paper: str,
        formula: str,
        inputs: Literal["deltas", "weights"] = "deltas",
        version: int = 1,
        grid: Mapping[str, tuple[Any, ...]] | None = None,
        data_stats: str | None = None,
        normalises_weights: bool = False,
    ) -> Callable[[MethodFn], MethodFn]:
        """Register a method function under ``name`` with its declared metadata (see :class:`MethodSpec`).

        ``formula`` may be an indented triple-quoted string; it is dedented and stripped of blank edge lines.

        Raises:
            ValueError: ``name`` is taken, or the declaration is incomplete (no title, paper, formula or
                parameter help; a grid key that is not a parameter).
        """
        formula = textwrap.dedent(formula).strip("\n")
        _check_declaration(name, params, {"title": title, "paper": paper, "formula": formula}, grid or {})

        def decorator(fn: MethodFn) -> MethodFn:
            if name in self._specs:
                raise ValueError(f"Merge method '{name}' is registered twice.")
            self._specs[name] = MethodSpec(
                name=name, fn=fn, params_cls=params, title=title, paper=paper, formula=formula, inputs=inputs,
                version=version, grid=dict(grid or {}), data_stats=data_stats, normalises_weights=normalises_weights,
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

    def __iter__(self) -> Iterator[MethodSpec[Any]]:
        return iter(self._specs.values())


REGISTRY = MethodRegistry()
register = REGISTRY.register
get = REGISTRY.get
