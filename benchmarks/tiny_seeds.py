"""MergeBench-Tiny under several training seeds: how much of a Tiny result is the experts' training run?

Why: Tiny's ``±`` is the standard error of the test items' sampling. It says nothing about how much a score or a
ranking owes to one particular training run of the five experts. This script runs the whole Tiny loop (data,
base, five experts, eight methods' searches and final evaluations) once per training seed — the ``tiny``
recipe's ``seed``, which fixes the experts' data order and sampling — with everything else identical (the data
seed, the evaluation items, DARE's seed), and reports

- per method (and for the base): the mean ± sample standard deviation over seeds of the normalised score and of
  the forgetting ratio, with the range of the normalised score and the rank per seed;
- for every pair of seeds, Kendall's τ between the merges' rankings by normalised score (τ-b: ties are allowed).

Each seed's run is a Tiny work folder ``WORK_DIR/seed-<s>`` and resumes where it stopped, so an interrupted
campaign continues. ``--write`` puts the table into ``benchmarks/RESULTS.md``.

    python benchmarks/tiny_seeds.py [--seeds 42 1 2] [--work-dir DIR] [--write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section

KINDS = ("merged", "base", "expert")
"""The leaderboard rows kept, in the table's order (an expert's normalised score is 1 by definition; its row is
there for its forgetting)."""
SEEDS = (42, 1, 2)
"""The shipped recipe's seed (42, what ``make demo`` runs) and two more."""


def seed_recipe(seed: int, folder: Path) -> str:
    """The shipped ``tiny`` recipe when its seed is ``seed`` (that run is exactly ``make demo``'s), else a copy
    with its ``seed`` replaced, written to ``folder/recipe-seed<seed>.yaml``."""
    from mergebench.train.config import RECIPES

    recipe = yaml.safe_load((RECIPES / "tiny.yaml").read_text(encoding="utf-8"))
    if recipe["seed"] == seed:
        return "tiny"
    recipe.update(seed=seed, name=f"tiny-seed{seed}")
    path = folder / f"recipe-seed{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return str(path)


def run_seed(seed: int, work_dir: Path) -> list[dict]:
    """Tiny with the recipe's seed ``seed`` in ``work_dir/seed-<seed>``; one row per merge, expert and the base."""
    from mergebench.tiny.pipeline import TinyConfig, run_tiny

    folder = work_dir / f"seed-{seed}"
    summary = run_tiny(folder, progress=True, config=TinyConfig(recipe=seed_recipe(seed, work_dir)))
    table = summary.table
    rows = table[table["kind"].isin(KINDS)]
    return [{"model": str(r["label"]), "kind": r["kind"], "normalised": float(r["normalised"]),
             "normalised_stderr": float(r["normalised_stderr"]), "forgetting": float(r["forgetting"])}
            for _, r in rows.iterrows()]


def ranks(rows: list[dict]) -> dict[str, int]:
    """1 = best normalised score among the merges (the base is not ranked)."""
    merges = sorted((r for r in rows if r["kind"] == "merged"), key=lambda r: -r["normalised"])
    return {r["model"]: i + 1 for i, r in enumerate(merges)}


def kendall_tau(a: list[dict], b: list[dict]) -> float:
    """Kendall's τ-b between two seeds' merges by normalised score (the merges both seeds scored)."""
    from scipy.stats import kendalltau

    score_a = {r["model"]: r["normalised"] for r in a if r["kind"] == "merged"}
    score_b = {r["model"]: r["normalised"] for r in b if r["kind"] == "merged"}
    models = sorted(score_a.keys() & score_b.keys())
    return float(kendalltau([score_a[m] for m in models], [score_b[m] for m in models]).statistic)


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def render(doc: dict) -> str:
    """The RESULTS.md section: per-model mean ± SD over seeds, ranks per seed, τ per pair."""
    seeds = doc["seeds"]
    by_seed = {int(s): rows for s, rows in doc["rows"].items()}
    rank = {s: ranks(by_seed[s]) for s in seeds}
    kind = {r["model"]: r["kind"] for rows in by_seed.values() for r in rows}
    models = sorted(kind, key=lambda m: (KINDS.index(kind[m]), -statistics.fmean(
        r["normalised"] for rows in by_seed.values() for r in rows if r["model"] == m), m))
    listed = ", ".join(map(str, seeds))
    lines = [f"{len(seeds)} full `make demo` loops, identical except the `tiny` recipe's training seed ({listed}; "
             f"42 is what `make demo` runs): data seed, evaluation items (6 × 71) and merge settings fixed. "
             f"Machine: {doc['machine']}; load average {doc['load'][0]:.1f} before, {doc['load'][1]:.1f} after; "
             f"{doc['minutes']:.0f} min in all. Mean ± sample standard deviation over the seeds; the typical "
             "standard error of one run's normalised score (items' sampling) is shown for comparison.", "",
             "| model | normalised (mean ± SD) | range | one run's ± (SE) | forgetting (mean ± SD) | "
             + " | ".join(f"rank, seed {s}" for s in seeds) + " |",
             "|---|---|---|---|---|" + "---|" * len(seeds)]
    for model in models:
        got = [r for s in seeds for r in by_seed[s] if r["model"] == model]
        norm = [r["normalised"] for r in got]
        se = statistics.fmean(r["normalised_stderr"] for r in got)
        lines.append(f"| {model} | {_mean_sd(norm)} | {min(norm):.3f}–{max(norm):.3f} | {se:.3f} | "
                     f"{_mean_sd([r['forgetting'] for r in got])} | "
                     + " | ".join(str(rank[s].get(model, "–")) for s in seeds) + " |")
    taus = {f"{a}/{b}": kendall_tau(by_seed[a], by_seed[b]) for a, b in itertools.combinations(seeds, 2)}
    lines += ["", "Kendall τ-b between the merges' rankings: "
              + ", ".join(f"seeds {pair}: **{tau:.2f}**" for pair, tau in taus.items())
              + f" (mean {statistics.fmean(taus.values()):.2f}; 1 = same order, 0 = unrelated, "
              f"{len(rank[seeds[0]])} merges)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--work-dir", type=Path, default=Path("demo-output/tiny-seeds"))
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started, load = time.perf_counter(), os.getloadavg()[0]
    rows = {seed: run_seed(seed, args.work_dir) for seed in args.seeds}
    doc = {"seeds": args.seeds, "rows": rows, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "load": [load, os.getloadavg()[0]], "minutes": (time.perf_counter() - started) / 60}
    (args.work_dir / "seeds.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    text = render(doc)
    print(text)
    if args.write:
        write_section("tiny-seeds", "MergeBench-Tiny over three training seeds (`benchmarks/tiny_seeds.py`, issue 21)",
                      text)


if __name__ == "__main__":
    main()
