"""Generated reference pages match the code (run `python -m mergebench.docs` after changing a method)."""

from __future__ import annotations

import pytest

from mergebench.docs import DOCS, PAGES


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_page_is_up_to_date(name: str) -> None:
    committed = (DOCS / name).read_text(encoding="utf-8")
    assert committed == PAGES[name](), f"docs/{name} is stale: run `python -m mergebench.docs`"
