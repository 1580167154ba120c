"""Write output shards sequentially, as tensors arrive, from headers computed in advance.

Every output tensor's name, dtype and shape is known from the plan, so each shard's header is encoded
before its first tensor is computed; tensors are then appended in plan order and nothing is buffered
beyond the tensor being written. Each finished shard is fsynced and its SHA-256 recorded, so an
interrupted merge can resume after the last verified shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mergebench.plan import ShardPlan, TensorPlan
from mergebench.stream.format import encode_header


@dataclass
class _OpenShard:
    plan: ShardPlan
    file: BinaryIO
    sha: hashlib._Hash
    next_index: int = 0


class ShardWriter:
    """Append tensors to the planned shards in ``directory``; calls ``on_shard_done(filename, sha256)``."""

    def __init__(self, directory: Path, shards: Sequence[ShardPlan], tensors: Mapping[str, TensorPlan],
                 *, metadata: Mapping[str, str] | None = None, on_shard_done=None) -> None:
        self._dir = directory
        self._shards = list(shards)
        self._tensors = tensors
        self._metadata = {"format": "pt", **(metadata or {})}
        self._on_done = on_shard_done
        self._open: _OpenShard | None = None
        self._shard_index = 0

    def skip_shard(self, filename: str) -> None:
        """Mark the next planned shard as already written (resume); it must be the next one."""
        assert self._open is None and self._shards[self._shard_index].filename == filename
        self._shard_index += 1

    def write(self, name: str, data: memoryview | bytes) -> None:
        if self._open is None:
            plan = self._shards[self._shard_index]
            header = encode_header(
                [(t, self._tensors[t].out_dtype, self._tensors[t].shape) for t in plan.tensors], self._metadata)
            f = open(self._dir / plan.filename, "wb")  # noqa: SIM115  (closed when the shard is complete)
            f.write(header)
            self._open = _OpenShard(plan, f, hashlib.sha256(header))
        shard = self._open
        expected = shard.plan.tensors[shard.next_index]
        if name != expected:
            raise RuntimeError(f"writer expected tensor '{expected}' next, got '{name}'")
        data = memoryview(data).cast("B")
        if data.nbytes != self._tensors[name].out_bytes:
            raise RuntimeError(f"tensor '{name}' has {data.nbytes} bytes, plan says {self._tensors[name].out_bytes}")
        shard.file.write(data)
        shard.sha.update(data)
        shard.next_index += 1
        if shard.next_index == len(shard.plan.tensors):
            shard.file.flush()
            os.fsync(shard.file.fileno())
            shard.file.close()
            self._open = None
            self._shard_index += 1
            if self._on_done is not None:
                self._on_done(shard.plan.filename, shard.sha.hexdigest())

    def close(self) -> None:
        if self._open is not None:
            self._open.file.close()
            self._open = None


def write_index(directory: Path, shards: Sequence[ShardPlan], total_size: int) -> None:
    """``model.safetensors.index.json`` as transformers writes it (only for sharded outputs)."""
    index = {
        "metadata": {"total_size": total_size},
        "weight_map": {name: shard.filename for shard in shards for name in shard.tensors},
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def sha256_file(path: Path, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
