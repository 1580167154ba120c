"""The one resume decision (:mod:`mergebench.work`): a stage is skipped only when its record carries the
fingerprint of exactly what it would be built from now."""

from __future__ import annotations

import json
from pathlib import Path

from mergebench.work import Stage, fingerprint_of, is_current, read_record, sidecar_record, write_record


def test_a_stage_is_current_only_for_the_inputs_and_version_it_was_built_from(tmp_path: Path) -> None:
    record = tmp_path / "out" / "stage.json"
    stage = Stage("expert", {"recipe": {"lr": 1e-4}, "base": "rev:abc"})
    assert not is_current(record, stage.fingerprint)  # nothing written yet
    written = write_record(record, stage, outputs={"seconds": 1.5})
    assert written == stage.fingerprint == fingerprint_of({"stage": "expert", "version": 1,
                                                           "recipe": {"lr": 1e-4}, "base": "rev:abc"})
    assert is_current(record, stage.fingerprint)
    assert read_record(record) == {"stage": "expert", "fingerprint": written, "outputs": {"seconds": 1.5},
                                   "inputs": {"recipe": {"lr": 1e-4}, "base": "rev:abc"}}
    assert not is_current(record, Stage("expert", {"recipe": {"lr": 2e-4}, "base": "rev:abc"}).fingerprint)
    assert not is_current(record, Stage("expert", dict(stage.inputs), version=2).fingerprint)
    assert not is_current(record, Stage("data", dict(stage.inputs)).fingerprint)


def test_unreadable_or_foreign_records_mean_build_again(tmp_path: Path) -> None:
    fingerprint = Stage("data", {"rows": 3}).fingerprint
    record = tmp_path / "stage.json"
    for text in ("{not json", "[1, 2]", json.dumps({"fingerprint": 7}), "\xff"):
        record.write_text(text, encoding="utf-8")
        assert read_record(record) is None or not is_current(record, fingerprint)
    record.write_bytes(b"\xff\xfe")
    assert read_record(record) is None
    assert not is_current(tmp_path / "folder-not-a-file", fingerprint)


def test_sidecar_records_are_hidden_beside_their_output(tmp_path: Path) -> None:
    assert sidecar_record(tmp_path / "results" / "base.json") == tmp_path / "results" / ".base.json.stage.json"
