"""Method parameters, declared: each field's type, default, range and one-line help live on the field.

A method's parameters are a frozen dataclass subclassing :class:`Params` whose fields are made with
:func:`param`; the declared :class:`Range` of a field is checked whenever the dataclass is constructed (by
``MethodSpec.make_params`` or directly), and it is what ``mergebench methods show``, ``docs/methods.md`` and the
Space print. One declaration, so the documented range cannot differ from the enforced one.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from mergebench.errors import ConfigError

logger = logging.getLogger(__name__)


def _number(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Range:
    """The interval a numeric parameter must lie in; bounds are named as in pydantic (``gt ge lt le``).

    Declared once on the field (:func:`param`), it is what :class:`Params` checks and what the CLI, the docs
    and the Space print, so the documented range cannot differ from the enforced one.

    >>> str(Range(gt=0, le=1)), str(Range(ge=1)), 0.0 in Range(gt=0, le=1)
    ('(0, 1]', '≥ 1', False)
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def __post_init__(self) -> None:
        if (self.gt is not None and self.ge is not None) or (self.lt is not None and self.le is not None):
            raise ValueError("Range takes at most one lower bound (gt or ge) and one upper bound (lt or le).")

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def __str__(self) -> str:
        low = f"({_number(self.gt)}" if self.gt is not None else f"[{_number(self.ge)}" if self.ge is not None else ""
        high = f"{_number(self.lt)})" if self.lt is not None else f"{_number(self.le)}]" if self.le is not None else ""
        if low and high:
            return f"{low}, {high}"
        bounds = [("> ", self.gt), ("≥ ", self.ge), ("< ", self.lt), ("≤ ", self.le)]
        return next((f"{sign}{_number(x)}" for sign, x in bounds if x is not None), "any value")

    @property
    def phrase(self) -> str:
        """``in (0, 1]`` for an interval, ``≥ 1`` for a half-line: what follows "must be" in an error."""
        text = str(self)
        return f"in {text}" if text[0] in "([" else text


def param(default: Any, doc: str, *, within: Range | None = None) -> Any:
    """Declare one method parameter: its default, a one-line ``doc`` and the ``within`` range it must lie in.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class P(Params):
    ...     top_k: float = param(0.2, "fraction kept", within=Range(gt=0, le=1))
    >>> P().top_k
    0.2
    """
    return field(default=default, metadata={"doc": doc, "range": within})


@dataclass(frozen=True)
class ParamInfo:
    """One declared parameter, as ``methods show``, the docs and the Space present it."""

    name: str
    type: str
    """The annotation, readable: ``float``, ``int | None``, ``sum | mean`` (a ``Literal``)."""
    default: Any
    range: Range | None
    doc: str


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def params_info(cls: type[Params]) -> tuple[ParamInfo, ...]:
    """The declared parameters of a :class:`Params` subclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return tuple(ParamInfo(name=f.name, type=_type_name(hints[f.name]), default=f.default,
                           range=f.metadata.get("range"), doc=f.metadata.get("doc", ""))
                 for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class Params:
    """Base class of every method's parameters: frozen dataclasses whose fields are declared with :func:`param`.

    Construction checks every declared range (:class:`~mergebench.errors.ConfigError`, direct construction
    included) and warns about a negative ``scaling``. A subclass adds ``__post_init__`` only for rules that
    involve several fields (and calls ``super().__post_init__()``).
    """

    ELEMENTWISE: ClassVar[bool] = False
    """Declared by each method: whether, for its default values, each output entry depends only on the inputs at
    the same position and that position (see :meth:`elementwise`, which may refine it per value)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_range(f, getattr(self, f.name), integer=hints[f.name] is int)
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
        """Whether each output entry depends only on the inputs at the same position, that position
        (:attr:`~mergebench.methods.registry.MergeContext.offset`) and the context (including the thresholds the
        engine computes for :meth:`global_topk` and :meth:`tensor_topk`).

        The engine then splits tensors into cache-sized chunks merged on several threads with reused
        buffers, which is several times faster than whole-tensor float32 stacks and needs no stack of the
        largest tensor. The declared :attr:`ELEMENTWISE` by default (``False`` for anything that looks at a
        whole tensor, such as matrix statistics or trained masks); a method whose answer depends on its values
        overrides this.
        """
        return self.ELEMENTWISE

    def uses_data(self) -> bool:
        """Whether these values need the method's statistics stage (:attr:`MethodSpec.data_stats`).

        ``True`` by default; a method whose data use depends on a parameter overrides it
        (``localize_stitch`` needs trained masks only with ``mode: trained``).
        """
        return True


def _check_range(f: dataclasses.Field[Any], value: Any, *, integer: bool) -> None:
    """Raise :class:`ConfigError` when a numeric ``value`` lies outside the field's declared range."""
    within = f.metadata.get("range")
    if within is None or value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if value not in within:
        kind = "an integer " if integer else ""
        raise ConfigError(f"{f.name} must be {kind}{within.phrase}, got {value}.",
                          hint=f"{f.name}: {f.metadata.get('doc', '')} Default: {f.default}.")
