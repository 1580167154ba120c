"""Push a finished merge to the Hub: create the repo if needed and upload the folder in one commit.

Only a complete output folder is ever pushed (the engine renames its temporary folder into place only
after the last shard, the index, the recipe and the card are written), so a failed merge uploads
nothing. Files the Hub already has with the same content are skipped by the client's pre-upload check,
so pushing again after an interrupted upload only sends what is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import HfApi

logger = logging.getLogger(__name__)


def push_folder(folder: Path, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None, repo_type: str = "model") -> str:
    """Create ``repo_id`` (if missing) and upload ``folder`` in one commit; returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, repo_type=repo_type, folder_path=folder,
        commit_message=commit_message or f"Upload {folder.name} with MergeBench",
    )
    logger.info("Pushed %s to %s", folder, info.commit_url)
    return info.commit_url
