"""The runner configuration Tiny writes: valid, portable (paths relative to the file), eight methods, small grids."""

from __future__ import annotations

from pathlib import Path

from mergebench.domains import DOMAINS
from mergebench.runner import BenchConfig
from mergebench.tiny.pipeline import TinyWork, write_bench_config


def test_the_configuration_validates_resolves_inside_the_work_folder_and_has_small_grids(tmp_path, monkeypatch
                                                                                          ) -> None:
    work = TinyWork(tmp_path / "work")
    for d in DOMAINS:
        (work.experts / d).mkdir(parents=True)
        (work.data / d).mkdir(parents=True)
        (work.data / d / "validation.jsonl").write_text("")
    work.base.mkdir()
    path = write_bench_config(work)
    monkeypatch.chdir(tmp_path)  # another working directory: nothing may depend on it
    config = BenchConfig.from_yaml(Path("work") / "bench.yaml")
    assert config.output_dir == work.root.resolve() / "run"
    base = config.bases[0]
    assert config.model_ref(base.model) == str(work.base.resolve())
    assert {d: config.model_ref(p) for d, p in base.experts.items()} == {
        d: str((work.experts / d).resolve()) for d in DOMAINS}
    assert config.data_ref(config.data["math"]) == str((work.data / "math" / "validation.jsonl").resolve())
    points = {m.key: len(m.points()) for m in config.methods}
    assert points == {"model_soup": 1, "task_arithmetic": 2, "ties": 1, "dare": 1, "consensus": 1,
                      "localize_stitch": 1, "localize_stitch__trained": 1, "regmean": 1, "fisher": 1}
    assert config.validation.task_names() == [f"mb_tinybench_{d}_val" for d in DOMAINS]
    assert path == work.bench
