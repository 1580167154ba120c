"""Routing, and the read endpoints of the loopback Hub: repo info, tree, paths-info, refs, resolve, whoami.

Shapes follow what the ``huggingface_hub`` 2.4 client parses (``hf_api.ModelInfo``, ``RepoFile``,
``file_download.get_hf_file_metadata``), not the Hub's full schema: fields the client never reads are left out.
Write endpoints live in :mod:`.uploads`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import yaml

from mergebench.hubserver import jobs, uploads
from mergebench.hubserver.evals import eval_results_items
from mergebench.hubserver.headers import read_header
from mergebench.hubserver.store import (
    REPO_TYPES,
    FileEntry,
    RequestError,
    Snapshot,
    Store,
    iso,
    repo_not_found,
)
from mergebench.hubserver.uploads import rev
from mergebench.hubserver.validate import YAML_BLOCK, validate_card
from mergebench.hubserver.wire import (
    Request,
    Response,
    json_response,
    parse_range,
    text_response,
)

logger = logging.getLogger(__name__)

PLURAL_TO_TYPE = {v: k for k, v in REPO_TYPES.items()}


def dispatch(req: Request, store: Store) -> Response:
    """Route one request; raises :class:`RequestError` for anything the Hub would refuse."""
    seg = req.segments
    if seg and seg[0] == "api":
        return _api(req, store, seg[1:])
    typed = len(seg) >= 3 and seg[0] in ("datasets", "spaces")
    repo_type, rest = (PLURAL_TO_TYPE[seg[0]], seg[1:]) if typed else ("model", seg)
    if len(rest) >= 6 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"]:
        _only(req, "POST")
        return uploads.lfs_batch(req, store, repo_type, f"{rest[0]}/{rest[1][:-4]}")
    if len(rest) >= 4 and rest[2] == "resolve":
        _only(req, "GET", "HEAD")
        return _resolve(req, store, repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
    if len(rest) >= 3 and rest[1] == "resolve":  # canonical (un-namespaced) ids are not served
        _only(req, "GET", "HEAD")
        raise repo_not_found(repo_type, rest[0])
    raise RequestError(404, f"No such endpoint on the loopback Hub: {req.method} {req.path}")


def _only(req: Request, *methods: str) -> None:
    if req.method not in methods:
        raise RequestError(405, f"{req.method} is not allowed on {req.path}; use {' or '.join(methods)}.",
                           headers={"Allow": ", ".join(methods)})


# --------------------------------------------------------------------------------------------- /api/...
def _api(req: Request, store: Store, seg: list[str]) -> Response:
    simple: dict[tuple[str, ...], tuple[str, Callable[[Request, Store], Response]]] = {
        ("whoami-v2",): ("GET", _whoami),
        ("validate-yaml",): ("POST", _validate_yaml),
        ("repos", "create"): ("POST", uploads.create_repo),
        ("repos", "delete"): ("DELETE", uploads.delete_repo),
        ("agent-harnesses",): ("GET", lambda req, store: json_response({"standardEnvVars": [], "harnesses": {}})),
    }
    if seg and seg[0] == "jobs":
        return jobs.route(req, store, seg[1:])
    if tuple(seg) in simple:
        method, handler = simple[tuple(seg)]
        _only(req, method)
        return handler(req, store)
    if len(seg) == 2 and seg[0] == "lfs-upload":
        _only(req, "PUT")
        return uploads.lfs_upload(req, store, seg[1])
    if not seg or seg[0] not in PLURAL_TO_TYPE:
        raise RequestError(404, f"No such endpoint on the loopback Hub: {req.method} {req.path}")
    repo_type = PLURAL_TO_TYPE[seg[0]]
    if len(seg) == 1:
        _only(req, "GET")
        return _list_repos(req, store, repo_type)
    if len(seg) == 2:
        raise repo_not_found(repo_type, seg[1])
    repo_id, action, args = f"{seg[1]}/{seg[2]}", (seg[3] if len(seg) > 3 else ""), seg[4:]
    routes: dict[str, tuple[str, Callable[[Request, Store, str, str, list[str]], Response]]] = {
        "": ("GET", _info), "revision": ("GET", _info), "tree": ("GET", _tree), "paths-info": ("POST", _paths_info),
        "preupload": ("POST", uploads.preupload), "commit": ("POST", uploads.commit), "refs": ("GET", _refs),
        "commits": ("GET", _commits), "auth-check": ("GET", _auth_check),
        "safetensors-metadata": ("GET", _safetensors_metadata),
    }
    if action not in routes:
        raise RequestError(404, f"No such endpoint on the loopback Hub: {req.method} {req.path}")
    method, repo_handler = routes[action]
    _only(req, method)
    return repo_handler(req, store, repo_type, repo_id, args)


def _whoami(req: Request, store: Store) -> Response:
    if not req.headers.get("Authorization"):
        raise RequestError(401, "Invalid credentials in Authorization header")
    return json_response({
        "type": "user", "id": "0" * 24, "name": uploads.USER, "fullname": "Alice", "email": f"{uploads.USER}@localhost",
        "emailVerified": True, "canPay": False, "isPro": False, "avatarUrl": "", "orgs": [],
        "auth": {"type": "access_token",
                 "accessToken": {"displayName": "loopback", "role": "write", "createdAt": iso(0)}},
    })


def _validate_yaml(req: Request, store: Store) -> Response:
    data = req.json_object()
    content, repo_type = data.get("content"), data.get("repoType") or "model"
    if not isinstance(content, str):
        raise RequestError(400, '"content" is required and must be a string.')
    report = validate_card(content, repo_type)
    status = 200 if report.ok else 400
    if req.accepts_text:
        return text_response(report.as_text(), status)
    return json_response(report.as_json(), status)


def _list_repos(req: Request, store: Store, repo_type: str) -> Response:
    author, search = req.param("author"), (req.param("search") or "").lower()
    base = store.root / REPO_TYPES[repo_type]
    out = []
    for org in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        for repo in sorted(p for p in org.iterdir() if p.is_dir() and not p.name.startswith(".")):
            repo_id = f"{org.name}/{repo.name}"
            if (author is None or org.name == author) and search in repo_id.lower():
                out.append({"id": repo_id, "author": org.name, "private": False, "downloads": 0, "likes": 0,
                            "tags": [], "createdAt": iso(repo.stat().st_mtime)})
    limit = req.param("limit")
    return json_response(out[: int(limit)] if limit and limit.isdigit() else out)


# ------------------------------------------------------------------------------------------ repo reads
def _card_data(snap: Snapshot) -> dict | None:
    entry = snap.files.get("README.md")
    if entry is None or entry.size > 1 << 20:
        return None
    match = YAML_BLOCK.search(entry.local.read_text(encoding="utf-8", errors="replace"))
    try:
        data = yaml.safe_load(match.group(2)) if match else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _sibling(entry: FileEntry, blobs: bool) -> dict:
    out: dict[str, Any] = {"rfilename": entry.path}
    if blobs:
        out |= {"size": entry.size, "blobId": entry.oid}
        if entry.sha256:
            out["lfs"] = {"size": entry.size, "sha256": entry.sha256,
                          "pointerSize": entry.tree_json()["lfs"]["pointerSize"]}
    return out


def _info(req: Request, store: Store, repo_type: str, repo_id: str, args: list[str]) -> Response:
    snap = store.snapshot(repo_type, repo_id, rev(args))
    card = _card_data(snap) or {}
    tags = card.get("tags") or []
    tags = [tags] if isinstance(tags, str) else [t for t in tags if isinstance(t, str)]
    if isinstance(card.get("license"), str):
        tags.append(f"license:{card['license']}")
    info: dict[str, Any] = {
        "_id": snap.sha[:24], "id": repo_id, "author": repo_id.split("/")[0], "sha": snap.sha,
        "lastModified": iso(snap.last_modified), "createdAt": iso(snap.created), "private": False, "gated": False,
        "disabled": False, "downloads": 0, "likes": 0, "tags": tags, "cardData": card or None,
        "siblings": [_sibling(e, req.flag("blobs")) for e in snap.files.values()],
        "usedStorage": sum(e.size for e in snap.files.values()),
    }
    if repo_type == "model":
        info |= {"modelId": repo_id, "library_name": card.get("library_name"),
                 "pipeline_tag": card.get("pipeline_tag"), "spaces": []}
        info["config"] = _config(snap)
        info["safetensors"] = _safetensors_summary(store, snap)
        if "evalResults" in req.query.get("expand", []):
            info["evalResults"] = eval_results_items(snap)
    elif repo_type == "space":
        info |= {"sdk": card.get("sdk"), "subdomain": repo_id.replace("/", "-").lower()}
    return json_response(info)


def _config(snap: Snapshot) -> dict | None:
    entry = snap.files.get("config.json")
    if entry is None or entry.size > 1 << 20:
        return None
    try:
        config = json.loads(entry.local.read_bytes())
    except (OSError, ValueError):
        return None
    return {k: config[k] for k in ("architectures", "model_type") if isinstance(config, dict) and k in config}


def _safetensors_summary(store: Store, snap: Snapshot) -> dict | None:
    totals: dict[str, int] = {}
    shards = [e for p, e in snap.files.items() if "/" not in p and p.endswith(".safetensors")]
    for entry in shards:
        params = store.safetensors_parameters(entry)
        if params is None:
            return None
        for dtype, n in params.items():
            totals[dtype] = totals.get(dtype, 0) + n
    return {"parameters": totals, "total": sum(totals.values())} if shards else None


def _entry_json(snap: Snapshot, path: str, expand: bool, tree_oid: str | None = None) -> dict:
    out = (snap.files[path].tree_json() if tree_oid is None
           else {"type": "directory", "oid": tree_oid, "size": 0, "path": path})
    if expand:
        out["lastCommit"] = {"id": snap.sha, "title": snap.commit.title, "date": iso(snap.commit.date)}
    return out


def _tree(req: Request, store: Store, repo_type: str, repo_id: str, args: list[str]) -> Response:
    snap = store.snapshot(repo_type, repo_id, rev(args))
    path, recursive, expand = "/".join(args[1:]).strip("/"), req.flag("recursive"), req.flag("expand")
    dirs = snap.directories()
    if path and path not in dirs:
        raise RequestError(404, f"Folder '{path}' not found in {repo_id}@{snap.sha}.", code="EntryNotFound",
                           headers={"X-Repo-Commit": snap.sha})
    prefix = f"{path}/" if path else ""

    def wanted(p: str) -> bool:
        return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

    out = [_entry_json(snap, d, expand, oid) for d, oid in dirs.items() if wanted(d)]
    out += [_entry_json(snap, p, expand) for p in snap.files if wanted(p)]
    return json_response(out)


def _paths_info(req: Request, store: Store, repo_type: str, repo_id: str, args: list[str]) -> Response:
    snap = store.snapshot(repo_type, repo_id, rev(args))
    raw = req.body.read_all(16 << 20)
    if "json" in req.headers.get("Content-Type", ""):
        data = json.loads(raw or b"{}")
        paths, expand = data.get("paths") or [], bool(data.get("expand"))
        paths = [paths] if isinstance(paths, str) else paths
    else:
        form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[-1].lower() in ("1", "true")
    dirs = snap.directories()
    out = []
    for path in (str(p).strip("/") for p in paths):
        if path in snap.files:
            out.append(_entry_json(snap, path, expand))
        elif path in dirs:
            out.append(_entry_json(snap, path, expand, dirs[path]))
    return json_response(out)


def _refs(req: Request, store: Store, repo_type: str, repo_id: str, args: list[str]) -> Response:
    snap = store.snapshot(repo_type, repo_id)
    main = {"name": "main", "ref": "refs/heads/main", "targetCommit": snap.sha}
    return json_response({"branches": [main], "converts": [], "tags": [], "pullRequests": []})


def _commits(req: Request, store: Store, repo_type: str, repo_id: str, args: list[str]) -> Response:
    snap = store.snapshot(repo_type, repo_id, rev(args))
    return json_response([{"id": snap.sha, "title": snap.commit.title, "message": "",
                           "authors": [{"user": uploads.USER, "avatar": ""}], "date": iso(snap.commit.date)}])


def _auth_check(req: Request, store: Store, repo_type: str, repo_id: str, args: list[str]) -> Response:
    store.snapshot(repo_type, repo_id)
    return json_response({})


def _safetensors_metadata(req: Request, store: Store, repo_type: str, repo_id: str, args: list[str]) -> Response:
    snap = store.snapshot(repo_type, repo_id)
    name = "/".join(args) or "model.safetensors.index.json"
    entry = snap.files.get(name)
    if entry is None:
        raise RequestError(404, f"Entry not found: '{name}'.", code="EntryNotFound")
    try:
        index = json.loads(entry.local.read_bytes())
        shards = sorted(set(index["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RequestError(400, f"'{name}' is not a safetensors index (no weight_map).") from None
    folder = os.path.dirname(name)
    headers = {}
    for shard in shards:
        shard_entry = snap.files.get(f"{folder}/{shard}" if folder else shard)
        if shard_entry is None:
            raise RequestError(404, f"Shard '{shard}' listed in '{name}' is missing.", code="EntryNotFound")
        headers[shard] = _read_header(shard_entry)
    return json_response({"index": {k: v for k, v in index.items() if k != "weight_map"}, "headers": headers})


def _read_header(entry: FileEntry) -> dict:
    try:
        return read_header(entry.local)
    except ValueError as e:
        raise RequestError(400, str(e)) from None


# ---------------------------------------------------------------------------------------------- resolve
def _resolve(req: Request, store: Store, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
    for _ in range(3):  # a commit may replace the file between the scan and the open: look again
        snap = store.snapshot(repo_type, repo_id, revision)
        entry = snap.files.get(path)
        if entry is None:
            raise RequestError(404, f"Entry not found: '{path}' in {repo_type} '{repo_id}'.",
                               code="EntryNotFound", headers={"X-Repo-Commit": snap.sha})
        try:
            f = open(entry.local, "rb")  # noqa: SIM115 - closed by the sender
        except FileNotFoundError:
            continue
        st = os.fstat(f.fileno())
        if st.st_size == entry.size and st.st_mtime == entry.mtime:
            break
        f.close()
    else:
        raise RequestError(503, f"'{path}' keeps changing while being read; retry.")
    headers = {
        "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "X-Repo-Commit": snap.sha,
        "ETag": f'"{entry.etag}"',
        "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(entry.mtime)),
        "Content-Disposition": f"inline; filename*=UTF-8''{os.path.basename(path)}; "
                               f'filename="{os.path.basename(path)}"',
    }
    if entry.sha256:
        headers |= {"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
    try:
        span = parse_range(req.headers.get("Range"), entry.size)
    except RequestError as e:
        f.close()
        e.headers |= {"X-Repo-Commit": snap.sha, "ETag": f'"{entry.etag}"'}
        raise
    if span is None:
        return Response(200, headers, file=f, file_start=0, file_length=entry.size)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
    return Response(206, headers, file=f, file_start=start, file_length=end - start + 1)


__all__ = ["dispatch"]
