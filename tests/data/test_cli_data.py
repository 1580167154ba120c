"""The ``mergebench data`` commands (typer app tested directly; no Hub needed for these)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mergebench.cli.data import data_app, parse_pairs
from mergebench.errors import ConfigError, OutputExistsError


def test_parse_pairs():
    assert parse_pairs(["aya=v1.0"], what="--source-revision", sources=("aya",)) == {"aya": "v1.0"}
    assert parse_pairs(["abc123"], what="--source-revision", sources=("aya",)) == {"aya": "abc123"}
    assert parse_pairs(["wildjailbreak=me/wjb"], what="--source", sources=("wildguardmix", "wildjailbreak")) == {
        "wildjailbreak": "me/wjb"}
    with pytest.raises(ConfigError, match="must be KEY=main for a domain with several sources") as e:
        parse_pairs(["main"], what="--source-revision", sources=("dart-math-hard", "numinamath-tir"))
    assert e.value.hint == "Sources: dart-math-hard, numinamath-tir."


def test_eval_sets_command_writes_every_config(tmp_path: Path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(data_app, ["eval-sets", "--out", str(out), "--tasks", "gsm8k,harmbench",
                                           "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {"out_dir": str(out), "configs": {"gsm8k": {"test": 100},
                                                       "harmbench": {"test": 320, "validation": 80}},
                       "commit_url": None}
    assert sorted(p.name for p in out.rglob("*.parquet")) == [
        "test-00000-of-00001.parquet", "test-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    again = CliRunner().invoke(data_app, ["eval-sets", "--out", str(out), "--tasks", "gsm8k"])
    assert isinstance(again.exception, OutputExistsError)
    assert again.exception.hint == "Choose another --out, or pass --overwrite to replace it."


def test_build_rejects_a_key_that_is_not_a_source_of_the_domain(tmp_path: Path):
    result = CliRunner().invoke(data_app, ["build", "math", "--out", str(tmp_path / "o"), "--source", "aya=me/aya"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == ("'aya' is not a source of domain 'math'; its sources are "
                                     "['dart-math-hard', 'numinamath-tir'].")
    assert not (tmp_path / "o").exists()
