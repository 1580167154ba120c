"""``refusal_judge:`` in ``BENCH.yaml``: checked with the rest of the configuration, pinned once per run like the
models (a Hub id → its commit sha), part of every evaluation's and grid point's fingerprint by that commit, and
carried pinned to every evaluation of a run, in process and in the unit specs that Ray and Hugging Face Jobs run.
A tiny random Llama, as a folder or a repo on the loopback Hub, stands in for ``allenai/wildguard`` (no download
here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from mergebench.domains import DOMAINS
from mergebench.errors import ConfigError
from mergebench.eval.results import load_results
from mergebench.fixtures import write_family_to_hub_root
from mergebench.hub.refs import pin
from mergebench.runner import BenchConfig, run_benchmark
from mergebench.runner.dispatch import _Waves, results_location
from mergebench.runner.progress import StageLog
from mergebench.runner.run import _grid, _Run
from mergebench.runner.units import (
    EvalOptions,
    EvaluationUnit,
    ResultsLocation,
    StageSpec,
    load_unit,
    run_unit,
    spec_json,
)
from mergebench.work import is_current


def _config(root: Path, **extra: object) -> BenchConfig:
    bench = {"name": "judged", "bases": [{"model": "org/base", "experts": {d: f"org/{d}" for d in DOMAINS}}],
             "methods": [{"method": "task_arithmetic", "grid": {"scaling": [0.3, 1.0]}}], **extra}
    return BenchConfig.from_dict(bench, root=root)


def test_the_config_takes_a_model_id_or_folder_and_names_anything_else(tmp_path: Path) -> None:
    (tmp_path / "judges" / "wildguard").mkdir(parents=True)
    assert _config(tmp_path).refusal_judge is None  # the rule-based judge, the CPU default
    assert _config(tmp_path, refusal_judge="allenai/wildguard").refusal_judge == "allenai/wildguard"
    local = _config(tmp_path, refusal_judge="judges/wildguard")  # relative to the configuration's folder
    assert _Run(local, stages=StageLog(enabled=False)).refusal_judge == str(tmp_path / "judges" / "wildguard")

    with pytest.raises(ConfigError) as e:
        _config(tmp_path, refusal_judge="rules")
    assert ("refusal_judge: 'rules' is neither an existing folder nor a Hub repo id of the form "
            "'org/name[@revision]' (a model repo). Leave it out (null) for the rule-based judge") in str(e.value)
    from mergebench.errors import RefError
    from mergebench.hub.refs import Ref

    with pytest.raises(RefError) as ref_error:  # the hint found missing by the slow fuzz run (a model named '0')
        Ref.parse("0")
    assert ref_error.value.hint and "./path" in ref_error.value.hint and "org/name" in ref_error.value.hint
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, refusal_judge="./judges/missing")
    assert "refusal_judge: Local folder './judges/missing' does not exist" in str(e.value)
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, refusal_judge=["allenai/wildguard"])
    assert "refusal_judge: Input should be a valid string" in str(e.value)


def _fingerprints(config: BenchConfig) -> tuple[str, list[str]]:
    """An evaluation's fingerprint and the grid points' of ``config``'s first method."""
    run = _Run(config, stages=StageLog(enabled=False))
    stage = run.evaluation_stage("weights", ["mb_tinybench_safety"], {"role": "base"}, section="evaluation")
    return stage.fingerprint, [p.fingerprint for p in _grid(run, config.bases[0], config.methods[0], {})]


def test_changing_the_judge_or_its_commit_changes_the_evaluation_and_grid_point_fingerprints(
        hub, hub_root: Path, tiny_llama, tmp_path: Path) -> None:
    repos = write_family_to_hub_root(tiny_llama, hub_root)
    judge, other = repos["base"], repos["math"]
    rules = _fingerprints(_config(tmp_path))
    wildguard = _fingerprints(_config(tmp_path, refusal_judge=judge))
    assert rules == _fingerprints(_config(tmp_path))  # stable
    assert wildguard == _fingerprints(_config(tmp_path, refusal_judge=judge))  # the same commit: the same units
    assert wildguard[0] != rules[0]
    assert not set(wildguard[1]) & set(rules[1]) and len(wildguard[1]) == 2
    assert _fingerprints(_config(tmp_path, refusal_judge=other)) != wildguard

    sha = HfApi().model_info(judge).sha
    run = _Run(_config(tmp_path, refusal_judge=judge), stages=StageLog(enabled=False))
    assert (run.refusal_judge, run.judge_name) == (f"{judge}@{sha}", f"classifier:{judge}@{sha}")  # pinned once
    HfApi().upload_file(path_or_fileobj=b"# a new commit of the judge\n", path_in_repo="NOTES.md", repo_id=judge)
    moved = _fingerprints(_config(tmp_path, refusal_judge=judge))
    assert moved[0] != wildguard[0] and not set(moved[1]) & set(wildguard[1])  # scored by the old commit: redone


def test_a_judge_folder_is_fingerprinted_by_its_content(tiny_llama, tmp_path: Path) -> None:
    folder = tmp_path / "judge"
    shutil.copytree(tiny_llama.base, folder)
    config = _config(tmp_path, refusal_judge=str(folder))
    before = _fingerprints(config)
    assert _Run(config, stages=StageLog(enabled=False)).judge_name == f"classifier:{folder}@{pin(str(folder)).revision}"
    (folder / "NOTES.md").write_text("new weights would do the same\n")
    assert _fingerprints(config)[0] != before[0]


def test_the_judge_reaches_every_evaluation_of_a_run_and_every_unit(hub, hub_root: Path, tiny_llama, validation_dir,
                                                                    tmp_path: Path) -> None:
    judge = write_family_to_hub_root(tiny_llama, hub_root)["base"]  # the models stay folders; the judge is a repo
    pinned = f"{judge}@{HfApi().model_info(judge).sha}"
    config = BenchConfig.from_dict({
        "name": "judged", "output": str(tmp_path / "run"),
        "bases": [{"name": "tiny-llama", "model": str(tiny_llama.base),
                   "experts": {d: str(p) for d, p in tiny_llama.experts.items()}}],
        "methods": [{"method": "task_arithmetic", "grid": {"scaling": [0.3, 1.0]}}],  # two points: validated
        "validation": {"suites": ["tinybench_validation"], "max_samples": 2},
        "evaluation": {"suites": ["tinybench"], "max_samples": 2}, "refusal_judge": judge})
    summary = run_benchmark(config, progress=False)
    results = {p.name: load_results(p) for p in (summary.results_dir / "tiny-llama").glob("[!.]*.json")}
    assert set(results) == {"base.json", *(f"expert_{d}.json" for d in DOMAINS), "task_arithmetic.json"}
    assert {r.settings["judge"] for r in results.values()} == {f"classifier:{pinned}"}  # the commit it judged with
    validations = [json.loads(p.read_text())["validation"] for p in (summary.output / "grid").rglob("[!.]*.json")]
    assert len(validations) == 2 and {v["settings"]["judge"] for v in validations} == {f"classifier:{pinned}"}
    assert set(summary.table["judge"]) == {f"classifier:{pinned}"}

    # the executors' units: the same fingerprints as in process (so the finished run holds every record), the judge
    run = _Run(config, stages=StageLog(enabled=False))
    waves = _Waves(run, config.methods, results_location(config, summary.output))
    units = waves.references() + waves.points()
    assert len(units) == 8
    for unit in units:
        assert is_current(summary.output / unit.record, unit.fingerprint), unit.label
        assert load_unit(spec_json(unit)).options.refusal_judge == pinned  # a Job loads exactly that commit


def test_an_evaluation_unit_spec_carries_the_judge_to_its_evaluation(tiny_llama, tmp_path: Path) -> None:
    judge = str(tiny_llama.base)
    unit = EvaluationUnit(label="judged", results=ResultsLocation(folder=str(tmp_path)), path="results/base.json",
                          stage=StageSpec(kind="evaluation", inputs={"judge": f"classifier:{judge}"}),
                          model=str(tiny_llama.base), tasks=["mb_tiny_harmbench"], max_samples=1,
                          options=EvalOptions(refusal_judge=judge))
    again = load_unit(spec_json(unit))  # what a Job's command line or units/<id>.json carries
    assert isinstance(again, EvaluationUnit) and again.options.refusal_judge == judge
    assert run_unit(again) == "done"
    results = load_results(tmp_path / "results" / "base.json")
    name = f"classifier:{judge}@{pin(judge).revision}"
    assert results.settings["judge"] == name
    assert results.tasks["mb_tiny_harmbench"].side_info["judge"] == {"name": name, "kind": "classifier"}
