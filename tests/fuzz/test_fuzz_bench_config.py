"""Fuzzed benchmark configurations (``BENCH.yaml``): a configuration or a MergeBench error with a hint, never a
traceback or a hang; a rejected one through ``mergebench run`` exits 1 with ``Error:``/``Hint:`` and writes
nothing. (An accepted one would start a benchmark run, which the runner's own tests cover.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from mergebench.domains import DOMAINS
from mergebench.errors import MergeBenchError
from mergebench.runner.config import BenchConfig
from tests.fuzz._checks import CLI_SAMPLE, check_cli_error, files_under, outcome, run_cli
from tests.fuzz.strategies import YAML_TOKENS, documents, encoded, mutated, render, text_edits

KEYS = st.sampled_from([
    "name", "output", "bases", "model", "experts", "multitask", "data", "methods", "method", "label", "parameters",
    "grid", "validation", "evaluation", "suites", "tasks", "max_samples", "dtype", "batch_size", "eval_data", "merge",
    "shard_size", "threads", "push", "results", "models", "private", "keep_models", "executor", "kind",
    "max_concurrent", "retries", "results_repo", "ray", "hf_jobs", "resources", "cpus", "gpus", "flavors",
    "timeout", "scaling", "top_k", *DOMAINS])
VALID = {
    "name": "fuzz-bench", "output": "runs/fuzz",
    "bases": [{"name": "tiny", "model": "./base", "experts": {d: f"./e_{d}" for d in DOMAINS}, "multitask": "./all"}],
    "data": {d: f"./{d}.jsonl" for d in DOMAINS},
    "methods": [{"method": "task_arithmetic", "grid": {"scaling": [0.3, 1.0]}},
                {"method": "ties", "label": "ties (small)", "parameters": {"top_k": 0.1}}],
    "validation": {"suites": ["tinybench_validation"], "max_samples": 4},
    "evaluation": {"suites": ["tinybench"], "tasks": [], "batch_size": 8},
    "eval_data": None, "merge": {"dtype": "bfloat16", "shard_size": 1 << 20, "threads": 2},
    "push": {"results": "org/results", "models": "org", "private": False}, "keep_models": True,
    "executor": {"kind": "local", "max_concurrent": 2, "retries": 1,
                 "ray": {"address": None, "resources": {"grid_point": {"cpus": 1, "gpus": 0}}},
                 "hf_jobs": {"image": "hf.co/spaces/org/mb", "flavors": {"evaluation": "a10g-large"}, "timeout": "2h"}},
}
SNIPPETS = ("\nname: again\n", "\nmethods: [{method: ties, grid: {top_k: [.nan]}}]\n", "\n? [a]\n: b\n",
            "\nx: &a {suites: [tinybench]}\nvalidation: *a\n", "\t", "  ", "- ", ": ", "\n---\n", *YAML_TOKENS)
BENCH_TEXTS = st.one_of(
    st.binary(max_size=200),
    documents("yaml", KEYS).map(lambda t: encoded(render(t, "yaml"))),
    mutated(VALID, "yaml", KEYS).map(lambda t: encoded(render(t, "yaml"))),
    mutated(VALID, "yaml", KEYS).map(lambda t: encoded(render(t, "yaml"))),
    text_edits(yaml.safe_dump(VALID, sort_keys=False), SNIPPETS).map(encoded),
)


def _parse(path: Path) -> BenchConfig | MergeBenchError:
    result = outcome(lambda: BenchConfig.from_yaml(path))
    if isinstance(result, BenchConfig):  # what it accepted reads back the same (the runner fingerprints the dump)
        dumped = result.model_dump(mode="json")
        assert BenchConfig.from_dict(dumped, root=result.root).model_dump(mode="json") == dumped
    return result


@pytest.mark.fuzz
@given(BENCH_TEXTS, CLI_SAMPLE)
@example(b"- 1\n", 0)  # not a mapping: the error had no hint
def test_bench_configs(tmp_path_factory: pytest.TempPathFactory, text: bytes, sample: int) -> None:
    """Every case through the parser; one in ten (``sample == 0``) rejected ones also through ``mergebench run``."""
    work = tmp_path_factory.mktemp("bench", numbered=True)
    (work / "bench.yaml").write_bytes(text)
    before = files_under(work)
    if isinstance(_parse(work / "bench.yaml"), MergeBenchError) and sample == 0:
        run = run_cli(["run", "bench.yaml"], cwd=work)
        check_cli_error(run)
        assert files_under(work) == before, "a rejected configuration left files behind"
    shutil.rmtree(work)
