"""Fixtures of the Space tests: its flat modules importable, a loopback Hub holding the tiny Llama family
(plus a Gemma-2 model and a ``.bin``-only repo for the bad-input cases) and the fixture reference results.

The Hub is module-scoped (the browser tests serve one app per module); ``HF_TOKEN`` is the loopback dummy,
so Gradio's local OAuth mock signs in as the loopback Hub's user ``alice``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mergebench.fixtures import build_family, write_family_to_hub_root
from mergebench.hub.endpoint import use_endpoint
from mergebench.hubserver import LoopbackHub
from tests._hub_fixtures import DUMMY_TOKEN
from tests.space.fixture_results import write_fixture_results

SPACE_DIR = Path(__file__).resolve().parents[2] / "space"
sys.path.insert(0, str(SPACE_DIR))

GEMMA = "mergebench-fixtures/tiny-gemma2"
BIN_ONLY = "someone/pickled-merge"
# the tiny suite's two log-likelihood tasks on 2 items: a CPU evaluation of a tiny model in seconds
EVAL_TASKS = ("mb_tiny_hellaswag", "mb_tiny_mmlu_stem")


@dataclass(frozen=True)
class SpaceHub:
    url: str
    root: Path
    repos: dict[str, str]
    results_dir: Path
    server: LoopbackHub
    """For faults (``server.faults``) and request counts (``server.stats``)."""


def _bin_only_repo(root: Path, config: dict) -> None:
    repo = root / "models" / BIN_ONLY
    repo.mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps(config))
    (repo / "pytorch_model.bin").write_bytes(b"not a safetensors file")


@pytest.fixture(scope="module")
def space_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpaceHub]:
    root = tmp_path_factory.mktemp("space-hub")
    fixtures = tmp_path_factory.mktemp("space-fixtures")
    repos = write_family_to_hub_root(build_family(fixtures, "llama"), root)
    gemma = build_family(fixtures, "gemma2")
    write_family_to_hub_root(gemma, root)
    _bin_only_repo(root, json.loads((fixtures / "tiny-llama" / "config.json").read_text()))
    results_dir = tmp_path_factory.mktemp("space-results")
    write_fixture_results(results_dir)
    with LoopbackHub(root) as server, use_endpoint(server.url, hf_home=tmp_path_factory.mktemp("space-hf-home"),
                                                      token=DUMMY_TOKEN):
        yield SpaceHub(server.url, root, repos, results_dir / "results", server)
