"""Numbers a merge can compute with: finite, and finite in float32.

Merges run in float32. A parameter of ``.nan`` or ``.inf`` makes every merged tensor NaN, and a value
beyond float32's range (``scaling: 1e39``) becomes ``inf`` the moment it meets a tensor, so both are
rejected when the recipe is validated, before any byte is read or written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

FLOAT32_MAX = 3.4028234663852886e38


def bad_numbers(value: Any, where: str) -> list[str]:
    """Every number inside ``value`` (scalars, lists, tuples, mappings) that is NaN, infinite or beyond
    float32's range, as ``"where.path = value"`` strings (empty when all are fine). Booleans are skipped."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            return [f"{where} = {value!r}"]
        return []
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in bad_numbers(v, f"{where}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in bad_numbers(v, f"{where}[{i}]")]
    return []


def describe(problems: list[str]) -> str:
    """One sentence naming the bad values, for an error message."""
    return (f"{', '.join(problems)}: {'this value is' if len(problems) == 1 else 'these values are'} not a "
            f"finite number within float32's range (±{FLOAT32_MAX:.3g})")
