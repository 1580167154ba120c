"""Reading evaluation sets from their upstream Hub datasets: pin, check access, load, check, convert.

Every step runs for *all* requested tasks before the next starts, so a problem anywhere (an unpinned repo, a
gated repo without access, a missing column, a row count that differs from the pin) fails the build before
a byte is written:

1. **pin** each repo to a commit: the pin table's sha, a pins file's (``--pins``: the ``mergebench_eval.json``
   of an earlier build), or with ``unpinned`` the current head of the repo's default branch
   (:func:`mergebench.hub.refs.pin`);
2. **check access** (``auth-check``): a gated repo whose terms the token's user has not accepted, or no token,
   is an error naming the repo and the page where its terms are accepted;
3. **load** each (config, split) with ``datasets.load_dataset`` at that commit and check its columns against the
   upstream schema and its row count against the pin;
4. **convert** the rows into the task schema (:mod:`.convert`).

The row count of a part is checked when the commit read is the one the count was recorded for: always for a
pinned build, and for an unpinned build only when the head happens to be the pinned commit (a newer commit
may legitimately hold other rows; the card then records both numbers).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from tqdm.auto import tqdm

from mergebench.data.upstream.convert import Converted, PartRows
from mergebench.data.upstream.table import REPOS, TASK_SOURCES, Part, TaskSource
from mergebench.errors import ConfigError, DataError
from mergebench.hub.refs import Ref, pin
from mergebench.hub.retry import with_retries

logger = logging.getLogger(__name__)

PIN_TABLE = "pin table (mergebench.data.upstream.table)"
UNPINNED = "main (unpinned)"
_PIN_HINT = ("Run with --unpinned to read each repo's current main commit (recorded per task in the card and in "
             "mergebench_eval.json), then rebuild exactly that data with --pins OUT/mergebench_eval.json.")


@dataclass(frozen=True)
class Pins:
    """Commits and row counts read from the ``mergebench_eval.json`` of an earlier build (``--pins``)."""

    origin: str
    shas: dict[str, str]
    rows: dict[tuple[str, str | None, str], int]

    @classmethod
    def read(cls, path: Path) -> Pins:
        """Read the ``upstream`` parts of every config of a manifest written by a ``--from-hub`` build.

        Raises:
            ConfigError: the file is missing, is not JSON, holds no upstream parts, or pins one repo to two commits.
        """
        try:
            manifest = json.loads(Path(path).read_text(encoding="utf-8"))
            parts = [p for config in manifest for p in config.get("upstream_parts") or []]
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise ConfigError(f"Cannot read pins from '{path}': {e}",
                              hint="Pass the mergebench_eval.json written by `mergebench data eval-sets --from-hub`."
                              ) from e
        if not parts:
            raise ConfigError(f"'{path}' records no upstream commits (it was not written by a --from-hub build).",
                              hint="Pass the mergebench_eval.json of a `mergebench data eval-sets --from-hub` build.")
        shas: dict[str, str] = {}
        for p in parts:
            if shas.setdefault(p["repo_id"], p["sha"]) != p["sha"]:
                raise ConfigError(f"'{path}' pins {p['repo_id']} to two commits ({shas[p['repo_id']]}, {p['sha']}).",
                                  hint="Use the manifest of one build.")
        return cls(str(path), shas, {(p["repo_id"], p["config"], p["split"]): int(p["rows"]) for p in parts})


@dataclass(frozen=True)
class HubBuild:
    """How a ``--from-hub`` build reads the upstream datasets.

    Args:
        unpinned: read the current head of each repo's default branch instead of the pinned commit.
        pins: a ``mergebench_eval.json`` whose recorded commits and row counts replace the pin table's.
        cache_dir: the ``datasets`` cache (default: ``HF_DATASETS_CACHE``).
    """

    unpinned: bool = False
    pins: Path | None = None
    cache_dir: Path | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.unpinned and self.pins is not None:
            raise ConfigError("--unpinned reads each repo's current commit; --pins reads recorded ones: choose one.",
                              hint="Drop --pins to refresh the data, or --unpinned to rebuild the recorded data.")


@dataclass(frozen=True)
class ResolvedRepo:
    """The commit a build reads from one repo, and what chose it."""

    repo_id: str
    sha: str
    chosen_by: str  # PIN_TABLE, "pins file <path>" or UNPINNED
    expected_rows: dict[tuple[str, str | None, str], int]  # row counts recorded for exactly this commit


@dataclass(frozen=True)
class UpstreamTask:
    """One evaluation set read from the Hub: its converted rows and, per part, where they came from."""

    source: TaskSource
    parts: tuple[PartRows, ...]
    converted: Converted
    provenance: tuple[dict[str, Any], ...]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.converted.rows


def task_sources(names: Iterable[str] | None) -> list[TaskSource]:
    """The sources of ``names`` (all by default), in the order given; an unknown name is an error."""
    chosen = list(dict.fromkeys(names)) if names is not None else list(TASK_SOURCES)
    unknown = [n for n in chosen if n not in TASK_SOURCES]
    if unknown:
        raise ConfigError(f"Unknown evaluation set(s) {unknown}.", hint=f"Choose from {', '.join(TASK_SOURCES)}.")
    return [TASK_SOURCES[n] for n in chosen]


def _users_of(repo_id: str, tasks: Sequence[TaskSource]) -> str:
    return ", ".join(f"'{t.name}'" for t in tasks if repo_id in t.repos)


def _access_error(repo_id: str, tasks: Sequence[TaskSource], e: Exception) -> DataError:
    """The error for a repo the token cannot read: gated (terms not accepted), private, or missing."""
    page = f"{constants.ENDPOINT}/datasets/{repo_id}"
    who = "no Hugging Face token is set" if get_token() is None else "the token's user has no access to it"
    status = getattr(getattr(e, "response", None), "status_code", None)
    kind = "gated" if REPOS[repo_id].gated or isinstance(e, GatedRepoError) else "private, gated or missing"
    return DataError(
        f"Dataset {repo_id} (needed by {_users_of(repo_id, tasks)}) cannot be read: it is {kind} and {who}"
        f"{f' (HTTP {status})' if status else ''}.", source=repo_id,
        hint=f"Open {page} while logged in, accept the dataset's terms, then log in here with `hf auth login` (or "
             f"set HF_TOKEN) using a token of that account; or leave its task(s) out with --tasks.")


def _resolve(repo_id: str, tasks: Sequence[TaskSource], *, unpinned: bool, pins: Pins | None,
             api: HfApi) -> ResolvedRepo | None:
    """The commit to read from ``repo_id``; ``None`` when a pinned build has none for it."""
    table = REPOS[repo_id]
    table_rows = {p.key: p.rows for t in tasks for p in t.parts if p.repo_id == repo_id and p.rows is not None}
    if pins is not None and repo_id in pins.shas:
        rows = {k: n for k, n in pins.rows.items() if k[0] == repo_id}
        return ResolvedRepo(repo_id, pins.shas[repo_id], f"pins file {pins.origin}", rows)
    if not unpinned:
        return ResolvedRepo(repo_id, table.sha, PIN_TABLE, table_rows) if table.sha else None
    try:
        sha = pin(Ref.parse(repo_id, repo_type="dataset"), api=api).sha
    except (GatedRepoError, RepositoryNotFoundError) as e:
        raise _access_error(repo_id, tasks, e) from e
    assert sha is not None  # a Hub repo always pins to a commit
    return ResolvedRepo(repo_id, sha, UNPINNED, table_rows if sha == table.sha else {})


def resolve_repos(tasks: Sequence[TaskSource], *, unpinned: bool = False, pins: Pins | None = None,
                  api: HfApi | None = None) -> dict[str, ResolvedRepo]:
    """Pin every repo the tasks read, then check that the token may read each one.

    Raises:
        DataError: a pinned build lacks the commit of some repo (all such tasks are named), or a repo is gated,
            private or missing for this token.
    """
    api = api or HfApi()
    repos = list(dict.fromkeys(r for t in tasks for r in t.repos))
    resolved = {r: _resolve(r, tasks, unpinned=unpinned, pins=pins, api=api) for r in repos}
    missing = [r for r, v in resolved.items() if v is None]
    if missing:
        names = [t.name for t in tasks if set(t.repos) & set(missing)]
        raise DataError(f"No pinned commit for {', '.join(missing)}, needed by evaluation set(s) {', '.join(names)}: "
                        f"the pin table records no commit sha for them.", source=",".join(missing), hint=_PIN_HINT)
    for repo_id in repos:
        try:
            with_retries(functools.partial(api.auth_check, repo_id, repo_type="dataset"))
        except (GatedRepoError, RepositoryNotFoundError) as e:
            raise _access_error(repo_id, tasks, e) from e
        except HfHubHTTPError as e:
            if getattr(e.response, "status_code", None) in (401, 403):
                raise _access_error(repo_id, tasks, e) from e
            raise
    return {r: v for r, v in resolved.items() if v is not None}


def _load_dataset(part: Part, sha: str, cache_dir: Path | None) -> Any:
    """``datasets.load_dataset`` of one part at commit ``sha`` (a pinned data file, for script-only repos)."""
    import datasets

    cache = str(cache_dir) if cache_dir else None
    if part.data_files is not None:
        url = f"hf://datasets/{part.repo_id}@{sha}/{part.data_files}"
        return datasets.load_dataset(part.builder or "json", data_files={part.split: url}, split=part.split,
                                     cache_dir=cache)
    return datasets.load_dataset(part.repo_id, part.config, split=part.split, revision=sha, cache_dir=cache,
                                 **dict(part.load_kwargs))


def load_part(part: Part, repo: ResolvedRepo, *, task: str, cache_dir: Path | None = None) -> PartRows:
    """Load one part at its pinned commit and check its columns and row count.

    Raises:
        DataError: the part cannot be loaded, lacks a column of its upstream schema (naming the repo, config and
            column), or holds another number of rows than recorded for that commit.
    """
    label = PartRows(part.repo_id, part.config, part.split, []).label
    try:
        ds = _load_dataset(part, repo.sha, cache_dir)
    except Exception as e:
        raise DataError(f"Cannot load upstream {label} at commit {repo.sha} for '{task}': {type(e).__name__}: {e}",
                        source=part.repo_id,
                        hint="Check that the commit, config and split exist; a pinned commit that is gone from the "
                             "repo needs a new pin (rebuild with --unpinned).") from e
    missing = [c for c in part.schema.columns if c not in ds.column_names]
    if missing:
        raise DataError(f"Upstream {label} at commit {repo.sha} lacks column(s) {missing} of the {part.schema.name} "
                        f"schema that '{task}' reads; it has {list(ds.column_names)}.", source=part.repo_id,
                        hint="Pin a commit with the expected schema (--pins), or update the converter.")
    expected = repo.expected_rows.get(part.key)
    if expected is not None and len(ds) != expected:
        raise DataError(f"Row count mismatch in upstream {label} at commit {repo.sha}: expected {expected} (recorded "
                        f"by the {repo.chosen_by}), found {len(ds)}.", source=part.repo_id,
                        hint="The commit does not hold the data that was pinned: check the pin, or rebuild with "
                             "--unpinned to record the current data.")
    if part.rows is not None and len(ds) != part.rows:
        logger.warning("%s at %s holds %d rows; the published count is %d (recorded in the card)", label, repo.sha,
                       len(ds), part.rows)
    return PartRows(part.repo_id, part.config, part.split, ds.to_list())


def _provenance(part: Part, loaded: PartRows, repo: ResolvedRepo) -> dict[str, Any]:
    return {"repo_id": part.repo_id, "config": part.config, "split": part.split, "sha": repo.sha,
            "chosen_by": repo.chosen_by, "license": REPOS[part.repo_id].license, "gated": REPOS[part.repo_id].gated,
            "rows": len(loaded.rows), "published_rows": part.rows, "data_files": part.data_files}


def load_tasks(names: Iterable[str] | None = None, options: HubBuild = HubBuild(), *,
               api: HfApi | None = None) -> dict[str, UpstreamTask]:
    """Pin, check, load and convert the evaluation sets ``names`` (all by default) from their upstream repos.

    Raises:
        ConfigError: an unknown evaluation set, or an unreadable pins file.
        DataError: see :func:`resolve_repos` and :func:`load_part`.
    """
    tasks = task_sources(names)
    pins = Pins.read(options.pins) if options.pins is not None else None
    repos = resolve_repos(tasks, unpinned=options.unpinned, pins=pins, api=api)
    loaded: dict[str, tuple[PartRows, ...]] = {}
    todo = [(t, p) for t in tasks for p in t.parts]
    for task, part in tqdm(todo, desc="upstream parts", unit="part", disable=not options.progress):
        got = load_part(part, repos[part.repo_id], task=task.name, cache_dir=options.cache_dir)
        loaded[task.name] = (*loaded.get(task.name, ()), got)
    out = {}
    for task in tasks:
        parts = loaded[task.name]
        provenance = tuple(_provenance(p, rows, repos[p.repo_id]) for p, rows in zip(task.parts, parts, strict=True))
        out[task.name] = UpstreamTask(task, parts, task.convert(parts), provenance)
        logger.info("%s: %d rows from %s", task.name, len(out[task.name].rows),
                    ", ".join(f"{p['repo_id']}@{p['sha'][:12]}" for p in provenance))
    return out
