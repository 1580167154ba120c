"""Without ``--verbose`` the CLI hides its libraries' progress bars, warnings and logs, for the command only.

The switches are process-wide, so they live in the CLI entry (``_setup_logging``) and are undone when the
command ends: the same process (a test, a notebook calling the app) is left as it was.
"""

from __future__ import annotations

import logging
import os
import warnings

import pytest
from huggingface_hub.utils import are_progress_bars_disabled
from typer.testing import CliRunner

from mergebench.cli import _setup_logging, app

QUIET_ENV = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "DATASETS_VERBOSITY", "TRANSFORMERS_VERBOSITY",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*QUIET_ENV, "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)


def _state() -> dict:
    return {"env": {k: os.environ.get(k) for k in QUIET_ENV},
            "levels": {n: logging.getLogger(n).level for n in ("", "lighteval", "transformers", "datasets", "trl")},
            "bars": (are_progress_bars_disabled(), are_progress_bars_disabled("huggingface_hub.download")),
            "filters": list(warnings.filters)}


def test_quiet_switches_hold_during_the_command_and_are_undone_after(clean_env) -> None:
    before = _state()
    undo = _setup_logging(False)
    try:
        assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
        assert logging.getLogger("lighteval").level == logging.ERROR
        assert logging.getLogger().level == logging.WARNING
        assert are_progress_bars_disabled() and not are_progress_bars_disabled("huggingface_hub.download")
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit("library noise", UserWarning, "x.py", 1, module="transformers.trainer")
            warnings.warn_explicit("ours", UserWarning, "y.py", 1, module="mergebench.runner.run")
        assert [str(w.message) for w in caught] == ["ours"]
    finally:
        undo()
    assert _state() == before


def test_verbose_changes_only_the_log_level_and_the_app_leaves_the_process_as_it_was(clean_env) -> None:
    before = _state()
    undo = _setup_logging(True)
    assert logging.getLogger().level == logging.INFO and logging.getLogger("lighteval").level == logging.NOTSET
    assert os.environ.get("TRANSFORMERS_VERBOSITY") is None and not are_progress_bars_disabled()
    undo()
    assert _state() == before
    for flags in ([], ["-v"]):
        result = CliRunner().invoke(app, [*flags, "methods", "ls", "--format", "json"])
        assert result.exit_code == 0, result.output
        assert _state() == before
