"""A sample of fuzzed inputs through the real ``mergebench`` console script, each a whole process (the other fuzz
tests call its entry point in-process): a recipe to ``merge``, a safetensors file behind ``plan``, a benchmark
configuration to ``run`` and a results file to ``space``. Each exits 1 with ``Error:``/``Hint:`` lines on
stderr and no traceback, leaving no file behind, or (a valid recipe or model) exits 0 with a complete result.
Three cases in the fast profile, one per hundred of the slow profile's cases."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mergebench.errors import MergeBenchError
from mergebench.eval.results import load_results
from mergebench.runner.config import BenchConfig
from tests._hub_fixtures import hub_env
from tests.fuzz._checks import CliRun, FuzzHub, check_cli_error, files_under, outcome
from tests.fuzz.test_fuzz_bench_config import BENCH_TEXTS
from tests.fuzz.test_fuzz_recipe import RECIPE_TEXTS
from tests.fuzz.test_fuzz_results import RESULTS_TEXTS
from tests.fuzz.test_fuzz_safetensors import FILES

MERGEBENCH = str(Path(sys.executable).with_name("mergebench"))
PROCESS_SECONDS = 300.0
RECIPE = "method: task_arithmetic\nbase_model: ./model\nmodels: [{model: ./model}]\n"
CASES = st.one_of(RECIPE_TEXTS.map(lambda b: ("recipe", b)), FILES.map(lambda b: ("safetensors", b)),
                  BENCH_TEXTS.map(lambda b: ("bench", b)), RESULTS_TEXTS.map(lambda b: ("results", b)))


def _rejected(kind: str, path: Path) -> bool:
    """Whether the parser rejects the file (a valid benchmark or results file would start a run or the Space)."""
    parse = BenchConfig.from_yaml if kind == "bench" else load_results
    return isinstance(outcome(lambda: parse(path)), MergeBenchError)


def _setup(kind: str, data: bytes, work: Path, family: Path) -> list[str] | None:
    """Write the case into ``work``; the command line to run, or None when the case would start a long run."""
    if kind == "recipe":
        for name in ("base", "e0", "e1"):
            (work / name).symlink_to(family / name)
        (work / "recipe.yaml").write_bytes(data)
        return ["merge", "recipe.yaml", "--out", "out"]
    if kind == "safetensors":
        (work / "model").mkdir()
        (work / "model" / "model.safetensors").write_bytes(data)
        (work / "recipe.yaml").write_text(RECIPE)
        return ["plan", "recipe.yaml"]
    name = "bench.yaml" if kind == "bench" else "results.json"
    (work / name).write_bytes(data)
    if not _rejected(kind, work / name):
        return None
    return ["run", name] if kind == "bench" else ["space", "--results", name, "--work-dir", "state"]


@pytest.fixture(scope="module")
def family(tiny_llama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-family")
    (root / "base").symlink_to(tiny_llama.base)
    for i, domain in enumerate(("math", "coding")):
        (root / f"e{i}").symlink_to(tiny_llama.experts[domain])
    return root


_case = itertools.count()


@pytest.mark.fuzz
@settings(max_examples=max(3, settings.default.max_examples // 100))
@given(CASES)
def test_fuzzed_inputs_through_the_console_script(family: Path, fuzz_hub: FuzzHub,
                                                  tmp_path_factory: pytest.TempPathFactory,
                                                  case: tuple[str, bytes]) -> None:
    kind, data = case
    work = tmp_path_factory.mktemp(f"cli{next(_case)}-{kind}")
    args = _setup(kind, data, work, family)
    if args is None:
        return
    before = files_under(work)
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, **hub_env(fuzz_hub.url, home), "HOME": str(home)}
    proc = subprocess.run([MERGEBENCH, *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=PROCESS_SECONDS)
    run = CliRun(proc.returncode, proc.stdout, proc.stderr)
    if run.code == 0 and kind in ("recipe", "safetensors"):  # a valid recipe or model: merged or planned
        assert kind == "safetensors" or (work / "out" / "config.json").is_file(), run.stderr[-2000:]
        assert not (work / ".out.partial").exists()
        return
    check_cli_error(run)
    assert files_under(work) == before, f"files left behind: {sorted(files_under(work) - before)}"
