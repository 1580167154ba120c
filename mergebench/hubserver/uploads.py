"""Write endpoints of the loopback Hub: repo creation/deletion, pre-upload, LFS batch and upload, commit.

``preupload`` answers ``lfs`` for files the Hub would store in LFS (binary suffixes, ≥ 10 MiB) and ``regular``
otherwise. With Xet disabled, the ``huggingface_hub`` 2.4 client then asks the LFS batch endpoint, which hands
out a single-part ``PUT`` URL on this server (``/api/lfs-upload/{oid}``); the object is streamed to disk with
its sha256 checked. The commit (NDJSON lines ``header``, ``file`` with base64 content for regular files,
``lfsFile``, ``deletedFile``, ``deletedFolder``) is read line by line and links the object into the repo, so
large files never pass through memory; a benchmark dataset's ``eval.yaml`` is validated first, as the Hub
does at push time (:mod:`.evals`). Pull requests (``create_pr``) and branches other than ``main`` are
refused.
"""

from __future__ import annotations

import base64
import binascii
import json

from mergebench.hubserver.evals import EVAL_YAML, eval_yaml_errors
from mergebench.hubserver.store import REPO_TYPES, RequestError, Store, check_repo_path, is_lfs
from mergebench.hubserver.wire import Request, Response, json_response

USER = "alice"  # the account every token belongs to (see whoami-v2)
MAX_NDJSON_LINE = 256 << 20


def rev(args: list[str]) -> str:
    """The revision segment of ``/api/{type}s/{org}/{name}/{action}/{rev}`` (default ``main``)."""
    return args[0] if args else "main"


def repo_url(req: Request, repo_type: str, repo_id: str) -> str:
    prefix = "" if repo_type == "model" else REPO_TYPES[repo_type] + "/"
    return f"{req.base_url}/{prefix}{repo_id}"


def _repo_payload(req: Request) -> tuple[str, str, dict]:
    data = req.json_object()
    name, org = data.get("name"), data.get("organization") or USER
    repo_type = data.get("type") or "model"
    if not isinstance(name, str) or not isinstance(org, str):
        raise RequestError(400, '"name" is required and must be a string.')
    if repo_type not in REPO_TYPES:
        raise RequestError(400, f'"type" must be one of {sorted(REPO_TYPES)}, got "{repo_type}".')
    return repo_type, f"{org}/{name}", data


def create_repo(req: Request, store: Store) -> Response:
    """``POST /api/repos/create``: 409 with the repo URL if it exists (the client's ``exist_ok`` relies on it)."""
    repo_type, repo_id, data = _repo_payload(req)
    readme = None
    if repo_type == "space":
        readme = f"---\ntitle: {repo_id.split('/')[1]}\nsdk: {data.get('sdk') or 'static'}\n---\n"
    try:
        store.create_repo(repo_type, repo_id, readme=readme)
    except RequestError as e:
        if e.status == 409:
            return json_response({"error": e.message, "url": repo_url(req, repo_type, repo_id)}, 409)
        raise
    return json_response({"url": repo_url(req, repo_type, repo_id), "name": repo_id, "id": repo_id})


def delete_repo(req: Request, store: Store) -> Response:
    """``DELETE /api/repos/delete``: removes the folder (404 ``RepoNotFound`` if there is none)."""
    repo_type, repo_id, _ = _repo_payload(req)
    store.delete_repo(repo_type, repo_id)
    return json_response({})


def preupload(req: Request, store: Store, repo_type: str, repo_id: str, args: list[str]) -> Response:
    """Upload mode per file, and the current ``oid`` of existing ones so the client can skip unchanged files.

    ``shouldIgnore`` is always false: ``.gitignore`` rules are not applied.
    """
    snap = store.snapshot(repo_type, repo_id, rev(args))
    files = req.json_object().get("files")
    if not isinstance(files, list):
        raise RequestError(400, '"files" is required and must be a list.')
    out = []
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not isinstance(item.get("size"), int):
            raise RequestError(400, 'Each of "files" needs "path" (string) and "size" (integer).')
        path = check_repo_path(item["path"])
        answer = {"path": path, "uploadMode": "lfs" if is_lfs(path, item["size"]) else "regular",
                  "shouldIgnore": False}
        if path in snap.files:
            answer["oid"] = snap.files[path].etag  # same form as the client's local oid for that mode
        out.append(answer)
    return json_response({"files": out, "commitOid": snap.sha})


def lfs_batch(req: Request, store: Store, repo_type: str, repo_id: str) -> Response:
    """Git LFS batch API (``basic`` transfer): an upload URL per object this server does not hold yet."""
    snap = store.snapshot(repo_type, repo_id)
    data = req.json_object()
    if data.get("operation") != "upload":
        raise RequestError(400, "The loopback Hub's LFS batch API supports 'upload' only (download via /resolve).")
    objects, requested = [], data.get("objects")
    for obj in requested if isinstance(requested, list) else []:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        if not isinstance(oid, str) or not isinstance(size, int):
            raise RequestError(400, 'Each LFS object needs "oid" (string) and "size" (integer).')
        known = store.find_lfs(snap, oid)
        if known is not None and known.stat().st_size == size:
            objects.append({"oid": oid, "size": size})  # no actions: the client skips the upload
        else:
            href = f"{req.base_url}/api/lfs-upload/{oid}?size={size}"
            objects.append({"oid": oid, "size": size, "authenticated": True,
                            "actions": {"upload": {"href": href, "expires_in": 3600}}})
    return json_response({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                         headers={"Content-Type": "application/vnd.git-lfs+json"})


def commit(req: Request, store: Store, repo_type: str, repo_id: str, args: list[str]) -> Response:
    """Read the NDJSON commit line by line (regular files go to temp files at once), then apply it atomically."""
    revision = rev(args)
    if req.flag("create_pr"):
        raise RequestError(400, "Pull requests are not supported by the loopback Hub: commit to 'main'.")
    store.snapshot(repo_type, repo_id, revision)  # 404s before reading a possibly large body
    operations: list[dict] = []
    header: dict = {}
    try:
        while line := req.body.readline(MAX_NDJSON_LINE):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = dict(value)
                elif key == "file":
                    operations.append(_regular_file(store, repo_type, repo_id, value))
                elif key == "lfsFile":
                    operations.append({"op": "lfs", "path": str(value["path"]), "oid": str(value["oid"])})
                elif key in ("deletedFile", "deletedFolder"):
                    operations.append({"op": "delete", "path": str(value["path"]), "folder": key == "deletedFolder"})
                else:
                    raise RequestError(400, f"Unknown commit operation '{key}'.")
            except (ValueError, KeyError, TypeError):
                raise RequestError(400, "Each commit line must be JSON {\"key\": ..., \"value\": {...}} with the "
                                        "fields of its operation.") from None
        if repo_type == "dataset":
            _check_eval_yaml(operations)
        summary = header.get("summary") or "Commit with the loopback Hub"
        snap = store.commit(repo_type, repo_id, revision, operations, title=summary, parent=header.get("parentCommit"))
    finally:
        for op in operations:
            if op["op"] == "add":
                op["source"].unlink(missing_ok=True)
    url = f"{repo_url(req, repo_type, repo_id)}/commit/{snap.sha}"
    return json_response({"success": True, "commitOid": snap.sha, "commitUrl": url, "hookOutput": "",
                          "pullRequestUrl": None})


def _check_eval_yaml(operations: list[dict]) -> None:
    """Refuse a benchmark ``eval.yaml`` the Hub would refuse at push time (:mod:`.evals`)."""
    for op in operations:
        if op["op"] == "add" and op["path"] == EVAL_YAML:
            errors = eval_yaml_errors(op["source"].read_text(encoding="utf-8", errors="replace"))
            if errors:
                raise RequestError(400, "Invalid eval.yaml (https://huggingface.co/docs/hub/eval-results): "
                                        + "; ".join(errors))


def _regular_file(store: Store, repo_type: str, repo_id: str, value: dict) -> dict:
    path = check_repo_path(str(value["path"]))
    try:
        content = base64.b64decode(value["content"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"Content of '{path}' is not valid base64.") from None
    tmp = store.temp_file(repo_type, repo_id)
    tmp.write_bytes(content)
    return {"op": "add", "path": path, "source": tmp}


def lfs_upload(req: Request, store: Store, oid: str) -> Response:
    """``PUT /api/lfs-upload/{oid}?size=N``: the href handed out by :func:`lfs_batch`."""
    size = req.param("size")
    if size is None or not size.isdigit():
        raise RequestError(400, "LFS upload URLs carry '?size=N'.")
    store.stage_lfs(oid, int(size), req.body.iter_chunks())
    return json_response({})
