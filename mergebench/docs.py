"""Reference pages generated from the code, so they cannot drift: ``docs/methods.md`` from the registry.

``python -m mergebench.docs`` rewrites them; a test fails when the committed files differ.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mergebench import methods

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parent.parent / "docs"

STAGE_MEMORY = {
    "gram": "one expert in fp32 + Σ in² fp32 per linear layer of the blocks (Gram matrices)",
    "fisher": "one expert in fp32 + its gradients + one model-size fp32 Fisher diagonal",
    "mask": "base + one expert in fp32 + model-size mask logits and task vector",
}


def methods_markdown() -> str:
    """``docs/methods.md``: every registered method with its formula, parameters, grid and data needs."""
    lines = [
        "# Merge methods",
        "",
        "Generated from the method registry by `python -m mergebench.docs`; do not edit by hand.",
        "Semantics follow the project's method contract; each section's formula is the method module's docstring.",
        "Measured time and memory per stage on SmolLM2-135M: see `benchmarks/RESULTS.md`.",
        "",
        "| method | parameters (defaults) | search grid | data needed | merge-stage memory |",
        "|---|---|---|---|---|",
    ]
    for spec in methods.REGISTRY:
        params = ", ".join(f"`{k}={v}`" for k, v in spec.defaults().items()) or "–"
        grid = " × ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in spec.grid.items()) or "none"
        defaults = spec.make_params()
        data = f"{spec.data_stats} statistics ({STAGE_MEMORY[spec.data_stats]})" if spec.data_stats else "none"
        if spec.data_stats and not defaults.uses_data():
            data += ", only when trained (the default needs none)"
        passes = " + 2 top-k passes" if defaults.global_topk() is not None else ""
        lines.append(f"| [`{spec.name}`](#{spec.name}) | {params} | {grid} | {data} | "
                     f"(n+2) × largest tensor fp32{passes} |")
    for spec in methods.REGISTRY:
        lines += ["", f"## {spec.name}", "", f"{spec.title} — version {spec.version}, [paper]({spec.paper})", "",
                  "```", *spec.doc.split("\n\n", 1)[1].strip().splitlines(), "```"]
    return "\n".join(lines) + "\n"


PAGES = {"methods.md": methods_markdown}


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    for name, render in PAGES.items():
        (DOCS / name).write_text(render(), encoding="utf-8")
        logger.info("wrote %s", DOCS / name)


if __name__ == "__main__":
    main()
