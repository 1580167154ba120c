"""``docs/bad-inputs.md`` is current: ``benchmarks/bad_inputs.py`` run in-process (the console script's entry
point, the same loopback Hub) renders exactly the committed page."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mergebench.hub.endpoint import use_endpoint
from tests.fuzz._checks import run_cli

REPO = Path(__file__).resolve().parents[2]


def _in_process(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    with use_endpoint(env["HF_ENDPOINT"], hf_home=Path(env["HF_HOME"])):
        run = run_cli(args, cwd=cwd)
    return run.code, run.stderr


@pytest.mark.slow
def test_the_bad_input_table_is_current() -> None:
    spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "benchmarks" / "bad_inputs.py")
    assert spec is not None and spec.loader is not None
    bad_inputs = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bad_inputs  # its dataclasses look their module up there
    spec.loader.exec_module(bad_inputs)
    assert bad_inputs.table(_in_process) == bad_inputs.TABLE.read_text(), \
        "docs/bad-inputs.md is stale: run `python benchmarks/bad_inputs.py --write`"
