"""Time and memory of every merge method, per stage, on the real SmolLM2-135M-Instruct.

Experts are small deterministic perturbations of the converted model (``mergebench.fixtures``); the
data-dependent methods run their statistics stage on the fixture validation splits with
``num_samples`` rows per expert. Each method runs in a fresh subprocess that reports the statistics
time, the streaming-merge time and its own peak RSS. Writes a Markdown table (``--write``: into
``benchmarks/RESULTS.md``).

    python benchmarks/methods_135m.py [--write] [--num-samples 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section

from mergebench.fixtures import DOMAINS, perturbed_experts, smollm2_model_dir, write_validation_splits

CHILD = """
import json, shutil, sys, time
from pathlib import Path
from mergebench.merge.engine import merge
from mergebench.merge.options import MergeOptions
recipe, out, cache = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
shutil.rmtree(out, ignore_errors=True)
r = merge(recipe, out, options=MergeOptions(progress=False, cache_dir=cache))
print(json.dumps({"seconds": r.seconds, "stats_seconds": r.stats_seconds, "bytes_read": r.bytes_read,
                  "peak_rss": r.peak_rss_bytes}))
"""

RUNS = {
    "model_soup": {},
    "task_arithmetic": {"scaling": 0.4},
    "ties": {"top_k": 0.2, "scaling": 0.6},
    "dare": {"drop_rate": 0.8, "scaling": 0.6},
    "consensus": {"k": 2, "tall_lambda": 0.4, "scaling": 0.6},
    "localize_stitch": {"sparsity": 0.1},
    "localize_stitch (trained)": {"mode": "trained", "sparsity": 0.1},
    "regmean": {"alpha": 0.5},
    "fisher": {},
}
DATA_DEPENDENT = {"localize_stitch (trained)", "regmean", "fisher"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--num-samples", type=int, default=8, help="validation rows per expert (stats stage)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "mergebench-bench-135m")
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.work_dir
    base = smollm2_model_dir()
    experts = perturbed_experts(base, work / "experts", DOMAINS, scale=0.01, seed=0)
    data = write_validation_splits(work / "validation")
    rows = []
    for label, parameters in RUNS.items():
        method = label.split(" ")[0]
        params = dict(parameters)
        if label in DATA_DEPENDENT:
            params["num_samples"] = args.num_samples
        recipe = {"method": method, "base_model": str(base), "parameters": params,
                  "models": [{"model": str(experts[d]), "domain": d} for d in DOMAINS],
                  "data": {d: str(p) for d, p in data.items()}}
        cache = work / "cache" / label.replace(" ", "_")  # cold statistics cache: the stage really runs
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(recipe), str(work / "out"), str(cache)],
                               check=True, capture_output=True, text=True)
        m = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append((label, params, m))
        print(f"{label}: {m}", file=sys.stderr)
    lines = [f"SmolLM2-135M-Instruct (134.5M parameters, bf16), 5 perturbed experts, "
             f"{args.num_samples} validation rows per expert for data-dependent methods, CPU.", "",
             "| method | parameters | statistics stage (s) | streaming merge (s) | total (s) | GB read "
             "| peak RSS (GB) |",
             "|---|---|---|---|---|---|---|"]
    for label, params, m in rows:
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        lines.append(f"| {label} | {shown} | {m['stats_seconds']:.1f} | {m['seconds'] - m['stats_seconds']:.1f} "
                     f"| {m['seconds']:.1f} | {m['bytes_read'] / 1e9:.2f} | {m['peak_rss'] / 1e9:.2f} |")
    table = "\n".join(lines)
    print(table)
    print(f"\n(benchmark ran in {time.perf_counter() - started:.0f} s)")
    if args.write:
        write_section("methods_135m", "Every method on SmolLM2-135M (`benchmarks/methods_135m.py`)", table)

if __name__ == "__main__":
    main()
