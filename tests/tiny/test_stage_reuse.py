"""Tiny stages are reused only when built from the same inputs (issue #15): a changed training recipe retrains
the experts, changed data rebuilds the data and everything downstream, unchanged stages are never redone.

Training and the benchmark run are replaced by recorders (``train_expert`` writes a stand-in expert folder,
``run_benchmark`` notes its call); the data are written for real and the base is the tiny Llama fixture,
converted like SmolLM2. So every test here runs in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import mergebench.runner
import mergebench.train
from mergebench.domains import DOMAINS
from mergebench.fixtures import Family
from mergebench.runner.run import RunSummary
from mergebench.tiny import data as tiny_data
from mergebench.tiny.pipeline import TinyConfig, TinyWork, prepare, run_tiny
from mergebench.train import config as train_config

RECIPE = Path(train_config.__file__).parent / "recipes" / "tiny.yaml"


class Recorder:
    """Stands in for ``train_expert`` (a folder with the training record, as a finished expert has) and for
    ``run_benchmark``; ``fail_on`` makes training of that domain raise, as an interrupted run would."""

    def __init__(self) -> None:
        self.trained: list[str] = []
        self.recipes: list[dict] = []
        self.runs: list[dict] = []
        self.fail_on: str | None = None

    def train_expert(self, *, base, domain, data, out_dir, config, overwrite, **kwargs):
        if domain == self.fail_on:
            raise KeyboardInterrupt
        assert overwrite
        self.trained.append(domain)
        self.recipes.append(config.model_dump())
        out_dir = Path(out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        (out_dir / "mergebench_train.yaml").write_text(config.to_yaml())
        (out_dir / "trained_on.json").write_text(json.dumps({"base": str(base), "data": str(data[domain])}))
        return type("Result", (), {"seconds": 0.0, "final_loss": 0.0})()

    def run_benchmark(self, bench, **kwargs):
        run = Path(bench).parent / "run"
        self.runs.append({"resume": kwargs.get("resume"), "kept": sorted(p.name for p in run.glob("*.json"))})
        (run / "results").mkdir(parents=True, exist_ok=True)
        return RunSummary(run, run / "results", pd.DataFrame(), 0.0)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_llama: Family) -> tuple[Recorder, Path]:
    """A recorder in place of training and the runner, a writable copy of the shipped recipes, the fixture base."""
    recorder = Recorder()
    monkeypatch.setattr(mergebench.train, "train_expert", recorder.train_expert)
    monkeypatch.setattr(mergebench.runner, "run_benchmark", recorder.run_benchmark)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(RECIPE, recipes / "tiny.yaml")
    monkeypatch.setattr(train_config, "RECIPES", recipes)
    import mergebench.fixtures.smollm2 as smollm2

    monkeypatch.setattr(smollm2, "smollm2_model_dir", lambda *args, **kwargs: tiny_llama.base)
    return recorder, recipes / "tiny.yaml"


def _edit(recipe: Path, **changes) -> None:
    data = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**data, **changes}))


def _stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_changed_training_recipe_retrains_every_expert_and_nothing_else(tiny, tmp_path: Path) -> None:
    recorder, recipe = tiny
    work = TinyWork(tmp_path / "work")
    prepare(work.root)
    assert recorder.trained == list(DOMAINS)
    data, base = _stamps(work.data), _stamps(work.base)

    prepare(work.root)  # nothing changed: nothing is redone
    assert recorder.trained == list(DOMAINS)

    _edit(recipe, learning_rate=1.0e-4)
    prepare(work.root)
    assert recorder.trained == list(DOMAINS) * 2
    assert recorder.recipes[-1]["learning_rate"] == 1.0e-4

    _edit(recipe, max_steps=24)
    prepare(work.root)
    assert recorder.trained == list(DOMAINS) * 3
    assert recorder.recipes[-1]["max_steps"] == 24
    assert _stamps(work.data) == data and _stamps(work.base) == base  # upstream stages were reused

    record = json.loads((work.experts / "math" / "mergebench-tiny-stage.json").read_text())
    assert record["stage"] == "expert" and record["inputs"]["recipe"]["max_steps"] == 24
    assert record["inputs"]["recipe"]["learning_rate"] == 1.0e-4 and len(record["fingerprint"]) == 64


def test_changed_data_rows_rebuild_that_domain_its_expert_and_the_benchmark_run(
        tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder, _ = tiny
    work = TinyWork(tmp_path / "work")
    run_tiny(work.root, progress=False)
    assert recorder.trained == list(DOMAINS) and len(recorder.runs) == 1
    (work.root / "run").mkdir(exist_ok=True)
    (work.root / "run" / "point.json").write_text("{}")  # a finished result of the first benchmark run
    coding = _stamps(work.data / "coding")

    run_tiny(work.root, progress=False)  # nothing changed: the run resumes with its results
    assert recorder.trained == list(DOMAINS)
    assert recorder.runs[-1]["resume"] is True and "point.json" in recorder.runs[-1]["kept"]

    generate = tiny_data.chat_rows

    def changed_math(domain: str, split: str, n: int, *, seed: int = 0) -> list[dict]:
        rows = generate(domain, split, n, seed=seed)
        if domain == "math":  # a fixed bug in one generator: other domains' rows are unchanged
            for row in rows:
                row["messages"][-1]["content"] += " Done."
        return rows

    monkeypatch.setattr(tiny_data, "chat_rows", changed_math)
    run_tiny(work.root, progress=False)
    rows = [json.loads(line) for line in (work.data / "math" / "validation.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["content"].endswith(" Done.") for r in rows)
    assert _stamps(work.data / "coding") == coding
    assert recorder.trained == [*DOMAINS, "math"]  # only the expert trained on the changed data
    assert recorder.runs[-1]["kept"] == ["mergebench-tiny-stage.json"]  # the old results were discarded


def test_changed_data_settings_rebuild_all_data_and_retrain_every_expert(tiny, tmp_path: Path) -> None:
    recorder, _ = tiny
    work = TinyWork(tmp_path / "work")
    small = TinyConfig(train_rows=48, validation_rows=8)
    prepare(work.root, config=small)
    prepare(work.root, config=small)
    assert recorder.trained == list(DOMAINS)
    prepare(work.root, config=TinyConfig(train_rows=48, validation_rows=8, seed=1))
    assert recorder.trained == list(DOMAINS) * 2
    assert len((work.data / "safety" / "validation.jsonl").read_text().splitlines()) == 8
    assert tiny_data.chat_rows("safety", "validation", 8, seed=1) == [
        json.loads(line) for line in (work.data / "safety" / "validation.jsonl").read_text().splitlines()]


def test_an_interrupted_expert_is_trained_again_and_finished_ones_are_kept(tiny, tmp_path: Path) -> None:
    recorder, _ = tiny
    work = TinyWork(tmp_path / "work")
    recorder.fail_on = "coding"
    with pytest.raises(KeyboardInterrupt):
        prepare(work.root)
    assert recorder.trained == ["instruction", "math", "multilingual"]
    recorder.fail_on = None
    prepare(work.root)
    assert recorder.trained == ["instruction", "math", "multilingual", "coding", "safety"]


def test_a_folder_without_a_stage_record_is_rebuilt(tiny, tmp_path: Path) -> None:
    """An expert left by an older MergeBench (its training record but no stage record) says nothing about the
    recipe it was trained with, so it is trained again. A data folder with a damaged record is rewritten; its
    rows are the same, so the expert trained on them is still current."""
    recorder, _ = tiny
    work = TinyWork(tmp_path / "work")
    prepare(work.root)
    math_data = _stamps(work.data / "math")
    (work.experts / "safety" / "mergebench-tiny-stage.json").unlink()
    (work.data / "math" / "mergebench-tiny-stage.json").write_text("{not json")
    prepare(work.root)
    assert recorder.trained == [*DOMAINS, "safety"]
    assert _stamps(work.data / "math").keys() == math_data.keys() != {}
    assert _stamps(work.data / "math")["data/train-00000-of-00001.parquet"] != math_data[
        "data/train-00000-of-00001.parquet"]
