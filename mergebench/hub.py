"""Model references and everything MergeBench asks of the Hub before streaming weights.

A model reference is ``org/name``, ``org/name@revision`` or a local directory. Hub references are
resolved to a commit sha **before any work**, and every later request pins that sha, so a merge is
reproducible even if the repo moves on while it runs. Only safetensors *headers* are read here
(``HfApi.parse_safetensors_file_metadata``: Range requests, nothing written to the cache); small text files
(configs, tokenizers) are read into memory or written straight to the output folder, never into the
Hub cache. This module is the only place that calls ``HfApi`` for reading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx2 as httpx  # the HTTP client huggingface_hub uses (get_session())
from huggingface_hub import HfApi, constants, hf_api, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from mergebench.errors import CorruptFileError, ModelRefError
from mergebench.stream.format import FileHeader, TensorEntry, check_layout, header_length, parse_header

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_CORRUPT_HINT = "The file is corrupt or not safetensors; re-download or re-save it."
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: exactly one of ``repo_id`` and ``local_path`` is set."""

    text: str
    repo_id: str | None = None
    revision: str | None = None
    local_path: Path | None = None

    @classmethod
    def parse(cls, text: str, *, base_dir: Path | None = None) -> ModelRef:
        """Parse ``org/name[@rev]`` or a path. An existing directory wins over a repo id, as in transformers.

        Relative paths are taken relative to ``base_dir`` (the recipe's folder) when given.
        """
        text = text.strip()
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.is_dir() or text.startswith((".", "/", "~")):
            if not path.is_dir():
                raise ModelRefError(f"Local model folder '{text}' does not exist ({path}).", ref=text,
                                    hint="Check the path, or use 'org/name' for a Hub repo.")
            return cls(text=text, local_path=path.resolve())
        repo_id, _, revision = text.partition("@")
        if not _REPO_ID.match(repo_id):
            raise ModelRefError(
                f"'{text}' is neither an existing folder nor a Hub repo id of the form 'org/name[@revision]'.",
                ref=text,
            )
        return cls(text=text, repo_id=repo_id, revision=revision or None)

    @property
    def public_name(self) -> str:
        """The repo id, or a local folder's :func:`public_path` (what cards and pushed files show)."""
        return self.repo_id or public_path(self.text)


def public_path(text: str) -> str:
    """How a published file (a card, the saved recipe) names a local path: as written when relative,
    else by its last component only, so a push never reveals the merging machine's directory layout."""
    path = Path(text)
    if text.startswith("~") or path.is_absolute():
        return f"./{path.name}"
    return text


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned to one commit (or a local folder), with its safetensors headers and config.

    ``files`` maps each shard's filename to its header; ``weight_map`` maps tensor name → shard.
    """

    ref: ModelRef
    sha: str | None
    files: dict[str, FileHeader]
    weight_map: dict[str, str]
    config: dict
    file_list: tuple[str, ...]

    @property
    def label(self) -> str:
        """How messages name the model: the text the user wrote (plus the sha for Hub refs)."""
        if self.ref.repo_id:
            return f"{self.ref.repo_id}@{self.sha[:10]}" if self.sha else self.ref.repo_id
        return self.ref.text

    @property
    def is_local(self) -> bool:
        return self.ref.local_path is not None

    def tensor(self, name: str) -> TensorEntry:
        return self.files[self.weight_map[name]].tensors[name]

    def url(self, filename: str) -> str:
        """The resolve URL of one file at the pinned commit (Hub models only)."""
        assert self.ref.repo_id and self.sha
        return hf_hub_url(self.ref.repo_id, filename, revision=self.sha, endpoint=constants.ENDPOINT)

    def read_text(self, filename: str) -> str | None:
        """A small file's text, or ``None`` when the model has no such file."""
        if filename not in self.file_list:
            return None
        if self.ref.local_path is not None:
            return (self.ref.local_path / filename).read_text(encoding="utf-8")
        return _get(self.url(filename)).decode("utf-8")

    def copy_file(self, filename: str, dest: Path) -> None:
        """Copy one (small) file into ``dest`` without touching the Hub cache."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.ref.local_path is not None:
            shutil.copyfile(self.ref.local_path / filename, dest)
            return
        with get_session().stream("GET", self.url(filename), headers=build_hf_headers(),
                                  follow_redirects=True) as response:
            hf_raise_for_status(response)
            with open(dest, "wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)


def resolve(ref: ModelRef, *, api: HfApi | None = None) -> ResolvedModel:
    """Pin ``ref`` to a commit and read its safetensors headers and ``config.json``.

    Raises:
        ModelRefError: the folder or repo has no safetensors weights.
        CorruptFileError: a local header cannot be parsed.
        huggingface_hub errors (``RepositoryNotFoundError``, ``RevisionNotFoundError``) pass through.
    """
    if ref.local_path is not None:
        return _resolve_local(ref)
    return _resolve_hub(ref, api or HfApi())


def _resolve_local(ref: ModelRef) -> ResolvedModel:
    root = ref.local_path
    assert root is not None
    file_list = tuple(sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()))
    shards = _shard_names(ref, file_list, lambda name: (root / name).read_text(encoding="utf-8"))
    files = {name: read_local_header(root / name, model=ref.text) for name in shards}
    config_text = (root / "config.json").read_text(encoding="utf-8") if "config.json" in file_list else None
    config = _parse_json(config_text, model=ref.text, filename="config.json") if config_text else {}
    return ResolvedModel(ref, None, files, _weight_map(files), config, file_list)


def _resolve_hub(ref: ModelRef, api: HfApi) -> ResolvedModel:
    assert ref.repo_id
    info = with_retries(lambda: api.model_info(ref.repo_id, revision=ref.revision, files_metadata=True))
    sha = info.sha
    file_list = tuple(sorted(s.rfilename for s in info.siblings or []))
    sizes = {s.rfilename: s.size for s in info.siblings or [] if s.size is not None}
    logger.info("Resolved %s to commit %s", ref.text, sha)
    pinned = ResolvedModel(ref, sha, {}, {}, {}, file_list)
    shards = _shard_names(ref, file_list, lambda name: pinned.read_text(name) or "")
    # Per-shard header reads (Range requests), not get_safetensors_metadata(): that one downloads the
    # index into the Hub cache, and a streaming merge must leave no copy of its inputs on disk.
    files = {}
    for name in shards:
        fm = with_retries(lambda n=name: api.parse_safetensors_file_metadata(ref.repo_id, n, revision=sha))
        entries = [TensorEntry(t, i.dtype, tuple(i.shape), *i.data_offsets) for t, i in fm.tensors.items()]
        try:
            files[name] = FileHeader(tensors=check_layout(entries), metadata=dict(fm.metadata or {}))
        except (ValueError, KeyError) as e:
            raise CorruptFileError(f"The safetensors header of '{name}' in '{pinned.label}' is invalid: {e}",
                                   model=pinned.label, filename=name, hint=_CORRUPT_HINT) from e
    for name, header in files.items():
        if name in sizes and sizes[name] < 8 + header.data_size:
            raise CorruptFileError(
                f"'{name}' in '{ref.text}' is truncated on the Hub: {sizes[name]} bytes, but its header needs "
                f"more than {8 + header.data_size}.", model=pinned.label, filename=name, hint="Re-upload the shard.")
    config_text = pinned.read_text("config.json")
    config = _parse_json(config_text, model=pinned.label, filename="config.json") if config_text else {}
    return ResolvedModel(ref, sha, files, _weight_map(files), config, file_list)


def _shard_names(ref: ModelRef, file_list: tuple[str, ...], read) -> list[str]:
    if INDEX_FILE in file_list:
        index = _parse_json(read(INDEX_FILE), model=ref.text, filename=INDEX_FILE)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CorruptFileError(f"{INDEX_FILE} of '{ref.text}' has no 'weight_map' of tensor → shard names.",
                                   model=ref.text, filename=INDEX_FILE,
                                   hint="Re-save the model with `save_pretrained`, or fix the index.")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if s not in file_list]
        if missing:
            raise ModelRefError(
                f"'{ref.text}' lists shard(s) {missing} in {INDEX_FILE} but the file(s) are missing.",
                ref=ref.text, hint="Re-upload the missing shards or fix the index.",
            )
        return shards
    if SINGLE_FILE in file_list:
        return [SINGLE_FILE]
    raise ModelRefError(
        f"'{ref.text}' has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}).",
        ref=ref.text,
        hint="MergeBench reads safetensors only; convert .bin checkpoints with "
             "`save_pretrained(safe_serialization=True)`.",
    )


def _parse_json(text: str, *, model: str, filename: str) -> dict:
    """A model's JSON file (``config.json``, the shard index) as a dict; anything else is a CorruptFileError."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"'{filename}' of '{model}' is not valid JSON: {e}.", model=model, filename=filename,
                               hint=f"Fix or re-download '{filename}'.") from e
    if not isinstance(value, dict):
        raise CorruptFileError(f"'{filename}' of '{model}' is not a JSON object.", model=model, filename=filename,
                               hint=f"Fix or re-download '{filename}'.")
    return value


def _weight_map(files: dict[str, FileHeader]) -> dict[str, str]:
    return {tensor: name for name, header in files.items() for tensor in header.tensors}


def read_local_header(path: Path, *, model: str) -> FileHeader:
    """Read and check a local safetensors header, including that the file is long enough."""
    try:
        with open(path, "rb") as f:
            n = header_length(f.read(8))
            header = parse_header(f.read(n))
    except (ValueError, OSError) as e:
        raise CorruptFileError(f"Cannot read the safetensors header of '{path.name}' in '{model}': {e}",
                               model=model, filename=path.name, hint=_CORRUPT_HINT) from e
    size, expected = path.stat().st_size, 8 + n + header.data_size
    if size != expected:
        problem = "is truncated" if size < expected else "has trailing bytes after its last tensor"
        raise CorruptFileError(
            f"'{path.name}' in '{model}' {problem}: {size} bytes, but its header describes exactly {expected}.",
            model=model, filename=path.name, hint="Re-download or re-save the shard.",
        )
    return header


def endpoint_env(url: str, hf_home: Path, *, token: str | None = None) -> dict[str, str]:
    """Environment variables that point a ``huggingface_hub`` process at ``url`` with a private cache."""
    env = {
        "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_DATASETS_CACHE": str(hf_home / "datasets"),
    }
    return env | ({"HF_TOKEN": token} if token else {})


@contextlib.contextmanager
def use_endpoint(url: str, *, hf_home: Path, token: str | None = None) -> Iterator[None]:
    """Point this process's ``huggingface_hub`` (and ``datasets``) at another Hub, e.g. the loopback server.

    Both libraries read ``HF_ENDPOINT`` and friends once, at import, into module constants; setting the
    variables later is not enough, so the constants are patched as well as the environment, with a
    private cache under ``hf_home``, and everything is restored on exit. Xet transfers are disabled (the
    loopback server speaks the plain HTTP + LFS protocol).
    """
    url = url.rstrip("/")
    env = endpoint_env(url, Path(hf_home), token=token)
    patches: list[tuple[object, str, object]] = [(constants, name, value) for name, value in {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True, "HF_HOME": env["HF_HOME"], "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_TOKEN_PATH": str(Path(hf_home) / "token"), "HF_STORED_TOKENS_PATH": str(Path(hf_home) / "stored_tokens"),
        "HF_XET_CACHE": str(Path(hf_home) / "xet"),
        "AGENT_HARNESSES_PATH": str(Path(hf_home) / ".agent_harnesses.json"),
        "HF_URL_HOSTS": frozenset({*constants.HF_URL_HOSTS, urlsplit(url).hostname}),
    }.items() if hasattr(constants, name)]
    if "datasets" in sys.modules:  # it read HF_ENDPOINT at its own import
        import datasets.config

        patches += [(datasets.config, "HF_ENDPOINT", url), (datasets.config, "HF_HUB_OFFLINE", False),
                    (datasets.config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")]
    # the module-level functions (huggingface_hub.whoami, create_repo, ...) share one HfApi bound at import
    patches.append((hf_api.api, "endpoint", url))
    if "transformers.utils.hub" in sys.modules:  # it keeps one HfApi, bound to the endpoint it was created with
        patches.append((sys.modules["transformers.utils.hub"], "_hf_api", None))
    saved_attrs = [(obj, name, getattr(obj, name, None)) for obj, name, _ in patches]
    saved_env = {k: os.environ.get(k) for k in env}
    for obj, name, value in patches:
        setattr(obj, name, value)
    os.environ.update(env)
    try:
        yield
    finally:
        for obj, name, value in saved_attrs:
            setattr(obj, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


T = TypeVar("T")
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def with_retries(call: Callable[[], T], *, retries: int = 5, backoff: float = 0.2) -> T:
    """Run a Hub call, retrying transient failures (5xx, 429, dropped connections) with back-off."""
    for attempt in range(retries + 1):
        try:
            return call()
        except (HfHubHTTPError, httpx.TransportError) as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            transient = isinstance(e, httpx.TransportError) or status in RETRYABLE_STATUS
            if not transient or attempt == retries:
                raise
            delay = backoff * 2**attempt
            logger.warning("Hub request failed (%s); retrying in %.1fs", status or type(e).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _get(url: str) -> bytes:
    def call() -> bytes:
        response = get_session().get(url, headers=build_hf_headers(), follow_redirects=True)
        hf_raise_for_status(response)
        return response.content

    return with_retries(call)


__all__ = ["ModelRef", "ResolvedModel", "read_local_header", "resolve", "use_endpoint"]
