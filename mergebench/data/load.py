"""Loading a source from the Hub: pin its revision to a commit, load it with ``datasets``, check it.

The revision (a branch, tag or sha; ``main`` by default) is resolved to a commit sha first, and
``datasets.load_dataset`` is then called with that sha, so the data read is exactly the commit recorded
in the card even if the repo moves on meanwhile. This is the real client code path: with ``HF_ENDPOINT``
pointing at the loopback Hub, tests exercise the same requests a real build makes.

Errors name the source: a revision that does not exist, a repo without data, an empty split, missing
columns. When ``datasets`` fails on text that is not UTF-8 (it reports only a byte offset in an
anonymous chunk), the raw data files of that commit are scanned to name the file and row at fault.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from mergebench.data.schema import check_columns
from mergebench.data.sources import SourceSpec
from mergebench.errors import DataError
from mergebench.hub.refs import Ref, pin
from mergebench.hub.retry import with_retries

logger = logging.getLogger(__name__)
_TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class LoadedSource:
    """A source pinned to ``sha`` with the row indices to use: all (a ``range``, which holds no list of a
    million ints and lets ``datasets`` slice contiguously), or a sorted seeded sample of ``max_rows``."""

    spec: SourceSpec
    requested_revision: str
    sha: str
    dataset: Any  # datasets.Dataset
    indices: Sequence[int]

    @property
    def rows_loaded(self) -> int:
        return len(self.dataset)


def resolve_revision(spec: SourceSpec, revision: str | None, *, api: HfApi | None = None) -> str:
    """The commit sha of ``revision`` (default ``main``) of the source's dataset repo."""
    rev = revision or "main"
    try:
        return str(pin(Ref(f"{spec.repo_id}@{rev}", "dataset", spec.repo_id, rev), api=api).sha)
    except RevisionNotFoundError as e:
        raise DataError(f"Source {spec.label()}: revision '{rev}' does not exist in dataset repo "
                        f"'{spec.repo_id}'.", source=spec.key,
                        hint=f"List its tags with `hf repos tag list {spec.repo_id} --repo-type dataset`, pass a "
                             f"commit sha, or omit --source-revision to use main.") from e
    except RepositoryNotFoundError as e:
        raise DataError(f"Source {spec.label()}: dataset repo '{spec.repo_id}' does not exist (or is gated "
                        f"and you are not logged in).", source=spec.key,
                        hint="Check the repo id, accept the dataset's terms on the Hub, and run `hf auth login`.",
                        ) from e


def load_source(spec: SourceSpec, *, revision: str | None = None, cache_dir: str | Path | None = None,
                seed: int = 42, api: HfApi | None = None) -> LoadedSource:
    """Resolve, load and check one source (columns, non-empty); sample ``max_rows`` rows if capped.

    Raises:
        DataError: the revision or repo does not exist, the source has no rows or lacks a required
            column, or its text is not UTF-8 (naming the file and row).
    """
    import datasets
    from datasets.exceptions import DataFilesNotFoundError

    sha = resolve_revision(spec, revision, api=api)
    logger.info("loading %s", spec.label(sha))
    try:
        ds = with_retries(lambda: datasets.load_dataset(spec.repo_id, spec.config, split=spec.split, revision=sha,
                                                        cache_dir=str(cache_dir) if cache_dir else None,
                                                        **dict(spec.load_kwargs)))
    except (DataFilesNotFoundError, datasets.data_files.EmptyDatasetError) as e:
        raise DataError(f"Source {spec.label(sha)} has no data files: {e}", source=spec.key,
                        hint="Check the repo's files and its README `configs:`.") from e
    except Exception as e:
        try:
            diagnosis = _diagnose(spec, sha, e, api=api)
        except Exception:  # the diagnosis must never hide the original error (e.g. the Hub is down)
            logger.debug("could not diagnose the load failure of %s", spec.key, exc_info=True)
            diagnosis = None
        if diagnosis is None:
            raise
        raise diagnosis from e
    if len(ds) == 0:
        raise DataError(f"Source {spec.label(sha)} is empty: split '{spec.split}' has 0 rows.", source=spec.key,
                        hint="Pick a revision with data (--source-revision) or another source (--source).")
    check_columns(spec, ds.features, revision=sha)
    indices: Sequence[int] = range(len(ds))
    if spec.max_rows is not None and len(ds) > spec.max_rows:
        rng = np.random.default_rng(seed)
        indices = sorted(rng.choice(len(ds), size=spec.max_rows, replace=False).tolist())
        logger.info("%s: sampled %d of %d rows (seed %d)", spec.key, spec.max_rows, len(ds), seed)
    return LoadedSource(spec, revision or "main", sha, ds, indices)


def _is_decode_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or its cause chain) is a text-decoding failure inside ``datasets``/pyarrow."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        msg = str(exc).lower()
        if isinstance(exc, UnicodeError) or "utf-8" in msg or "utf8" in msg or "surrogate" in msg \
                or "invalid encoding" in msg:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _data_files(spec: SourceSpec, sha: str, api: HfApi | None, suffixes: tuple[str, ...]) -> list[tuple[str, Path]]:
    """``(name in repo, local path)`` of the repo's data files with these suffixes, downloaded at ``sha``."""
    api = api or HfApi()
    names = [f for f in api.list_repo_files(spec.repo_id, repo_type="dataset", revision=sha)
             if f.endswith(suffixes) and not f.startswith(".") and f != "README.md"]
    return [(n, Path(hf_hub_download(spec.repo_id, n, repo_type="dataset", revision=sha))) for n in names]


def _diagnose(spec: SourceSpec, sha: str, exc: BaseException, *, api: HfApi | None) -> DataError | None:
    """Explain a ``load_dataset`` failure in terms of the source, when it is bad text or no rows at all."""
    if _is_decode_error(exc):
        return _locate_bad_text(spec, sha, api=api)
    files = _data_files(spec, sha, api, (*_TEXT_SUFFIXES, ".parquet"))
    if files and sum(count_rows(path) for _, path in files) == 0:
        return DataError(f"Source {spec.label(sha)} is empty: its {len(files)} data file(s) hold 0 rows.",
                         source=spec.key, hint="Pick a revision with data (--source-revision) or another source.")
    return None


def count_rows(path: Path) -> int:
    """Rows in one data file: parquet metadata, or non-blank lines (minus a CSV/TSV header)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return max(0, lines - 1) if path.suffix in (".csv", ".tsv") else lines


def _locate_bad_text(spec: SourceSpec, sha: str, *, api: HfApi | None) -> DataError:
    """Scan the text data files of commit ``sha`` for the first row that is not valid UTF-8."""
    files = _data_files(spec, sha, api, _TEXT_SUFFIXES)
    for filename, path in files:
        found = find_bad_utf8(path)
        if found is not None:
            row, detail = found
            return DataError(f"Source {spec.label(sha)}: row {row} of '{filename}' is not valid UTF-8 text "
                             f"({detail}).", source=spec.key, row=row,
                             hint="Re-encode the file as UTF-8 and upload it as a new revision.")
    return DataError(f"Source {spec.label(sha)} holds text that is not valid UTF-8, in a file that could not "
                     f"be scanned ({len(files)} text files checked).", source=spec.key)


def find_bad_utf8(path: Path) -> tuple[int, str] | None:
    """``(row, detail)`` of the first line of a JSON Lines/CSV/TSV file that is not valid UTF-8 text.

    Rows are 0-based data rows: the header line of CSV/TSV files is not counted. JSON lines are also
    decoded, because a JSON ``"\\udcff"`` escape yields an unpaired surrogate, which is not text either.
    """
    header = 1 if path.suffix in (".csv", ".tsv") else 0
    is_json = path.suffix in (".jsonl", ".json")
    with path.open("rb") as fh:
        row = -header
        for line in fh:
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
                if is_json:
                    json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
            except UnicodeDecodeError as e:
                return row, f"byte {e.start} of the line: {line[max(0, e.start - 12):e.end + 12]!r}"
            except UnicodeEncodeError as e:
                return row, f"unpaired surrogate: {e.object[max(0, e.start - 12):e.end + 12]!r}"
            except json.JSONDecodeError:
                pass  # not one JSON value per line (e.g. a JSON array file): UTF-8 is all we check
            row += 1
    return None
