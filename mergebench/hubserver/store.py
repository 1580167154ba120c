"""Repositories of the loopback Hub: plain folders on disk, each exactly one commit deep.

``ROOT/{models,datasets,spaces}/{org}/{name}/`` is a repo whose ``main`` branch is the folder's current
content. Its commit sha is derived from that content (sha1 over the sorted ``(path, size, oid)`` of every
file), so an unchanged folder keeps its sha across restarts and any edit, by a commit or by hand, moves it.
Only ``main`` and the current sha resolve: the store keeps no history, so after a commit the previous sha
answers ``RevisionNotFound`` (the real Hub would still serve it; MergeBench pins a sha for the length of one
operation, which is enough for tests).

Hashes are cached by ``(path, device, inode, size, mtime)``: a 300 MB shard is hashed once, not per request.
A file is "LFS" when the real Hub would store it so (a binary suffix such as ``.safetensors``, or 10 MiB and
more); its ETag is its sha256 and its git ``oid`` that of its LFS pointer, as on the Hub. Others carry the
git blob sha1. Commits write every new file to a temporary name first and ``os.replace`` it into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergebench.hubserver.headers import parameter_counts

logger = logging.getLogger(__name__)

REPO_TYPES: dict[str, str] = {"model": "models", "dataset": "datasets", "space": "spaces"}
LFS_MIN_SIZE = 10 * 1024 * 1024
LFS_SUFFIXES = frozenset((
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gguf", ".gz", ".h5", ".joblib", ".lz4", ".mlmodel", ".model",
    ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar",
    ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst",
))
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in sorted(LFS_SUFFIXES))
TMP_PREFIX = ".hubtmp-"
STATE_DIR = ".hubserver"  # under ROOT: staged LFS uploads
_PART = re.compile(r"^(?![-.])(?!.*(?:--|\.\.))[\w.-]{1,96}(?<![-.])$")
_CHUNK = 1 << 20


class RequestError(Exception):
    """A request the Hub would refuse: HTTP ``status``, ``X-Error-Code`` ``code`` (if any) and a message."""

    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


def repo_not_found(repo_type: str, repo_id: str) -> RequestError:
    return RequestError(404, f"Repository not found: {repo_type} '{repo_id}'.", code="RepoNotFound")


def is_lfs(path: str, size: int) -> bool:
    """Whether the Hub stores ``path`` with LFS: a binary suffix (its default ``.gitattributes``) or ≥ 10 MiB."""
    return size >= LFS_MIN_SIZE or os.path.splitext(path)[1].lower() in LFS_SUFFIXES


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def check_repo_id(repo_id: str) -> None:
    """Raise a 400 unless ``repo_id`` is ``org/name`` with parts the Hub accepts."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_PART.match(p) for p in parts) or parts[1].endswith(".git"):
        raise RequestError(400, f"Invalid repo id '{repo_id}': use 'org/name' with letters, digits, '-', '_', '.' "
                                "(no '--' or '..', not starting or ending with '-' or '.').")


def check_repo_path(path: str) -> str:
    """Raise a 400 unless ``path`` is a clean relative path inside a repo (no ``..``, no ``.git``, no temp names)."""
    parts = path.split("/")
    if (not path or "\\" in path or "\0" in path
            or any(p in ("", ".", "..", ".git") or p.startswith(TMP_PREFIX) for p in parts)):
        raise RequestError(400, f"Invalid path in repo: '{path}'.")
    return path


def iso(ts: float) -> str:
    """A timestamp in the Hub's format, ``2024-05-01T12:00:00.000Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot. ``oid`` is the git blob id; ``sha256`` is set for LFS files only."""

    path: str
    size: int
    oid: str
    sha256: str | None
    local: Path
    mtime: float

    @property
    def etag(self) -> str:
        """What the Hub sends as (linked) ETag: the sha256 for LFS files, else the git blob sha1."""
        return self.sha256 or self.oid

    def tree_json(self) -> dict:
        """The entry as the ``tree`` and ``paths-info`` endpoints list it."""
        out: dict = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.sha256:
            out["lfs"] = {"oid": self.sha256, "size": self.size,
                          "pointerSize": len(lfs_pointer(self.sha256, self.size))}
        return out


@dataclass(frozen=True)
class Commit:
    """What the store remembers of a repo's last commit: the only one it serves."""

    sha: str
    title: str
    date: float


@dataclass(frozen=True)
class Snapshot:
    """A repo's content at one moment: ``files`` sorted by path, and the commit sha derived from them."""

    repo_type: str
    repo_id: str
    sha: str
    files: dict[str, FileEntry]
    created: float
    commit: Commit

    @property
    def last_modified(self) -> float:
        return self.commit.date

    def directories(self) -> dict[str, str]:
        """Every folder path (``a``, ``a/b``) → a tree oid derived from the files below it."""
        dirs: dict[str, Any] = {}  # folder → running sha1
        for path, entry in self.files.items():
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.setdefault("/".join(parts[:i]), hashlib.sha1()).update(f"{path}\0{entry.oid}\n".encode())
        return {d: h.hexdigest() for d, h in sorted(dirs.items())}


@dataclass
class _Plan:
    """A validated commit: ordered steps ``("delete", path, None)`` / ``("add", path, source)``, plus whether
    each added source is a temp file to move (``True``) or existing bytes to link (``False``)."""

    steps: list[tuple[str, str, Path | None, bool]] = field(default_factory=list)
    consumed: set[Path] = field(default_factory=set)  # staged LFS objects to drop once linked into place


class Store:
    """All repos under ``root``; thread-safe.

    Scans of one repo hold a per-repo lock, so that concurrent first requests hash a big file once, and commits
    hold the same lock, so that a scan never sees half a commit.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # One entry per local path, replaced when the file changes: bounded by the number of files served.
        self._hashes: dict[str, tuple[tuple, tuple[str, str | None]]] = {}
        self._st_params: dict[str, tuple[tuple, dict[str, int] | None]] = {}
        self._commits: dict[tuple[str, str], Commit] = {}
        self._locks: dict[Path, threading.RLock] = {}
        self._guard = threading.Lock()

    # ----------------------------------------------------------------------------------------- layout
    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        """``root/{type}s/{org}/{name}``; ids that are not ``org/name`` (``..``, extra slashes) do not exist."""
        if repo_type not in REPO_TYPES:
            raise RequestError(400, f"Unknown repo type '{repo_type}'; use one of {sorted(REPO_TYPES)}.")
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_PART.match(p) for p in parts):
            raise repo_not_found(repo_type, repo_id)
        return self.root / REPO_TYPES[repo_type] / repo_id

    @property
    def lfs_dir(self) -> Path:
        return self.root / STATE_DIR / "lfs"

    def _lock(self, path: Path) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(path, threading.RLock())

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return self.repo_dir(repo_type, repo_id).is_dir()

    # ---------------------------------------------------------------------------------------- reading
    def snapshot(self, repo_type: str, repo_id: str, revision: str | None = None) -> Snapshot:
        """The repo's current content; ``revision`` must be ``main`` (default) or the current sha.

        Raises:
            RequestError: ``RepoNotFound`` or ``RevisionNotFound`` (404).
        """
        folder = self.repo_dir(repo_type, repo_id)
        if not folder.is_dir():
            raise repo_not_found(repo_type, repo_id)
        with self._lock(folder):
            snap = self._scan(repo_type, repo_id, folder)
        if revision not in (None, "main", snap.sha):
            raise RequestError(404, f"Invalid rev id: '{revision}'. The loopback Hub serves 'main' and the current "
                                    f"commit {snap.sha} only.", code="RevisionNotFound")
        return snap

    def _scan(self, repo_type: str, repo_id: str, folder: Path) -> Snapshot:
        files: dict[str, FileEntry] = {}
        for path, local in sorted(_walk(folder)):
            try:
                st = local.stat()
            except FileNotFoundError:  # removed while we walked
                continue
            oid, sha256 = self._hash(local, path, st)
            files[path] = FileEntry(path, st.st_size, oid, sha256, local, st.st_mtime)
        digest = hashlib.sha1()
        for entry in files.values():
            digest.update(f"{entry.path}\0{entry.size}\0{entry.etag}\n".encode())
        sha = digest.hexdigest()
        created = folder.stat().st_mtime
        last = max((e.mtime for e in files.values()), default=created)
        commit = self._commits.get((repo_type, repo_id))
        if commit is None or commit.sha != sha:  # never committed here, or edited by hand since
            commit = Commit(sha, "Snapshot of the repository folder", last)
        return Snapshot(repo_type, repo_id, sha, files, min(created, last), commit)

    def _hash(self, local: Path, path: str, st: os.stat_result) -> tuple[str, str | None]:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._hashes.get(str(local))
        if cached is not None and cached[0] == key:
            return cached[1]
        lfs = is_lfs(path, st.st_size)
        h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % st.st_size)
        with open(local, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        result: tuple[str, str | None]
        if lfs:
            sha256 = h.hexdigest()
            result = (git_blob_sha1(lfs_pointer(sha256, st.st_size)), sha256)
        else:
            result = (h.hexdigest(), None)
        self._hashes[str(local)] = (key, result)
        return result

    def safetensors_parameters(self, entry: FileEntry) -> dict[str, int] | None:
        """``{dtype: element count}`` from one safetensors header (cached), or ``None`` if it is not one."""
        st = entry.local.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._st_params.get(str(entry.local))
        if cached is None or cached[0] != key:
            cached = (key, parameter_counts(entry.local))
            self._st_params[str(entry.local)] = cached
        return cached[1]

    # ----------------------------------------------------------------------------------- repositories
    def create_repo(self, repo_type: str, repo_id: str, *, readme: str | None = None) -> None:
        """Create an empty repo holding the Hub's default ``.gitattributes`` (409 if it exists)."""
        check_repo_id(repo_id)
        folder = self.repo_dir(repo_type, repo_id)
        with self._lock(folder):
            if folder.exists():
                raise RequestError(409, f"You already created this {repo_type} repo: '{repo_id}'.")
            tmp = folder.parent / f"{TMP_PREFIX}{folder.name}-{uuid.uuid4().hex}"
            tmp.mkdir(parents=True)
            (tmp / ".gitattributes").write_text(GITATTRIBUTES)
            if readme is not None:
                (tmp / "README.md").write_text(readme)
            os.replace(tmp, folder)
            self._commits[(repo_type, repo_id)] = Commit(self._scan(repo_type, repo_id, folder).sha,
                                                         "initial commit", time.time())
        logger.info("created %s repo %s", repo_type, repo_id)

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        folder = self.repo_dir(repo_type, repo_id)
        with self._lock(folder):
            if not folder.is_dir():
                raise repo_not_found(repo_type, repo_id)
            trash = folder.parent / f"{TMP_PREFIX}deleted-{uuid.uuid4().hex}"
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted %s repo %s", repo_type, repo_id)

    # ------------------------------------------------------------------------------------------- LFS
    def lfs_object(self, oid: str) -> Path | None:
        path = self.lfs_dir / oid
        return path if re.fullmatch(r"[0-9a-f]{64}", oid) and path.is_file() else None

    def find_lfs(self, snap: Snapshot, oid: str) -> Path | None:
        """Where the bytes of LFS object ``oid`` already are: staged, or a file of ``snap``."""
        staged = self.lfs_object(oid)
        if staged is not None:
            return staged
        return next((e.local for e in snap.files.values() if e.sha256 == oid), None)

    def stage_lfs(self, oid: str, size: int, chunks: Iterator[bytes]) -> None:
        """Store an uploaded LFS object, streaming and checking its sha256 and size on the way.

        Raises:
            RequestError: 400 if the bytes do not match ``oid``/``size`` (nothing is kept).
        """
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            raise RequestError(400, f"Invalid LFS oid '{oid}': expected 64 hex digits (sha256).")
        self.lfs_dir.mkdir(parents=True, exist_ok=True)
        part = self.lfs_dir / f"{TMP_PREFIX}{oid}-{uuid.uuid4().hex}"
        h, n = hashlib.sha256(), 0
        try:
            with open(part, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
            if n != size or h.hexdigest() != oid:
                raise RequestError(400, f"Uploaded object does not match: expected sha256 {oid} and {size} bytes, "
                                        f"got {h.hexdigest()} and {n} bytes.")
            os.replace(part, self.lfs_dir / oid)
        finally:
            part.unlink(missing_ok=True)
        logger.debug("staged LFS object %s (%d bytes)", oid, size)

    # ---------------------------------------------------------------------------------------- commits
    def temp_file(self, repo_type: str, repo_id: str) -> Path:
        """A fresh temporary path inside the repo folder (same file system, so ``os.replace`` is atomic)."""
        folder = self.repo_dir(repo_type, repo_id)
        if not folder.is_dir():
            raise repo_not_found(repo_type, repo_id)
        return folder / f"{TMP_PREFIX}{uuid.uuid4().hex}"

    def commit(self, repo_type: str, repo_id: str, revision: str, operations: list[dict], *,
               title: str, parent: str | None = None) -> Snapshot:
        """Apply ``operations`` to ``main`` in order and return the new snapshot. All are checked first.

        Each operation is ``{"op": "add", "path", "source": Path}`` (a temp file from :meth:`temp_file`, moved
        into place), ``{"op": "lfs", "path", "oid"}`` (an uploaded LFS object, or one the repo already holds)
        or ``{"op": "delete", "path", "folder": bool}``.

        Raises:
            RequestError: unknown repo/revision (404), ``parent`` is not the current sha (412), a bad path or
            a path conflict (400), deleting a missing path or committing an unknown LFS object (404).
        """
        folder = self.repo_dir(repo_type, repo_id)
        with self._lock(folder):
            snap = self.snapshot(repo_type, repo_id)
            if revision != "main":
                raise RequestError(404, f"Invalid rev id: '{revision}'. Commits go to 'main' on the loopback Hub.",
                                   code="RevisionNotFound")
            if parent is not None and parent != snap.sha:
                raise RequestError(412, f"Parent commit {parent} is not the head of 'main' ({snap.sha}): the repo "
                                        "changed since. Pull and retry.")
            plan = self._plan(snap, operations)
            # Link LFS bytes to temp names first, so that a step deleting their source cannot lose them.
            temps: list[Path] = []
            try:
                steps = []
                for kind, path, source, is_temp in plan.steps:
                    if kind == "add" and not is_temp:
                        assert source is not None
                        temps.append(folder / f"{TMP_PREFIX}{uuid.uuid4().hex}")
                        _link_or_copy(source, temps[-1])
                        source = temps[-1]
                    steps.append((kind, path, source))
                for kind, path, source in steps:
                    target = folder / path
                    if kind == "delete":
                        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
                    else:
                        assert source is not None
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(source, target)
            finally:
                for tmp in temps:
                    tmp.unlink(missing_ok=True)
            for staged in plan.consumed:
                staged.unlink(missing_ok=True)
            _prune_empty_dirs(folder)
            new = self._scan(repo_type, repo_id, folder)
            self._commits[(repo_type, repo_id)] = Commit(new.sha, title, time.time())
            logger.info("commit %s to %s repo %s: %d operation(s)", new.sha[:10], repo_type, repo_id, len(steps))
            return self._scan(repo_type, repo_id, folder)

    def _plan(self, snap: Snapshot, operations: list[dict]) -> _Plan:
        present = set(snap.files)
        plan = _Plan()
        for op in operations:
            path = check_repo_path(op["path"].strip("/") if op["op"] == "delete" else op["path"])
            if op["op"] == "delete":
                below = {p for p in present if p.startswith(path + "/")}
                if op.get("folder") and below:
                    present -= below
                elif path in present and not op.get("folder"):
                    present.discard(path)
                else:
                    kind = "folder" if op.get("folder") else "file"
                    raise RequestError(404, f"A {kind} with this name doesn't exist: '{path}'.", code="EntryNotFound")
                plan.steps.append(("delete", path, None, False))
                continue
            parents = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
            clash = [p for p in parents if p in present] + sorted(p for p in present if p.startswith(path + "/"))
            if clash:
                raise RequestError(400, f"Cannot add '{path}': it conflicts with '{clash[0]}' (a file and a folder "
                                        "cannot share a name).")
            if op["op"] == "add":
                plan.steps.append(("add", path, op["source"], True))
            else:
                source = self.find_lfs(snap, op["oid"])
                if source is None:
                    raise RequestError(404, f"LFS object {op['oid']} for '{path}' was never uploaded.",
                                       code="EntryNotFound")
                if source.parent == self.lfs_dir:
                    plan.consumed.add(source)
                plan.steps.append(("add", path, source, False))
            present.add(path)
        return plan


def _link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link (no copy: the store only ever replaces files, never edits them in place) or copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def _walk(folder: Path) -> Iterator[tuple[str, Path]]:
    """Files of a repo folder as ``(posix path, local path)``; skips ``.git`` and the store's temp files."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != ".git" and not d.startswith(TMP_PREFIX)]
        rel = Path(dirpath).relative_to(folder)
        for name in filenames:
            if not name.startswith(TMP_PREFIX):
                local = Path(dirpath) / name
                yield (rel / name).as_posix(), local


def _prune_empty_dirs(folder: Path) -> None:
    for dirpath, _, _ in sorted(os.walk(folder), key=lambda t: -len(t[0])):
        if Path(dirpath) != folder:
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
