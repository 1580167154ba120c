"""Write a benchmark's table into ``benchmarks/RESULTS.md`` between its own markers (idempotent)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(key: str, title: str, body: str, *, path: Path = RESULTS) -> None:
    """Replace the block ``<!-- key:begin -->…<!-- key:end -->``, or append it under ``title``."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        head, _, rest = text.partition(begin)
        text = head + block + rest.partition(end)[2]
    else:
        text += f"\n## {title}\n\n{block}\n"
    path.write_text(text)
