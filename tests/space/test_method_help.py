"""The Space's method help shows what each method declares (title, paper, formula, ranges, grid)."""

from __future__ import annotations

import pytest
from app import _method_help

from mergebench.methods import REGISTRY, get


@pytest.mark.parametrize("method", REGISTRY.names())
def test_method_help_reads_the_declared_metadata(method: str) -> None:
    spec = get(method)
    text = _method_help(method)
    assert f"**{spec.title}** [paper]({spec.paper})" in text
    assert f"```\n{spec.formula}\n```" in text
    for p in spec.parameters:
        if p.range:
            assert f"`{p.name}` {p.range}" in text


def test_method_help_for_regmean_and_no_method() -> None:
    assert "`alpha` [0, 1]" in _method_help("regmean") and "`alpha` ∈ [0.1, 0.5, 0.9]" in _method_help("regmean")
    assert "Wᵀ = (Σᵢ wᵢG̃ᵢ)⁻¹ Σᵢ wᵢG̃ᵢWᵢᵀ" in _method_help("regmean")
    assert _method_help(None) == ""
