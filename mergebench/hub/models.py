"""What MergeBench asks of a model before streaming its weights: commit, file list, headers, config.

A model reference (:class:`~mergebench.hub.refs.Ref`) is resolved to a commit sha **before any work**, and
every later request pins that sha, so a merge is
reproducible even if the repo moves on while it runs. Only safetensors *headers* are read here
(``HfApi.parse_safetensors_file_metadata``: Range requests, nothing written to the cache); small text files
(configs, tokenizers) are read into memory or written straight to the output folder, never into the
Hub cache.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from mergebench.errors import CorruptFileError, RefError
from mergebench.hub.refs import Ref
from mergebench.hub.retry import get_bytes, with_retries
from mergebench.stream.format import FileHeader, TensorEntry, header_length, parse_header
from mergebench.stream.sources import HttpSource, http_timeout

logger = logging.getLogger(__name__)

_CORRUPT_HINT = "The file is corrupt or not safetensors; re-download or re-save it."
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned to one commit (or a local folder), with its safetensors headers and config.

    ``files`` maps each shard's filename to its header; ``weight_map`` maps tensor name → shard.
    """

    ref: Ref
    sha: str | None
    files: dict[str, FileHeader]
    weight_map: dict[str, str]
    config: dict[str, Any]
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
        return get_bytes(self.url(filename)).decode("utf-8")

    def copy_file(self, filename: str, dest: Path) -> None:
        """Copy one (small) file into ``dest`` without touching the Hub cache."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.ref.local_path is not None:
            shutil.copyfile(self.ref.local_path / filename, dest)
            return
        with get_session().stream("GET", self.url(filename), headers=build_hf_headers(), follow_redirects=True,
                                  timeout=http_timeout()) as response:
            hf_raise_for_status(response)
            with open(dest, "wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)


def resolve(ref: Ref, *, api: HfApi | None = None) -> ResolvedModel:
    """Pin ``ref`` to a commit and read its safetensors headers and ``config.json``.

    Raises:
        RefError: the folder or repo has no safetensors weights.
        CorruptFileError: a local header cannot be parsed.
        huggingface_hub errors (``RepositoryNotFoundError``, ``RevisionNotFoundError``) pass through.
    """
    if ref.local_path is not None:
        return _resolve_local(ref)
    return _resolve_hub(ref, api or HfApi())


def _resolve_local(ref: Ref) -> ResolvedModel:
    root = ref.local_path
    assert root is not None
    file_list = tuple(sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()))
    shards = _shard_names(ref, file_list, lambda name: (root / name).read_text(encoding="utf-8"))
    files = {name: read_local_header(root / name, model=ref.text) for name in shards}
    config_text = (root / "config.json").read_text(encoding="utf-8") if "config.json" in file_list else None
    config = _parse_json(config_text, model=ref.text, filename="config.json") if config_text else {}
    return ResolvedModel(ref, None, files, _weight_map(files), config, file_list)


def _resolve_hub(ref: Ref, api: HfApi) -> ResolvedModel:
    repo_id, revision = ref.repo_id, ref.revision
    assert repo_id
    info = with_retries(lambda: api.model_info(repo_id, revision=revision))
    sha = info.sha
    file_list = tuple(sorted(s.rfilename for s in info.siblings or []))
    logger.info("Resolved %s to commit %s", ref.text, sha)
    pinned = ResolvedModel(ref, sha, {}, {}, {}, file_list)
    shards = _shard_names(ref, file_list, lambda name: pinned.read_text(name) or "")
    # Per-shard header reads with the streaming source's resumable Range requests (not the client's
    # get_safetensors_metadata(), which writes the index into the Hub cache, nor its per-file metadata call,
    # which restarts from byte 0 after a drop): the header bytes exactly, checked against the file's size.
    files: dict[str, FileHeader] = {}
    for name in shards:
        source = HttpSource(pinned.url(name), model=pinned.label, filename=name, data_size=0)
        try:
            files[name] = source.read_header()
        except ValueError as e:
            raise CorruptFileError(f"The safetensors header of '{name}' in '{pinned.label}' is invalid: {e}",
                                   model=pinned.label, filename=name, hint=_CORRUPT_HINT) from e
    config_text = pinned.read_text("config.json")
    config = _parse_json(config_text, model=pinned.label, filename="config.json") if config_text else {}
    return ResolvedModel(ref, sha, files, _weight_map(files), config, file_list)


def _shard_names(ref: Ref, file_list: tuple[str, ...], read: Callable[[str], str]) -> list[str]:
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
            raise RefError(
                f"'{ref.text}' lists shard(s) {missing} in {INDEX_FILE} but the file(s) are missing.",
                ref=ref.text, hint="Re-upload the missing shards or fix the index.",
            )
        return shards
    if SINGLE_FILE in file_list:
        return [SINGLE_FILE]
    raise RefError(
        f"'{ref.text}' has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}).",
        ref=ref.text,
        hint="MergeBench reads safetensors only; convert .bin checkpoints with "
             "`save_pretrained(safe_serialization=True)`.",
    )


def _parse_json(text: str, *, model: str, filename: str) -> dict[str, Any]:
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


