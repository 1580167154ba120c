"""References to what MergeBench reads — Hub repos and local paths — and pinning them to one commit.

Every input the project accepts is written the same way, whatever reads it (a merge recipe, a training
recipe, a benchmark configuration, ``mergebench eval``, the Space):

- ``org/name`` or ``org/name@revision``: a repo on the Hub (a model, dataset or Space repo, by context);
- a local path (``./x``, ``../x``, ``/abs/x``, ``~/x``, or any existing path): a folder or a file, taken
  relative to ``base_dir`` (the folder of the file that names it) when given. An existing path wins over
  a repo id, as in ``transformers``.

:func:`pin` turns a reference into a :class:`Pin`: a Hub repo's commit sha (asked **once**; every later
request uses the sha, so a merge, a training run or an evaluation reads one snapshot even if the repo
moves on) or a local path's content fingerprint (:func:`mergebench.work.path_fingerprint`). A pin's
:attr:`Pin.identity` is what results, cards and resume records name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import HfApi

from mergebench.errors import RefError

logger = logging.getLogger(__name__)

RepoType = Literal["model", "dataset", "space"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_LOCAL_PREFIXES = (".", "/", "~")


def public_path(text: str) -> str:
    """How a published file (a card, the saved recipe) names a local path: as written when relative,
    else by its last component only, so a push never reveals the merging machine's directory layout."""
    path = Path(text)
    if text.startswith("~") or path.is_absolute():
        return f"./{path.name}"
    return text


def short_name(text: str) -> str:
    """A reference's last name, without owner, revision or parent folders: ``org/Llama-3.2-3B@rev`` →
    ``Llama-3.2-3B``, ``./x/SmolLM2/`` → ``SmolLM2`` (what expert names are made of: ``{base}_{domain}``)."""
    return Path(text.partition("@")[0].rstrip("/")).name


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``repo_id`` and ``local_path`` is set.

    >>> Ref.parse("org/model@v1")
    Ref(text='org/model@v1', repo_type='model', repo_id='org/model', revision='v1', local_path=None)
    """

    text: str
    repo_type: RepoType = "model"
    repo_id: str | None = None
    revision: str | None = None
    local_path: Path | None = None

    @classmethod
    def parse(cls, text: str, *, repo_type: RepoType = "model", base_dir: Path | None = None,
              local: Literal["dir", "file", "any"] = "dir") -> Ref:
        """Parse ``org/name[@revision]`` or a local path (which must exist and be a ``local`` kind of path).

        Raises:
            RefError: the text is neither an existing path nor a repo id, or the path is missing or of
                the wrong kind; the message names what was tried.
        """
        text = str(text).strip()
        kind = {"dir": "folder", "file": "file", "any": "local path"}[local]
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if path.exists() or text.startswith(_LOCAL_PREFIXES):
            if not path.exists():
                raise RefError(f"Local {kind} '{text}' does not exist ({path}).", ref=text,
                                    hint=f"Check the path, or use 'org/name' for a Hub {repo_type} repo.")
            if (local == "dir" and not path.is_dir()) or (local == "file" and not path.is_file()):
                raise RefError(f"'{text}' is not a {kind} ({path}).", ref=text,
                                    hint=f"Pass a {kind}, or 'org/name' for a Hub {repo_type} repo.")
            return cls(text=text, repo_type=repo_type, local_path=path.resolve())
        repo_id, _, revision = text.partition("@")
        if not _REPO_ID.match(repo_id):
            raise RefError(
                f"'{text}' is neither an existing {kind} nor a Hub repo id of the form 'org/name[@revision]' "
                f"(a {repo_type} repo).", ref=text,
                hint=f"Write a local {kind} as ./path (relative to the file that names it) or a Hub {repo_type} repo "
                     "as org/name, optionally @revision.")
        return cls(text=text, repo_type=repo_type, repo_id=repo_id, revision=revision or None)

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    @property
    def public_name(self) -> str:
        """The repo id, or a local path's :func:`public_path` (what cards and pushed files show)."""
        return self.repo_id or public_path(self.text)


@dataclass(frozen=True)
class Pin:
    """A reference and what it resolved to: a commit sha (Hub) or a content fingerprint (local)."""

    ref: Ref
    sha: str | None
    """The commit sha of a Hub repo; ``None`` for a local path."""
    fingerprint: str | None = None
    """A local path's :func:`~mergebench.work.path_fingerprint`; ``None`` for a Hub repo."""

    @property
    def identity(self) -> str:
        """``org/name@sha`` or ``local:<fingerprint>``: names exactly the bytes that were read."""
        if self.ref.repo_id:
            return f"{self.ref.repo_id}@{self.sha}"
        return self.fingerprint or f"local:{self.ref.local_path}"

    @property
    def revision(self) -> str:
        """What results and cards put in a ``revision`` field: the sha, or ``local:<fingerprint>``."""
        return self.sha or self.identity

    @property
    def loadable(self) -> str:
        """How a pinned reference is handed on (to a unit spec, another process, a later load): ``org/name@sha``,
        which pins to the same commit again wherever it is read, or a local path as an absolute path."""
        return str(self.ref.local_path) if self.ref.local_path is not None else self.identity


def pin(ref: Ref | str, *, repo_type: RepoType = "model", base_dir: Path | None = None,
        api: HfApi | None = None) -> Pin:
    """Resolve ``ref`` once: a Hub repo to the commit sha of its revision, a local path to its fingerprint.

    Raises:
        RefError: an unparseable reference. huggingface_hub's ``RepositoryNotFoundError`` /
            ``RevisionNotFoundError`` pass through unwrapped.
    """
    from mergebench.hub.retry import with_retries
    from mergebench.work import path_fingerprint

    if isinstance(ref, str):
        ref = Ref.parse(ref, repo_type=repo_type, base_dir=base_dir, local="any")
    if ref.local_path is not None:
        return Pin(ref, None, path_fingerprint(ref.local_path))
    api = api or HfApi()
    repo_id, repo_type, revision = ref.repo_id, ref.repo_type, ref.revision
    assert repo_id is not None
    info = with_retries(lambda: api.repo_info(repo_id, repo_type=repo_type, revision=revision))
    logger.info("Pinned %s %s to commit %s", ref.repo_type, ref.text, info.sha)
    return Pin(ref, info.sha)


__all__ = ["Pin", "Ref", "RepoType", "pin", "public_path", "short_name"]
