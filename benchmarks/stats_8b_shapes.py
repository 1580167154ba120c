"""Statistics stages at Llama-3.1-8B layer shapes, from the loopback Hub: time, peak memory, disk, and 32 layers.

A synthetic base and five experts with Llama-3.1-8B's layer shapes (hidden 4096, intermediate 14,336, 32 heads
/ 8 KV heads, vocabulary 128,256; bf16; the fixture tokenizer's chat format) are served by the project's
loopback Hub. RegMean (Gram matrices) and Fisher merging (Fisher diagonals) each run, in fresh processes,

1. the statistics stage alone (cold statistics cache): every expert's statistics, layer by layer;
2. the merge (statistics cached): the streaming merge pass that reads them;

at depth 1 and at depth 2: the same files, served with a ``config.json`` and shard index that
stop after the first layer(s), so the difference between depths is the cost of one layer. Peak RSS is the
sampled RSS of the child's process tree (:func:`measure.run_measured`); the Hub cache of every child is checked
to stay at 0 bytes. The table extrapolates to 32 layers: time = fixed + 32 × per layer, memory = the measured
peak, statistics disk = the files' exact size formula. The memory column holds only if nothing held grows with
depth: ``--medium`` runs a smaller shape (:data:`MEDIUM`) at depths 1–4 to check that.

Memory bound (the issue's): one layer's float32 weights + its statistics + the activations of the rows through
one layer + 1 GB. For the statistics stage "its statistics" are one expert's (the stage holds one expert); for
the merge they are the five experts' statistics of one layer (the RegMean solve stacks the five Gram matrices
of a tensor).

Disk: the family takes 7.3 GB (experts' embedding and head shards are hard links of the base's: the merge and
the statistics without ``merge_embeddings`` never read them), the RegMean statistics of two layers 12.3 GB.

    python benchmarks/stats_8b_shapes.py [--write] [--repeat 3] [--rows 4] [--work-dir DIR] [--medium | --smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import folder_bytes, run_measured
from results_file import write_section
from synthetic import Shape, _tensor

from mergebench.domains import DOMAINS
from mergebench.fixtures import write_validation_splits
from mergebench.fixtures.tokenizer import build_tokenizer, save_tokenizer
from mergebench.hub.endpoint import endpoint_env
from mergebench.hubserver import LoopbackHub
from mergebench.prompt import encode_chat

SHAPE = Shape(hidden=4096, intermediate=14336, layers=2, vocab=128256, heads=32, kv_heads=8)
SMOKE = Shape(hidden=256, intermediate=512, layers=2, vocab=1024, heads=4, kv_heads=2)
"""``--smoke``: the same benchmark in seconds, to check the script (not the numbers)."""
MEDIUM = Shape(hidden=2048, intermediate=7168, layers=4, vocab=32000, heads=16, kv_heads=4)
"""``--medium``: a quarter of a Llama-3.1-8B layer, four layers deep: does the peak grow with depth?"""
ORG = "bench8b"
TOKEN = "hf_loopbackBenchmarkToken000000000000"
GB = 1e9
FULL_DEPTH = 32
METHODS = {"regmean": {"alpha": 0.5}, "fisher": {}}

CHILD = """
import json, sys, time
from pathlib import Path
from mergebench.merge.engine import _statistics, merge
from mergebench.merge.inputs import prepare
from mergebench.merge.options import MergeOptions
phase, recipe, out, cache = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
options = MergeOptions(progress=False, cache_dir=cache)
started = time.perf_counter()
if phase == "stats":
    _statistics(prepare(recipe), options)
    print(json.dumps({"seconds": time.perf_counter() - started}))
else:
    result = merge(recipe, out, options=options)
    print(json.dumps({"seconds": result.seconds, "stats_seconds": result.stats_seconds}))
"""


def layer_tensors(shape: Shape, layer: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, s) for n, s in shape.tensors() if n.startswith(f"model.layers.{layer}.")]


def shard_groups(shape: Shape) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """One shard per decoder layer, the final norm, the embedding and the head: a depth-d view lists a prefix."""
    tensors = dict(shape.tensors())
    groups = {"embed.safetensors": [("model.embed_tokens.weight", tensors["model.embed_tokens.weight"])]}
    for i in range(shape.layers):
        groups[f"layer-{i:02d}.safetensors"] = layer_tensors(shape, i)
    groups["norm.safetensors"] = [("model.norm.weight", tensors["model.norm.weight"])]
    groups["head.safetensors"] = [("lm_head.weight", tensors["lm_head.weight"])]
    return groups


def config(shape: Shape, depth: int) -> dict:
    return {**shape.config(), "num_hidden_layers": depth, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 3,
            "head_dim": shape.hidden // shape.heads}


def write_family(root: Path, shape: Shape, n_experts: int) -> list[Path]:
    """The full-depth models (``base``, ``expert0`` ...), skipped when already written with this shape."""
    stamp = root / "shape.json"
    wanted = json.dumps({**shape.__dict__, "n": n_experts, "layout": "shard-per-layer"})
    folders = [root / "base", *(root / f"expert{i}" for i in range(n_experts))]
    if stamp.exists() and stamp.read_text() == wanted:
        return folders
    shutil.rmtree(root, ignore_errors=True)
    tokenizer = build_tokenizer()
    for k, folder in enumerate(folders):
        folder.mkdir(parents=True)
        for filename, group in shard_groups(shape).items():
            if k > 0 and filename in ("embed.safetensors", "head.safetensors"):
                os.link(folders[0] / filename, folder / filename)  # not mergeable: the same bytes as the base
                continue
            save_file({n: _tensor(n, s, 0, k - 1) for n, s in group}, folder / filename, metadata={"format": "pt"})
        save_tokenizer(tokenizer, folder)
        print(f"wrote {folder}", file=sys.stderr)
    stamp.write_text(wanted)
    return folders


def hub_view(folders: list[Path], shape: Shape, depth: int, hub_root: Path) -> list[str]:
    """Repos ``bench8b/<model>-L<depth>``: hard links of the shards of the first ``depth`` layers, an index and
    a config that stop there. Returns the repo ids (base first)."""
    ids = []
    for folder in folders:
        repo = f"{ORG}/{folder.name}-L{depth}"
        dst = hub_root / "models" / repo
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        weight_map = {}
        for filename, group in shard_groups(shape).items():
            if filename.startswith("layer-") and int(filename[6:8]) >= depth:
                continue
            os.link(folder / filename, dst / filename)
            weight_map.update({name: filename for name, _ in group})
        (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (dst / "config.json").write_text(json.dumps(config(shape, depth)))
        for small in folder.iterdir():
            if not small.name.endswith(".safetensors"):
                shutil.copyfile(small, dst / small.name)
        ids.append(repo)
    return ids


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss: int
    fetched: int
    """Bytes of weights the Hub served."""
    stats_disk: int
    cache_left: int
    """Bytes left in the child's Hub cache (must be 0)."""


def run_child(phase: str, recipe: dict, work: Path, cache: Path, hub: LoopbackHub, env: dict[str, str]) -> Run:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    home = Path(tempfile.mkdtemp(prefix="hf-home-", dir=work))
    hub.stats.reset()
    measured = run_measured([sys.executable, "-c", CHILD, phase, json.dumps(recipe), str(out), str(cache)],
                            env={**env, **endpoint_env(hub.url, home, token=TOKEN)})
    reported = json.loads(measured.stdout.strip().splitlines()[-1])
    left = folder_bytes(home / "hub")
    shutil.rmtree(home)
    shutil.rmtree(out, ignore_errors=True)
    return Run(reported["seconds"], measured.peak_rss, hub.stats.bytes_for("*.safetensors"), folder_bytes(cache),
               left)


def median_run(runs: list[Run]) -> Run:
    return Run(statistics.median(r.seconds for r in runs), max(r.peak_rss for r in runs),
               max(r.fetched for r in runs), max(r.stats_disk for r in runs), max(r.cache_left for r in runs))


def tokens_per_row(rows: int) -> list[int]:
    from mergebench.fixtures import validation_rows

    tok = build_tokenizer()
    return [len(encode_chat(tok, row["messages"], max_length=1024)[0])
            for domain in DOMAINS for row in validation_rows(domain, rows)]


def layer_bytes(shape: Shape) -> int:
    return sum(torch.Size(s).numel() for _, s in layer_tensors(shape, 0)) * 4


def stats_bytes(method: str, shape: Shape) -> tuple[int, int]:
    """``(per layer, fixed)`` bytes of one expert's statistics file (float32)."""
    h, i = shape.hidden, shape.intermediate
    if method == "regmean":  # q, k, v, o, gate, up read hidden-sized inputs; down the intermediate
        return (6 * h * h + i * i) * 4, 0
    return layer_bytes(shape), h * 4  # every layer tensor, plus the final norm (embeddings: merge_embeddings only)


def activation_bytes(shape: Shape, tokens: int) -> int:
    """The rows through one layer: hidden states in and out plus the MLP's three intermediate-sized tensors."""
    return tokens * (2 * shape.hidden + 3 * shape.intermediate) * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--repeat", type=int, default=3, help="statistics-stage runs per row (median time, max memory)")
    parser.add_argument("--merge-repeat", type=int, default=1,
                        help="merge runs per row (a RegMean merge takes ~2 min per 8B layer on 2 cores)")
    parser.add_argument("--rows", type=int, default=4, help="validation rows per expert")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "mergebench-bench-8b")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: check the script, not the numbers")
    parser.add_argument("--medium", action="store_true",
                        help="a medium shape at depths 1-4 (memory against depth; not written to RESULTS.md)")
    args = parser.parse_args()
    shape = SMOKE if args.smoke else MEDIUM if args.medium else SHAPE
    depths = range(1, shape.layers + 1) if args.medium else (1, shape.layers)
    started = time.perf_counter()
    load_before = os.getloadavg()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    folders = write_family(work / ("family-smoke" if args.smoke else "family-medium" if args.medium else "family"),
                           shape, len(DOMAINS))
    data = write_validation_splits(work / "validation")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    results: dict[tuple[str, int, str], Run] = {}
    (work / "hub" / "models").mkdir(parents=True, exist_ok=True)
    with LoopbackHub(work / "hub") as hub:
        for depth in depths:
            ids = hub_view(folders, shape, depth, work / "hub")
            for method, parameters in METHODS.items():
                recipe = {"method": method, "base_model": ids[0],
                          "parameters": {**parameters, "num_samples": args.rows},
                          "models": [{"model": m, "domain": d} for m, d in zip(ids[1:], DOMAINS, strict=True)],
                          "data": {d: str(p) for d, p in data.items()}}
                cache = work / "cache"
                stats_runs, merge_runs = [], []
                for k in range(max(args.repeat, args.merge_repeat)):
                    shutil.rmtree(cache, ignore_errors=True)
                    stats_runs.append(run_child("stats", recipe, work, cache, hub, env))
                    print(f"{method} L{depth}: stats {stats_runs[-1]}", file=sys.stderr)
                    if k < args.merge_repeat:
                        merge_runs.append(run_child("merge", recipe, work, cache, hub, env))
                        print(f"{method} L{depth}: merge {merge_runs[-1]}", file=sys.stderr)
                shutil.rmtree(cache, ignore_errors=True)
                results[(method, depth, "stats")] = median_run(stats_runs)
                results[(method, depth, "merge")] = median_run(merge_runs)
    load_after = os.getloadavg()
    tokens = tokens_per_row(args.rows)
    table = report(shape, results, tokens, args, load_before, load_after, time.perf_counter() - started)
    print(table)
    if args.write and shape is SHAPE:
        write_section("stats_8b_shapes", "Statistics stages at Llama-3.1-8B shapes (`benchmarks/stats_8b_shapes.py`)",
                      table)


def report(shape: Shape, results: dict[tuple[str, int, str], Run], tokens: list[int], args: argparse.Namespace,
           load_before: tuple[float, ...], load_after: tuple[float, ...], total: float) -> str:
    depth = shape.layers
    layer = layer_bytes(shape)
    acts = activation_bytes(shape, max(tokens) * min(args.rows, 8))  # a Gram batch (≤ 8 rows) holds the most
    lines = [
        f"Synthetic Llama-3.1-8B shapes (hidden {shape.hidden}, intermediate {shape.intermediate}, "
        f"{shape.heads}/{shape.kv_heads} heads, vocabulary {shape.vocab:,}), bf16, base + {len(DOMAINS)} experts "
        f"served by the loopback Hub; {args.rows} validation rows per expert ({min(tokens)}–{max(tokens)} tokens, "
        f"fixture tokenizer). Machine: {os.cpu_count()} vCPU, {platform.platform()}, torch {torch.__version__}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (the benchmark's own children count). "
        f"Median of {args.repeat} run(s) per statistics row, {args.merge_repeat} per merge "
        f"row (peak RSS: the highest). Whole benchmark: "
        f"{total / 60:.1f} min.",
        "",
        "| method | phase | layers | time (s) | peak RSS (GB) | bound (GB) | within | weights fetched (GB) "
        "| statistics on disk (GB) | Hub cache (bytes) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (method, d, phase), r in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][2] != "stats", kv[0][1])):
        per_layer, fixed = stats_bytes(method, shape)
        experts = 1 if phase == "stats" else len(DOMAINS)
        bound = layer + experts * per_layer + acts + (1 << 30)
        lines.append(f"| {method} | {phase} | {d} | {r.seconds:.1f} | {r.peak_rss / GB:.2f} | {bound / GB:.2f} "
                     f"| {'yes' if r.peak_rss <= bound else 'NO'} | {r.fetched / GB:.2f} | {r.stats_disk / GB:.2f} "
                     f"| {r.cache_left} |")
    lines += ["", f"Extrapolated to {FULL_DEPTH} layers (8B): time = t(1 layer) + {FULL_DEPTH - 1} × "
              f"(t({depth}) − t(1)) / {depth - 1}; memory: the measured peak (assumed to level off with depth: "
              "see --medium); disk: the statistics files' size for five experts.", "",
              "| method | statistics stage (min) | merge (min) | peak RSS (GB) | statistics on disk (GB) |",
              "|---|---|---|---|---|"]
    for method in METHODS:
        row = []
        for phase in ("stats", "merge"):
            t1, t2 = results[(method, 1, phase)].seconds, results[(method, depth, phase)].seconds
            row.append((t1 + (FULL_DEPTH - 1) * (t2 - t1) / (depth - 1)) / 60)
        peak = max(results[(method, d, p)].peak_rss for d in (1, depth) for p in ("stats", "merge"))
        per_layer, fixed = stats_bytes(method, shape)
        disk = len(DOMAINS) * (FULL_DEPTH * per_layer + fixed)
        lines.append(f"| {method} | {row[0]:.1f} | {row[1]:.1f} | {peak / GB:.2f} | {disk / GB:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
