"""MergeBench's streaming engine side by side with mergekit 0.1.5, on the same inputs, in the same run.

A deterministic synthetic Llama family (a base and five experts of 0.40B parameters in bf16, four
shards each; no downloads) is merged with Task Arithmetic and TIES by both tools, first from local
folders, then from the project's loopback Hub (mergekit downloads from the same server). mergekit
lives in its own virtualenv, ``benchmarks/.venv-mergekit`` (created here when missing; LGPL, used only
as a command-line peer, never a project dependency). Before every timed run the inputs are read once
so both contenders start from a warm page cache; the two contenders of a row run back to back and the
table reports ratios, which survive a shared, noisy machine better than absolute times.

Maths: both compute in float32 and write bf16 (mergekit ``dtype: float32, out_dtype: bfloat16``), and
MergeBench merges embeddings and the output head too (``merge_embeddings: true``), as mergekit does.
Task Arithmetic must then agree bit for bit. mergekit's TIES trims each tensor separately to
``int(density·numel)`` entries; MergeBench's ``topk_scope: tensor`` is the same maths except that it
keeps ``⌈k·numel⌉`` entries and every tie at the threshold, and keeps the base where the trimmed deltas
sum to exactly zero (mergekit elects ``+`` there). The agreement check recomputes, independently of
both tools, where those two rules can differ and requires every other element to be identical.
MergeBench's default TIES (exact *global* top-k: one counting pass, then the merge pass, which sets aside the
positions an open threshold bucket leaves undecided) is timed as well.

Every timed run (and the plain download the Hub rows are compared with) is repeated ``--repeat`` times, the
contenders alternating; the table reports the median time and the largest peak RSS.

    python benchmarks/merge_vs_mergekit.py [--no-write] [--work-dir DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Measured, folder_bytes, run_measured, warm
from results_file import write_section
from synthetic import Shape, write_family

from mergebench.hub.endpoint import endpoint_env
from mergebench.hubserver import LoopbackHub

HERE = Path(__file__).resolve().parent
SHAPE = Shape(hidden=1024, intermediate=4096, layers=22, vocab=32000)
N_EXPERTS = 5
INPUT_SHARD_BYTES = 256 << 20
DENSITY = 0.2
ORG = "bench"
MERGEKIT_VENV = HERE / ".venv-mergekit"
MERGEKIT_PINS = ("torch==2.13.0", "mergekit==0.1.5")
"""Installed in this order: torch first, so mergekit never pulls another (CUDA) build."""
MERGEBENCH_CLI = Path(sys.executable).parent / "mergebench"
TOKEN = "hf_loopbackBenchmarkToken000000000000"


@dataclass(frozen=True)
class Case:
    """One row: a MergeBench recipe and the mergekit config with the same maths."""

    label: str
    recipe: dict
    mergekit: dict | None
    check: str | None
    """``"exact"``, ``"ties"`` or ``None`` (different maths: timing only)."""


def cases(base: str, experts: list[str]) -> list[Case]:
    common = {"base_model": base, "merge_embeddings": True, "dtype": "bfloat16"}
    mk_common = {"base_model": base, "dtype": "float32", "out_dtype": "bfloat16"}
    ta = Case("Task Arithmetic",
              {**common, "method": "task_arithmetic", "parameters": {"scaling": 1.0},
               "models": [{"model": e} for e in experts]},
              {**mk_common, "merge_method": "task_arithmetic", "parameters": {"normalize": False},
               "models": [{"model": e, "parameters": {"weight": 1.0}} for e in experts]},
              "exact")
    mk_ties = {**mk_common, "merge_method": "ties", "parameters": {"normalize": True},
               "models": [{"model": e, "parameters": {"weight": 1.0, "density": DENSITY}} for e in experts]}
    ties = {**common, "method": "ties", "models": [{"model": e} for e in experts]}
    tensor_ties = Case("TIES, per-tensor top-k (mergekit's maths)",
                       {**ties, "parameters": {"top_k": DENSITY, "aggregate": "mean", "topk_scope": "tensor"}},
                       mk_ties, "ties")
    global_ties = Case("TIES, global top-k (MergeBench default)",
                       {**ties, "parameters": {"top_k": DENSITY, "aggregate": "mean"}}, None, None)
    return [ta, tensor_ties, global_ties]


# ------------------------------------------------------------------------------------------------ setup

def ensure_mergekit() -> Path:
    """``benchmarks/.venv-mergekit`` with torch 2.13.0 (CPU) then mergekit 0.1.5; idempotent."""
    exe = MERGEKIT_VENV / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    print(f"creating {MERGEKIT_VENV} (torch, then mergekit; a few minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(MERGEKIT_VENV)], check=True)
    pip = [str(MERGEKIT_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for pin in MERGEKIT_PINS:
        subprocess.run([*pip, pin], check=True)
    return exe


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                 platform.processor())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{os.cpu_count()} vCPU {model}, {ram / 2**30:.0f} GiB RAM, Linux {platform.release()}, Python " \
           f"{platform.python_version()}, torch {torch.__version__}"


def hub_tree(family: list[Path], root: Path) -> list[str]:
    """Hard-link the family into a loopback-Hub tree; returns the repo ids (same inodes: one page cache)."""
    ids = []
    for folder in family:
        dst = root / "models" / ORG / folder.name
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for src in folder.iterdir():
            os.link(src, dst / src.name)
        ids.append(f"{ORG}/{folder.name}")
    return ids


# ------------------------------------------------------------------------------------------------ runs

@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss: int
    disk_bytes: int
    """Output folder plus anything left in the contender's Hub cache."""
    cache_bytes: int
    """What the run left in its Hub cache (input copies)."""


def mergebench_run(case: Case, work: Path, env: dict[str, str]) -> tuple[Run, Path]:
    out, home = work / "out-mergebench", work / "home-mergebench"
    for p in (out, home):
        shutil.rmtree(p, ignore_errors=True)
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(case.recipe, sort_keys=False))
    m = run_measured([str(MERGEBENCH_CLI), "merge", str(recipe), "--out", str(out), "--format", "json"],
                     env={**env, **_home_env(env, home)})
    return _run(m, out, home), out


def mergekit_run(case: Case, work: Path, env: dict[str, str], exe: Path) -> tuple[Run, Path]:
    out, home = work / "out-mergekit", work / "home-mergekit"
    for p in (out, home):
        shutil.rmtree(p, ignore_errors=True)
    config = work / "mergekit.yml"
    config.write_text(yaml.safe_dump(case.mergekit, sort_keys=False))
    m = run_measured([str(exe), str(config), str(out), "--num-threads", str(os.cpu_count()), "--quiet",
                      "--no-copy-tokenizer", "--no-write-model-card"], env={**env, **_home_env(env, home)})
    return _run(m, out, home), out


def _home_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """A fresh, private Hub cache per run (its size afterwards is what the run left on disk)."""
    return endpoint_env(env["HF_ENDPOINT"], home, token=TOKEN) if "HF_ENDPOINT" in env else {"HF_HOME": str(home)}


def _run(m: Measured, out: Path, home: Path) -> Run:
    cache = folder_bytes(home)
    return Run(m.seconds, m.peak_rss, folder_bytes(out) + cache, cache)


def download_once(repo_ids: list[str], work: Path, env: dict[str, str]) -> tuple[float, int]:
    """Seconds and bytes for ``snapshot_download`` of every input into a fresh cache (deleted afterwards)."""
    home = work / "home-download"
    shutil.rmtree(home, ignore_errors=True)
    code = "import sys\nfrom huggingface_hub import snapshot_download\nfor r in sys.argv[1:]: snapshot_download(r)"
    m = run_measured([sys.executable, "-c", code, *repo_ids], env={**env, **_home_env(env, home)})
    size = folder_bytes(home)
    shutil.rmtree(home)
    return m.seconds, size


# ------------------------------------------------------------------------------------------------ checks

def _tensors(folder: Path) -> dict[str, Path]:
    names = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            names.update(dict.fromkeys(f.keys(), path))
    return names


def _load(index: dict[str, Path], name: str) -> torch.Tensor:
    with safe_open(index[name], "pt") as f:
        return f.get_tensor(name)


def compare(ours: Path, theirs: Path, family: list[Path], mode: str) -> dict:
    """Elements compared, differing, and differing where the two tools' rules agree (must be 0)."""
    a, b = _tensors(ours), _tensors(theirs)
    if set(a) != set(b):
        raise SystemExit(f"outputs hold different tensors: {sorted(set(a) ^ set(b))[:5]}")
    inputs = [_tensors(f) for f in family]
    total = differing = unexplained = 0
    for name in sorted(a):
        x, y = _load(a, name), _load(b, name)
        diff = x.view(torch.int16) != y.view(torch.int16)
        total += x.numel()
        differing += int(diff.sum())
        if mode == "ties" and diff.any():
            diff &= ~_ties_rules_differ(torch.stack([_load(i, name).float() for i in inputs]))
        unexplained += int(diff.sum())
    return {"elements": total, "differing": differing, "unexplained": unexplained}


def _ties_rules_differ(weights: torch.Tensor) -> torch.Tensor:
    """Where MergeBench's per-tensor TIES and mergekit's may legitimately differ (computed from the inputs):
    an entry between or at the two trim thresholds (MergeBench keeps the ``⌈k·n⌉``-th largest and every tie
    with it; mergekit keeps exactly ``int(k·n)`` entries, ties broken arbitrarily), or a position whose
    trimmed deltas sum to exactly 0 under either trim (MergeBench keeps the base, mergekit elects ``+``)."""
    deltas = weights[1:] - weights[0]
    magnitude = deltas.abs()
    flat = magnitude.reshape(deltas.shape[0], -1)
    n = flat.shape[1]
    shape = (deltas.shape[0], *[1] * (deltas.dim() - 1))
    ours, theirs = (flat.kthvalue(n - keep + 1, dim=1).values.view(shape) if keep else torch.full(shape, math.inf)
                    for keep in (math.ceil(DENSITY * n), int(DENSITY * n)))
    zone = ((magnitude >= ours) & (magnitude <= theirs)).any(0)
    for t in (ours, theirs):
        trimmed = deltas * (magnitude >= t)
        zone |= (trimmed.sum(0) == 0) & (trimmed != 0).any(0)
    return zone


# ------------------------------------------------------------------------------------------------ main

def pair(case: Case, source: str, work: Path, family: list[Path], env: dict[str, str], mergekit: Path,
         fetched: Callable[[], int] | None, reset: Callable[[], None], repeat: int) -> dict:
    """Both contenders back to back on warm inputs, ``repeat`` times in turn; their measurements (median time,
    largest peak) and the agreement check."""
    row: dict = {"case": case.label, "source": source}
    names = [name for name in ("mergebench", "mergekit") if name == "mergebench" or case.mergekit is not None]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            warm(family)
            reset()
            run, _ = (mergebench_run(case, work, env) if name == "mergebench"
                      else mergekit_run(case, work, env, mergekit))
            runs[name].append({**run.__dict__, "fetched": fetched() if fetched else None})
            print(f"  {source:5s} {case.label} / {name}: {run.seconds:.1f} s, {run.peak_rss / 1e9:.2f} GB",
                  file=sys.stderr)
    for name, measured in runs.items():
        row[name] = {**measured[-1], "seconds": statistics.median(r["seconds"] for r in measured),
                     "peak_rss": max(r["peak_rss"] for r in measured), "all_seconds": [r["seconds"] for r in measured]}
    if case.check and source == "local":
        row["agreement"] = compare(work / "out-mergebench", work / "out-mergekit", family, case.check)
        print(f"  agreement: {row['agreement']}", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--work-dir", type=Path, default=HERE / ".work" / "vs_mergekit")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per contender and row (median reported)")
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    mergekit = ensure_mergekit()
    setup = time.perf_counter()
    base, experts = write_family(work / "family", SHAPE, N_EXPERTS, shard_bytes=INPUT_SHARD_BYTES)
    generated = time.perf_counter()
    family = [base, *experts]
    load_before = os.getloadavg()
    rows = []
    local_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    for case in cases(str(base), [str(e) for e in experts]):
        rows.append(pair(case, "local", work, family, local_env, mergekit, None, lambda: None, args.repeat))
    ids = hub_tree(family, work / "hub")
    with LoopbackHub(work / "hub") as hub:
        hub_env = {**local_env, "HF_ENDPOINT": hub.url}
        downloads = []
        for _ in range(args.repeat):
            warm(family)
            hub.stats.reset()
            downloads.append(download_once(ids, work, hub_env))
        download = (statistics.median(d[0] for d in downloads), downloads[-1][1])
        download_fetched = hub.stats.bytes_for("*")
        for case in cases(ids[0], ids[1:]):
            rows.append(pair(case, "hub", work, family, hub_env, mergekit,
                             lambda: hub.stats.bytes_for("*"), hub.stats.reset, args.repeat))
    elapsed = time.perf_counter() - started
    doc = {"machine": machine(), "load": [load_before, os.getloadavg()], "rows": rows, "repeat": args.repeat,
           "download": {"seconds": download[0], "disk": download[1], "fetched": download_fetched,
                        "all_seconds": [d[0] for d in downloads]},
           "seconds": elapsed, "setup": {"mergekit_venv": setup - started, "family": generated - setup}}
    (work / "results.json").write_text(json.dumps(doc, indent=1))
    table = render(doc)
    print(table)
    if not args.no_write:
        write_section("merge_vs_mergekit", "MergeBench vs mergekit 0.1.5 (`benchmarks/merge_vs_mergekit.py`)",
                      table)


def render(doc: dict) -> str:
    gb = 1e9
    params = SHAPE.parameters
    largest = max(math.prod(s) for _, s in SHAPE.tensors())
    bound = (N_EXPERTS + 1) * largest * 4 + (1 << 30)
    d = doc["download"]
    lines = [
        f"Synthetic Llama family: base + {N_EXPERTS} experts of {params / 1e9:.2f}B parameters, bf16, "
        f"{INPUT_SHARD_BYTES >> 20} MB input shards ({(N_EXPERTS + 1) * params * 2 / gb:.1f} GB of inputs). "
        f"Machine: {doc['machine']}; load average {doc['load'][0][0]:.1f} before, {doc['load'][1][0]:.1f} after. "
        f"Inputs read once (warm page cache) before every timed run; each time is the median of "
        f"{doc.get('repeat', 1)} runs (contenders alternating), each peak the largest. Memory bound = n_models × "
        f"largest tensor (fp32) + 1 GB = {bound / gb:.2f} GB. Hub: loopback server on 127.0.0.1; downloading all "
        f"inputs once with `snapshot_download` took {d['seconds']:.1f} s (median; {d['fetched'] / gb:.2f} GB). "
        f"Whole benchmark: {doc['seconds'] / 60:.1f} min, of which {doc['setup']['mergekit_venv']:.0f} s creating "
        f"mergekit's venv and {doc['setup']['family']:.0f} s generating the family (both reused when present).",
        "",
        "| source | method | MergeBench (s) | mergekit (s) | speed-up | MB peak RSS (GB) | mk peak RSS (GB) "
        "| MB disk (GB) | mk disk (GB) | MB fetched (GB) | mk fetched (GB) | agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        mb, mk = r["mergebench"], r.get("mergekit")
        if "agreement" in r:
            ag = r["agreement"]
            agreement = (f"{ag['elements'] - ag['differing']:,}/{ag['elements']:,} identical; "
                         f"{ag['unexplained']} differ outside the rules' known differences")
        else:
            agreement = ""

        def f(run: dict | None, key: str, scale: float = gb, fmt: str = ".2f") -> str:
            return "—" if run is None or run.get(key) is None else format(run[key] / scale, fmt)

        speed = f"{mk['seconds'] / mb['seconds']:.1f}×" if mk else "—"
        lines.append(f"| {r['source']} | {r['case']} | {mb['seconds']:.1f} | {f(mk, 'seconds', 1, '.1f')} | {speed} "
                     f"| {f(mb, 'peak_rss')} | {f(mk, 'peak_rss')} | {f(mb, 'disk_bytes')} | {f(mk, 'disk_bytes')} "
                     f"| {f(mb, 'fetched')} | {f(mk, 'fetched')} | {agreement} |")
    return "\n".join([*lines, "", *goals(doc, bound)])


def goals(doc: dict, bound: int) -> list[str]:
    """The issue's goals, each checked against this run's numbers."""
    rows = {(r["source"], r["case"]): r for r in doc["rows"]}
    ta, tt, _ = cases("", [])
    download = doc["download"]["seconds"]

    def speed(case: Case) -> float:
        r = rows["local", case.label]
        return r["mergekit"]["seconds"] / r["mergebench"]["seconds"]

    hub_mb = {case: r["mergebench"] for (source, case), r in rows.items() if source == "hub"}
    left = max(r["cache_bytes"] for r in hub_mb.values())
    peaks = [r["mergebench"]["peak_rss"] for r in doc["rows"]]
    below_mk = all(r["mergebench"]["peak_rss"] < r["mergekit"]["peak_rss"] for r in doc["rows"] if "mergekit" in r)

    def met(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    def hub_goal(case: str) -> float:
        return 1.5 if case.startswith("TIES, global") else 1.2

    hub = "; ".join(f"{case} {r['seconds']:.1f} s = {r['seconds'] / download:.2f}× (≤ {hub_goal(case)}×) "
                    f"{met(r['seconds'] <= hub_goal(case) * download)}" for case, r in hub_mb.items())
    local_peaks = all(r["mergebench"]["peak_rss"] < r["mergekit"]["peak_rss"]
                      for (source, _), r in rows.items() if source == "local" and "mergekit" in r)

    return [
        "Goals (issue 19, this run):",
        f"- Local, ≥ 5× faster than mergekit with a lower peak RSS: Task Arithmetic {speed(ta):.1f}× "
        f"{met(speed(ta) >= 5)}; TIES (same maths) {speed(tt):.1f}× {met(speed(tt) >= 5)}; peak RSS below "
        f"mergekit's {met(local_peaks)}.",
        f"- From the Hub, ≤ 1.2 × one download of the inputs ({download:.1f} s), global TIES ≤ 1.5×: {hub}; no "
        f"input copy left on disk (largest Hub cache after a MergeBench Hub run: {left} bytes) {met(left == 0)}.",
        f"- Peak RSS ≤ bound ({bound / 1e9:.2f} GB): MergeBench's highest {max(peaks) / 1e9:.2f} GB "
        f"{met(max(peaks) <= bound)}; below mergekit's in every paired row {met(below_mk)}.",
    ]


if __name__ == "__main__":
    main()
