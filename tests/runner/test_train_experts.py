"""``mergebench train-experts``: every expert of a plan is one unit (:class:`ExpertUnit`) on the executors of a
benchmark run. Two tiny-Llama experts trained as loopback Hugging Face Jobs land on the Hub with their records and
costs, and running again launches nothing; locally, through the CLI, the same; an expert trained on several
processes is launched by ``accelerate`` with the spec's recipe and config; a bad plan is refused whole."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi
from typer.testing import CliRunner

from mergebench.cli import app
from mergebench.errors import ConfigError
from mergebench.runner.executors.hf_jobs import RUN_LABEL, UNIT_LABEL
from mergebench.runner.experts import TrainPlan, train_experts
from mergebench.runner.progress import StageLog
from mergebench.runner.units import ExpertUnit, ResultsLocation, load_unit, run_unit
from mergebench.train import load_train_config
from mergebench.work import read_record
from tests.train._data import TINY_BASE as BASE
from tests.train._data import push_training_inputs, write_domain_folder

QUICK = {"max_steps": 2, "per_device_batch_size": 2, "effective_batch_size": 2, "max_length": 64, "num_threads": 1,
         "logging_steps": 1}
"""The tiny recipe cut to two steps of two 64-token sequences: the experts' weights are not the point here."""


@pytest.fixture
def hub_inputs(hub, tiny_llama, tmp_path: Path) -> None:
    """The tiny Llama base and the math and coding training sets, on the loopback Hub."""
    push_training_inputs(tiny_llama.base, ("math", "coding"), tmp_path)


def test_experts_dispatched_as_jobs_land_on_the_hub_and_run_once(hub_inputs, tmp_path: Path) -> None:
    plan = TrainPlan.from_dict({
        "name": "tiny-experts", "output": str(tmp_path / "run"), "bases": [BASE], "domains": ["math", "coding"],
        "data": "mergebench/mergebench-{domain}", "recipe": "tiny", "overrides": QUICK,
        "push_to": "mergebench/{base}_{domain}",
        "executor": {"kind": "hf-jobs", "results_repo": "alice/expert-runs", "max_concurrent": 2, "retries": 0,
                     "hf_jobs": {"image": "mergebench:test", "poll_seconds": 0.3, "flavors": {"expert": "cpu-basic"},
                                 "timeout": "10m"}}})
    outcomes = train_experts(plan, stages=StageLog(enabled=False))
    api = HfApi()
    assert [(o.expert, o.status, o.kept, o.steps) for o in outcomes] == [
        ("tiny-llama_math", "trained", "mergebench/tiny-llama_math", 2),
        ("tiny-llama_coding", "trained", "mergebench/tiny-llama_coding", 2)]
    jobs = list(api.list_jobs())
    assert len(jobs) == 2 and {j.status.stage for j in jobs} == {"COMPLETED"} and {j.flavor for j in jobs} == {
        "cpu-basic"}
    assert {j.labels[UNIT_LABEL] for j in jobs} == {u.id for u in plan.units(ResultsLocation(folder="."))}
    ledger = json.loads((tmp_path / "run" / "jobs" / "ledger.json").read_text())
    usd = {entry["label"]: entry["usd"] for entry in ledger.values()}  # cpu-basic: $0.01/h × running time
    assert [o.usd for o in outcomes] == [pytest.approx(usd[f"{o.expert} expert"], abs=1e-6) for o in outcomes]
    sha = api.model_info(BASE).sha
    for domain in ("math", "coding"):
        repo = f"mergebench/tiny-llama_{domain}"
        assert {"model.safetensors", "mergebench_train.yaml", "README.md"} <= set(api.list_repo_files(repo))
        record = read_record(tmp_path / "run" / "experts" / f"tiny-llama_{domain}.json")
        assert record is not None and record["outputs"]["base_revision"] == sha
        assert record["outputs"]["data_revisions"] == {
            domain: api.dataset_info(f"mergebench/mergebench-{domain}").sha}
        assert record["outputs"]["pushed_to"] == repo and record["outputs"]["out_dir"] is None
    spec = load_unit(next((tmp_path / "run" / "units").glob("*.json")))
    assert isinstance(spec, ExpertUnit) and spec.base == f"{BASE}@{sha}"  # pinned when the plan was made

    again = train_experts(plan, stages=StageLog(enabled=False))
    assert [o.status for o in again] == ["already trained"] * 2
    assert len(list(api.list_jobs(labels={RUN_LABEL: jobs[0].labels[RUN_LABEL]}))) == 2  # nothing launched


def test_local_experts_through_the_cli_are_trained_once(tiny_llama, tmp_path: Path) -> None:
    write_domain_folder(tmp_path / "data" / "math", "math", train_rows=16)
    plan = tmp_path / "experts.yaml"
    plan.write_text(yaml.safe_dump({"name": "local", "bases": [str(tiny_llama.base)], "domains": ["math"],
                                    "data": "./data/{domain}", "recipe": "tiny", "overrides": QUICK,
                                    "out": "experts/{base}_{domain}"}))
    first = CliRunner().invoke(app, ["train-experts", str(plan), "--format", "json"])
    assert first.exit_code == 0, first.output
    [row] = json.loads(first.stdout)
    expert = tmp_path / "experts" / f"{tiny_llama.base.name}_math"
    assert (row["status"], row["kept"], row["steps"], row["usd"]) == ("trained", str(expert), 2, None)
    assert (expert / "model.safetensors").is_file() and (tmp_path / "runs" / "local" / "units").is_dir()
    stamp = (expert / "model.safetensors").stat().st_mtime_ns

    second = CliRunner().invoke(app, ["train-experts", str(plan), "--format", "json"])
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)[0]["status"] == "already trained"
    assert (expert / "model.safetensors").stat().st_mtime_ns == stamp


def test_an_expert_on_several_processes_is_launched_by_accelerate(tmp_path: Path, monkeypatch) -> None:
    """The spec's recipe and accelerate config reach ``accelerate launch``; the record comes from the manifest the
    launched training wrote (here a fake ``accelerate`` that records its arguments and writes one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "accelerate"
    fake.write_text(f"""#!{sys.executable}
import json, pathlib, sys, yaml
args = sys.argv[1:]
config = dict(zip(args, args[1:]))
calls = pathlib.Path({str(tmp_path / 'calls.jsonl')!r})
with calls.open('a') as log:
    log.write(json.dumps({{'args': args, 'recipe': yaml.safe_load(open(config['--config'])),
                          'accelerate': open(config['--config_file']).read()}}) + '\\n')
out = pathlib.Path(config['--out'])
out.mkdir(parents=True)
(out / 'mergebench_train.yaml').write_text(yaml.safe_dump({{
    'base': {{'revision': 'abc'}}, 'data': {{'math': {{'revision': 'def'}}}},
    'stats': {{'steps': 7, 'train_tokens': 100, 'final_loss': 1.5, 'train_seconds': 2.0, 'seconds': 3.0}}}}))
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}")
    recipe = load_train_config("paper").model_dump(mode="json")
    unit = ExpertUnit(label="B_math expert", results=ResultsLocation(folder=str(tmp_path / "run")),
                      path="experts/B_math.json", name="B_math", base="org/B@abc", domain="math",
                      data={"math": "org/mergebench-math@def"}, identities={}, recipe=recipe,
                      out_dir=str(tmp_path / "B_math"), push_to="org/B_math", processes=8,
                      accelerate_config="distributed_type: DEEPSPEED\n")
    assert run_unit(unit) == "done"
    [call] = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    args = call["args"]
    assert args[:3] == ["launch", "--num_processes", "8"] and args[3] == "--config_file"
    assert args[5:] == ["-m", "mergebench.cli", "train", "--base", "org/B@abc", "--domain", "math", "--data",
                        "math=org/mergebench-math@def", "--out", str(tmp_path / "B_math"), "--config", args[17],
                        "--overwrite", "--push-to", "org/B_math"]
    assert call["recipe"] == recipe and call["accelerate"] == "distributed_type: DEEPSPEED\n"
    record = read_record(tmp_path / "run" / "experts" / "B_math.json")
    assert record is not None and record["outputs"]["steps"] == 7 and record["outputs"]["final_loss"] == 1.5
    assert run_unit(unit) == "skipped"  # finished: nothing is launched again
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 1


def test_a_bad_plan_is_refused_whole_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        TrainPlan.from_dict({
            "bases": ["org/Base-3B", "other/Base-3B"], "domains": ["math", "maths", "all"],
            "data": {"math": "org/m"}, "out": "experts/{base}", "processes": 3,
            "executor": {"kind": "hf-jobs", "hf_jobs": {"flavors": {"evaluation": "l40sx1"}}}}, root=tmp_path)
    assert info.value.message.splitlines() == [
        "Invalid training plan:",
        "  - domains: Unknown domain 'maths'.",
        "  - data: nothing for coding, instruction, multilingual, safety (needed by the all expert)",
        "  - bases: two bases are named 'Base-3B'; expert names (Base-3B_<domain>) must differ",
        "  - out: 'experts/{base}' puts several experts in one place; use {base} and {domain}",
        "  - hf-jobs: a Job's disk is gone when it ends; give 'push_to' and no 'out'",
        "  - executor.hf_jobs.flavors: no 'expert' flavor (e.g. a100x8 for the paper's recipe)",
        "  - recipe: effective_batch_size 160 is not a multiple of per_device_batch_size 4 × 3 device(s) = 12."]
    with pytest.raises(ConfigError, match=r"^Invalid training plan:\n  - data: Field required$"):
        TrainPlan.from_dict({"bases": ["org/B"]})
    with pytest.raises(ConfigError) as info:
        TrainPlan.from_dict({"bases": ["org/B"], "data": "org/{dataset}", "push_to": "org/{model}"})
    assert info.value.message.splitlines()[1:] == [
        "  - data: Value error, cannot fill in 'org/{dataset}' (KeyError: 'dataset'); only {domain} can be used",
        "  - push_to: Value error, cannot fill in 'org/{model}' (KeyError: 'model'); only {base} and {domain} can be "
        "used"]
