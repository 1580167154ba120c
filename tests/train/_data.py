"""Dataset folders shaped like ``mergebench data build`` output, from the deterministic fixture rows."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

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
