"""A rerun re-evaluates a reference model whose weights changed in place, and only that one.

Before, the runner reused ``expert_<domain>.json`` whenever the file was complete for the same tasks and
model *path*: replacing an expert's weights in the same folder kept its old scores (a wrong result with
exit status 0).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from mergebench.domains import DOMAINS
from mergebench.eval.results import load_results
from mergebench.runner import BenchConfig, run_benchmark


def _bench(base: Path, experts: dict[str, Path], validation_dir: Path, out: Path) -> dict:
    return {"name": "stale", "output": str(out),
            "bases": [{"name": "tiny-llama", "model": str(base), "experts": {d: str(p) for d, p in experts.items()}}],
            "data": {d: str(validation_dir / f"{d}.jsonl") for d in DOMAINS},
            "methods": [{"method": "model_soup"}],
            "validation": {"suites": ["tinybench_validation"], "max_samples": 2},
            "evaluation": {"suites": ["tinybench"], "max_samples": 2}}


def test_changed_expert_weights_are_evaluated_again(tiny_llama, validation_dir, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_llama.base, root / "base")
    experts = {d: root / d for d in DOMAINS}
    for d, folder in experts.items():
        shutil.copytree(tiny_llama.experts[d], folder)
    config = BenchConfig.from_dict(_bench(root / "base", experts, validation_dir, tmp_path / "run"))
    first = run_benchmark(config, progress=False)
    folder = first.results_dir / "tiny-llama"
    before = {d: load_results(folder / f"expert_{d}.json") for d in DOMAINS}

    shard = sorted(experts["math"].glob("*.safetensors"))[0]
    tensors = load_file(shard)
    save_file({k: v * 0.5 for k, v in tensors.items()}, shard, metadata={"format": "pt"})

    run_benchmark(config, progress=False)
    after = {d: load_results(folder / f"expert_{d}.json") for d in DOMAINS}
    assert after["math"].run["id"] != before["math"].run["id"]
    assert after["math"].model["revision"] != before["math"].model["revision"]
    assert all(after[d].run["id"] == before[d].run["id"] for d in DOMAINS if d != "math")


def test_changed_evaluation_settings_evaluate_every_model_again(tiny_llama, validation_dir, tmp_path: Path) -> None:
    """Before, a results file was reused when its tasks, ``max_samples`` and weights matched: scores computed in
    float32 were kept after the configuration asked for bfloat16 (and a final merge's scores whenever its grid
    point matched). Now the evaluation's record (:class:`mergebench.work.Stage`) covers every setting."""
    bench = _bench(tiny_llama.base, dict(tiny_llama.experts), validation_dir, tmp_path / "run")
    first = run_benchmark(BenchConfig.from_dict(bench), progress=False)
    folder = first.results_dir / "tiny-llama"
    names = ["base", *(f"expert_{d}" for d in DOMAINS), "model_soup"]
    before = {n: load_results(folder / f"{n}.json") for n in names}
    assert all((folder / f".{n}.json.stage.json").is_file() for n in names)

    run_benchmark(BenchConfig.from_dict(bench), progress=False)  # nothing changed: everything is reused
    assert all(load_results(folder / f"{n}.json").run["id"] == before[n].run["id"] for n in names)

    bench["evaluation"]["dtype"] = "bfloat16"
    run_benchmark(BenchConfig.from_dict(bench), progress=False)
    after = {n: load_results(folder / f"{n}.json") for n in names}
    assert all(after[n].run["id"] != before[n].run["id"] for n in names)
    assert {after[n].settings["dtype"] for n in names} == {"bfloat16"}
