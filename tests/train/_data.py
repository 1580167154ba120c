"""Dataset folders shaped like ``mergebench data build`` output, from the deterministic fixture rows, and the
training inputs (a base and domain datasets) pushed to the loopback Hub."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from mergebench.data.publish import write_parquet
from mergebench.data.schema import features
from mergebench.fixtures import validation_rows


def write_domain_folder(folder: Path, domain: str, *, train_rows: int = 48, validation: int = 8,
                        rows: list[dict] | None = None) -> Path:
    """``folder/data/{train,validation}-*.parquet`` + a card whose ``configs`` name both splits."""
    rows = rows if rows is not None else validation_rows(domain, train_rows + validation)
    write_parquet(rows[:len(rows) - validation], folder / "data", "train", features=features())
    write_parquet(rows[len(rows) - validation:], folder / "data", "validation", features=features())
    card = DatasetCard.from_template(DatasetCardData(license="apache-2.0", configs=[{
        "config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"},
                                                 {"split": "validation", "path": "data/validation-*"}]}]))
    (folder / "README.md").write_text(str(card), encoding="utf-8")
    return folder


TINY_BASE = "mergebench-fixtures/tiny-llama"
"""The repo :func:`push_training_inputs` pushes the tiny Llama base to."""


def push_training_inputs(base_folder: Path, domains: Iterable[str], tmp_path: Path) -> dict[str, str]:
    """Push the base (with an Apache-2.0 card) to :data:`TINY_BASE` and each domain's 16-row training set to
    ``mergebench/mergebench-<domain>`` on the Hub ``HF_ENDPOINT`` names; returns the dataset repo of each domain."""
    api = HfApi()
    base = tmp_path / "base"
    shutil.copytree(base_folder, base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny llama\n")
    api.create_repo(TINY_BASE)
    api.upload_folder(repo_id=TINY_BASE, folder_path=base)
    repos = {}
    for domain in domains:
        repos[domain] = f"mergebench/mergebench-{domain}"
        api.create_repo(repos[domain], repo_type="dataset")
        api.upload_folder(repo_id=repos[domain], repo_type="dataset",
                          folder_path=write_domain_folder(tmp_path / "data" / domain, domain, train_rows=16))
    return repos
