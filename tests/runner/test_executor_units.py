"""Units run by one command, anywhere: ``mergebench unit run SPEC`` evaluates or merges, publishes atomically to
a folder or a Hub dataset (the loopback Hub), and does nothing the second time."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from mergebench.domains import DOMAINS
from mergebench.errors import ConfigError
from mergebench.eval import evaluate
from mergebench.eval.results import load_results
from mergebench.methods import REGISTRY, get
from mergebench.runner.point import GridPoint, PointRecord
from mergebench.runner.units import (
    EvaluationUnit,
    GridPointUnit,
    PointSpec,
    ResultsLocation,
    StageSpec,
    collect,
    load_unit,
    run_unit,
    spec_json,
)
from mergebench.work import is_current
from tests._hub_fixtures import hub_env

TASKS = ["mb_tinybench_math", "mb_tinybench_general"]


def _evaluation(model: Path, results: ResultsLocation) -> EvaluationUnit:
    return EvaluationUnit(label="base evaluation", results=results, path="results/tiny/base.json",
                          stage=StageSpec(kind="evaluation", inputs={"weights": "test", "tasks": TASKS}),
                          model=str(model), tasks=TASKS, max_samples=3, model_info={"role": "base", "label": "base"})


def _mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_an_evaluation_unit_runs_once_from_its_json_spec(tiny_llama, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    unit = _evaluation(tiny_llama.base, ResultsLocation(folder=str(run_dir)))
    spec = tmp_path / "unit.json"
    spec.write_text(spec_json(unit))
    cmd = [sys.executable, "-m", "mergebench.cli", "unit", "run", str(spec)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"base evaluation: done ({run_dir / 'results/tiny/base.json'})"
    results = load_results(run_dir / "results/tiny/base.json")
    assert is_current(run_dir / "results/tiny/.base.json.stage.json", unit.fingerprint)
    reference = evaluate(str(tiny_llama.base), tasks=TASKS, max_samples=3, progress=False)
    assert {t: results.score(t) for t in TASKS} == {t: reference.score(t) for t in TASKS}
    assert results.model["role"] == "base" and results.run["status"] == "complete"

    stamps = _mtimes(run_dir)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and second.stdout.strip().startswith("base evaluation: already done")
    assert _mtimes(run_dir) == stamps


def test_a_unit_publishes_to_a_hub_dataset_in_one_commit_and_is_collected(tiny_llama, tmp_path: Path, hub) -> None:
    unit = _evaluation(tiny_llama.base, ResultsLocation(repo="alice/runs", prefix="runs/tiny"))
    api = HfApi()
    assert not unit.is_done()
    assert run_unit(unit) == "done"
    files = api.list_repo_files("alice/runs", repo_type="dataset")
    assert {"runs/tiny/results/tiny/base.json", "runs/tiny/results/tiny/.base.json.stage.json"} <= set(files)
    commits = api.list_repo_commits("alice/runs", repo_type="dataset")
    assert run_unit(unit) == "skipped" and api.list_repo_commits("alice/runs", repo_type="dataset") == commits
    collect(unit, tmp_path / "run")
    assert is_current(tmp_path / "run" / unit.record, unit.fingerprint)
    assert load_results(tmp_path / "run" / unit.path).run["status"] == "complete"

    api.upload_file(path_or_fileobj=spec_json(unit).encode(), path_in_repo="runs/tiny/units/u.json",
                    repo_id="alice/runs", repo_type="dataset")
    env = {**hub_env(hub.url, tmp_path / "hf-home"), "PATH": str(Path(sys.executable).parent)}
    by_url = subprocess.run([sys.executable, "-m", "mergebench.cli", "unit", "run",
                             "hf://datasets/alice/runs/runs/tiny/units/u.json"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert by_url.returncode == 0, by_url.stderr
    assert "already done (hf://datasets/alice/runs/runs/tiny/results/tiny/base.json)" in by_url.stdout


def test_a_grid_point_unit_leaves_the_record_the_driver_reuses(tiny_llama, tmp_path: Path) -> None:
    recipe = {"method": "model_soup", "base_model": str(tiny_llama.base),
              "models": [{"model": str(tiny_llama.experts[d]), "domain": d} for d in DOMAINS], "parameters": {}}
    point = GridPoint(base="tiny", method_key="model_soup", recipe=recipe, validation_tasks=(),
                      fingerprints={"base": "test"})
    unit = GridPointUnit(label="model_soup merge", results=ResultsLocation(folder=str(tmp_path)),
                         path=f"grid/tiny/model_soup/{point.id}.json",
                         point=PointSpec(base=point.base, method_key=point.method_key, recipe=recipe,
                                         validation_tasks=(), fingerprints={"base": "test"}))
    again = load_unit(spec_json(unit))  # the JSON round trip keeps the identity
    assert again.fingerprint == unit.fingerprint == point.fingerprint
    assert run_unit(again) == "done"
    record = PointRecord.load(tmp_path / unit.path, point)
    assert record is not None and record.score is None and record.merge_seconds > 0
    assert "@" not in record.recipe["base_model"] and record.parameters == {}
    assert run_unit(unit) == "skipped"


def test_a_new_method_version_makes_a_finished_grid_point_stale(tiny_llama, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A fix that changes a method's numbers bumps its version: the run merges again instead of reusing."""
    recipe = {"method": "model_soup", "base_model": str(tiny_llama.base),
              "models": [{"model": str(tiny_llama.experts[d]), "domain": d} for d in DOMAINS], "parameters": {}}
    spec = PointSpec(base="tiny", method_key="model_soup", recipe=recipe, validation_tasks=())
    unit = GridPointUnit(label="model_soup merge", results=ResultsLocation(folder=str(tmp_path)),
                         path="grid/tiny/model_soup/point.json", point=spec)
    assert run_unit(unit) == "done"
    assert run_unit(unit) == "skipped"
    method = get("model_soup")
    monkeypatch.setitem(REGISTRY._specs, "model_soup", dataclasses.replace(method, version=method.version + 1))
    assert run_unit(unit) == "done"


def test_bad_specs_name_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_unit(json.dumps({"kind": "evaluation", "results": {"folder": "a", "repo": "b/c"}, "path": "r.json",
                              "tasks": [], "model": "org/model"}))
    text = str(e.value)
    assert "results: Value error, give exactly one of 'folder' or 'repo'" in text
    assert "evaluation.label: Field required" in text and "evaluation.stage: Field required" in text
    with pytest.raises(ConfigError) as e:
        load_unit(json.dumps({"kind": "evaluation", "label": "x", "results": {"folder": "a"}, "path": "r.json",
                              "tasks": [], "stage": {"kind": "evaluation", "inputs": {}}}))
    assert "exactly one of 'model' or 'merge'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_unit(json.dumps({"kind": "training"}))
    assert "kind" in str(e.value)
    result = subprocess.run([sys.executable, "-m", "mergebench.cli", "unit", "run", str(tmp_path / "missing.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Error: Unit spec" in result.stderr and "Hint:" in result.stderr
    assert "Traceback" not in result.stderr
