"""Peak memory of a streaming merge vs the bound n_models × largest tensor (fp32) + 1 GB.

Runs Task Arithmetic (and TIES, which adds exact global top-k passes) in a fresh subprocess per
configuration and reads the child's peak RSS, varying model depth and output shard size: the peak
must stay under the bound and must not grow with either. Writes a Markdown table to stdout and,
with ``--write``, into ``benchmarks/RESULTS.md`` between markers.

    python benchmarks/merge_memory.py [--write]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section
from synthetic import Shape, write_family

N_EXPERTS = 5

CHILD = """
import json, sys, time
from mergebench.merge.engine import merge
from mergebench.merge.options import MergeOptions
recipe, out, shard = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
r = merge(recipe, out, options=MergeOptions(progress=False, shard_size=shard))
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss": r.peak_rss_bytes}))
"""


def run(work: Path, layers: int, shard_size: int, method: str) -> dict:
    shape = Shape(hidden=1024, intermediate=4096, layers=layers, vocab=32000)
    base, experts = write_family(work / f"L{layers}", shape, N_EXPERTS, shard_bytes=256 << 20)
    recipe = {"method": method, "base_model": str(base), "models": [{"model": str(e)} for e in experts],
              "parameters": {"top_k": 0.2} if method == "ties" else {"scaling": 0.3}}
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(recipe), str(out), str(shard_size)],
                           check=True, capture_output=True, text=True)
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    largest = max(torch_numel(s) for n, s in shape.tensors() if "embed" not in n and "lm_head" not in n)
    bound = (N_EXPERTS + 1) * largest * 4 + (1 << 30)
    return {"method": method, "layers": layers, "params": shape.parameters, "shard_size": shard_size,
            "seconds": measured["seconds"], "peak_rss": measured["peak_rss"],
            "bound": bound}


def torch_numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "mergebench-bench-memory")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    configs = [("task_arithmetic", 4, 100 << 20), ("task_arithmetic", 4, 2 << 30),
               ("task_arithmetic", 16, 100 << 20), ("task_arithmetic", 16, 2 << 30), ("ties", 16, 2 << 30)]
    rows = [run(args.work_dir, layers, shard, method) for method, layers, shard in configs]
    lines = ["| method | layers | params | output shard | time (s) | peak RSS (GB) | bound (GB) | within |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['layers']} | {r['params'] / 1e6:.0f}M | {r['shard_size'] / 1e6:.0f} MB "
                     f"| {r['seconds']:.1f} | {r['peak_rss'] / 1e9:.2f} | {r['bound'] / 1e9:.2f} "
                     f"| {'yes' if r['peak_rss'] <= r['bound'] else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    print(f"\n(benchmark ran in {time.perf_counter() - started:.0f} s)")
    if args.write:
        write_section("merge_memory", "Streaming merge memory (`benchmarks/merge_memory.py`)", table)

if __name__ == "__main__":
    main()
