"""The peak memory the runner records for a merge: in its own process (before issue 19) and in a child process.

A long-lived runner process has evaluated models before it merges a grid point, so the high-water mark of its
process is the evaluation's, not the merge's. This benchmark plays that process: it loads SmolLM2-135M-Instruct
with transformers and generates a few tokens (the memory an evaluation leaves behind), then merges five
perturbed experts with data-free methods twice each, in process (``merge``) and in a spawned child
(``mergebench.runner.isolated.merge_in_child``, what ``runner/point.py`` runs), and reports both recorded peaks.

    python benchmarks/runner_peak_memory.py [--write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section

from mergebench.fixtures import DOMAINS, perturbed_experts, smollm2_model_dir
from mergebench.merge.engine import merge
from mergebench.merge.options import MergeOptions
from mergebench.runner.isolated import merge_in_child

METHODS = {"task_arithmetic": {"scaling": 0.4}, "ties": {"top_k": 0.2, "scaling": 1.0},
           "dare": {"drop_rate": 0.8, "scaling": 0.4, "seed": 0}}


def evaluate_once(model_dir: Path) -> float:
    """Load the model and generate, as an evaluation does; returns the seconds it took."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = tokenizer(["The capital of France is"] * 8, return_tensors="pt")
    model.generate(**batch, max_new_tokens=32, do_sample=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "mergebench-runner-peak")
    args = parser.parse_args()
    load_before = os.getloadavg()
    base = smollm2_model_dir()
    experts = perturbed_experts(base, args.work_dir / "experts", DOMAINS, scale=0.01, seed=0)
    evaluate_once(base)
    options = MergeOptions(progress=False)
    rows = []
    for method, parameters in METHODS.items():
        recipe = {"method": method, "base_model": str(base), "parameters": parameters,
                  "models": [{"model": str(experts[d]), "domain": d} for d in DOMAINS]}
        peaks = {}
        for how, run in (("in process", merge), ("child process", merge_in_child)):
            out = args.work_dir / "out"
            shutil.rmtree(out, ignore_errors=True)
            result = run(recipe, out, options=options)
            peaks[how] = (result.peak_rss_bytes, result.seconds)
            print(f"{method} {how}: {result.peak_rss_bytes / 1e9:.2f} GB, {result.seconds:.1f} s", file=sys.stderr)
        rows.append((method, parameters, peaks))
    lines = [f"SmolLM2-135M-Instruct, 5 perturbed experts; the process first loaded the model with transformers "
             f"and generated (as an evaluation does). 2 shared vCPUs, load average {load_before[0]:.1f} before, "
             f"{os.getloadavg()[0]:.1f} after.", "",
             "| method | parameters | recorded peak, merge in the runner's process (GB) | recorded peak, merge in "
             "a child process (GB) | merge time in process / in child (s) |",
             "|---|---|---|---|---|"]
    for method, parameters, peaks in rows:
        shown = ", ".join(f"{k}={v}" for k, v in parameters.items())
        (here, here_s), (child, child_s) = peaks["in process"], peaks["child process"]
        lines.append(f"| {method} | {shown} | {here / 1e9:.2f} | {child / 1e9:.2f} | {here_s:.1f} / {child_s:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("runner_peak_memory", "Peak memory the runner records per merge "
                      "(`benchmarks/runner_peak_memory.py`)", table)


if __name__ == "__main__":
    main()
