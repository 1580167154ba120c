"""Fixtures of the cut-down MergeBench-Tiny runs (:mod:`tests.tiny._cutdown`), shared by the tests that read them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from mergebench.fixtures import Family
from mergebench.train import config as train_config
from tests.tiny._cutdown import run_cutdown


@pytest.fixture(scope="session")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped recipes, with ``tiny`` cut to 2 steps on 32 rows per domain."""
    folder = tmp_path_factory.mktemp("recipes")
    recipe = yaml.safe_load((train_config.RECIPES / "tiny.yaml").read_text())
    (folder / "tiny.yaml").write_text(yaml.safe_dump({**recipe, "max_steps": 2, "max_rows_per_domain": 32}))
    return folder


@pytest.fixture(scope="session")
def first_run(tiny_llama: Family, recipes: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, subprocess.CompletedProcess]:
    """A cut-down Tiny run from scratch: its work folder and the finished process."""
    work = tmp_path_factory.mktemp("tiny") / "work"
    return work, run_cutdown(tiny_llama.base, recipes, work)
