"""The one way MergeBench writes to the Hub: create the repo if needed, then one commit.

Folders (a merged model, an expert, a domain dataset, the evaluation repo) are pushed whole with
:func:`push_folder`, only once complete: every producer writes atomically (:mod:`mergebench.work`), so
a failed run uploads nothing. Files already on the Hub with the same content are skipped by the client's
pre-upload check, so pushing again after an interrupted upload only sends what is missing; stale files
(old parquet shards of a rebuilt dataset) go in the same commit through ``delete_patterns``. Small
generated files (a results parquet and its card, a Space job's request) go with :func:`push_files`. Every call
is retried on transient answers (5xx, 429 after its Retry-After, dropped connections) by
:func:`mergebench.hub.retry.with_retries`, as reads are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, SpaceHardware

from mergebench.hub.refs import RepoType
from mergebench.hub.retry import with_retries

logger = logging.getLogger(__name__)


def _api(api: HfApi | None, token: str | None) -> HfApi:
    return api or HfApi(token=token)


def push_folder(folder: Path, repo_id: str, *, repo_type: RepoType = "model", private: bool = False,
                token: str | None = None, commit_message: str | None = None,
                delete_patterns: Sequence[str] = (), space_sdk: str | None = None,
                space_hardware: SpaceHardware | None = None, api: HfApi | None = None) -> str:
    """Create ``repo_id`` (if missing) and upload ``folder`` in one commit; returns the commit URL.

    Args:
        delete_patterns: files of the repo to delete in the same commit unless ``folder`` has them.
        space_sdk, space_hardware: a Space's SDK (the Hub requires one to create a Space) and the hardware
            it is created on (an existing Space keeps its own).
    """
    api = _api(api, token)
    with_retries(lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                                         space_sdk=space_sdk, space_hardware=space_hardware))
    info = with_retries(lambda: api.upload_folder(
        repo_id=repo_id, repo_type=repo_type, folder_path=folder,
        commit_message=commit_message or f"Upload {Path(folder).name} with MergeBench",
        delete_patterns=list(delete_patterns) or None))
    logger.info("Pushed %s to %s", folder, info.commit_url)
    return info.commit_url


def push_files(repo_id: str, files: Mapping[str, bytes], *, repo_type: RepoType = "dataset",
               private: bool = False, token: str | None = None, commit_message: str,
               parent_commit: str | None = None, api: Any = None) -> str:
    """Create ``repo_id`` (if missing) and add or replace ``files`` (path in repo → bytes) in one commit.

    Args:
        parent_commit: the head the files were computed from; the Hub refuses the commit (HTTP 412) if the repo
            moved since, so a read-modify-write never loses a concurrent commit. The caller read that head, so
            the repo exists and is not created again.
    """
    api = _api(api, token)
    if parent_commit is None:
        with_retries(lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True))
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files.items()]
    info = with_retries(lambda: api.create_commit(repo_id, operations, repo_type=repo_type,
                                                  commit_message=commit_message, parent_commit=parent_commit))
    url: str = info.commit_url
    logger.info("Pushed %d file(s) to %s", len(operations), url)
    return url
