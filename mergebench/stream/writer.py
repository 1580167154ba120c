"""Write output shards sequentially, as tensors arrive, from headers computed in advance.

Every output tensor's name, dtype and shape is known from the plan, so each shard's header is encoded
before its first tensor is computed; tensors are then appended in plan order and nothing is buffered
beyond the tensor being written. Each finished shard is fsynced and its checksum recorded, so an
interrupted merge can resume after the last verified shard.

The checksum only guards our own partial shards against a crash (not an adversary), so it is XXH3-128,
which runs at several GB/s where SHA-256 (no SHA extensions on these CPUs) managed 0.35–0.6 GB/s and was
the slowest stage of a merge. Writeback of each shard is started every :data:`WRITEBACK_BYTES` while it is
being written, so the final ``fsync`` waits for the last few megabytes, not for the whole shard.
"""

from __future__ import annotations

import json
import mmap
import os
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import torch
import xxhash

from mergebench.stream.format import encode_header, header_length, parse_header


class ShardSpec(Protocol):
    """One planned output shard, as the writer needs it (:class:`mergebench.merge.plan.ShardPlan` is one)."""

    @property
    def filename(self) -> str: ...

    @property
    def tensors(self) -> Sequence[str]: ...


class TensorSpec(Protocol):
    """One planned output tensor, as the writer needs it (:class:`mergebench.merge.plan.TensorPlan` is one)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def out_dtype(self) -> str: ...

    @property
    def out_bytes(self) -> int: ...


@dataclass
class _OpenShard:
    plan: ShardSpec
    file: BinaryIO
    checksum: xxhash.xxh3_128
    next_index: int = 0
    written: int = 0
    flushed: int = 0


WRITEBACK_BYTES = 64 << 20


def _start_writeback(shard: _OpenShard) -> None:
    """Start (not wait for) writeback of what was written since the last call. ``POSIX_FADV_DONTNEED``
    on Linux initiates asynchronous writeback of dirty pages and drops the range's clean pages from the
    cache; elsewhere it may do nothing, and the final ``fsync`` does all the work, as before."""
    shard.file.flush()
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(shard.file.fileno(), shard.flushed, shard.written - shard.flushed, os.POSIX_FADV_DONTNEED)
    shard.flushed = shard.written


class ShardWriter:
    """Append tensors to the planned shards in ``directory``; calls ``on_shard_done(filename, checksum)``."""

    def __init__(self, directory: Path, shards: Sequence[ShardSpec], tensors: Mapping[str, TensorSpec],
                 *, metadata: Mapping[str, str] | None = None,
                 on_shard_done: Callable[[str, str], None] | None = None) -> None:
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
            self._open = _OpenShard(plan, f, xxhash.xxh3_128(header), written=len(header))
        shard = self._open
        expected = shard.plan.tensors[shard.next_index]
        if name != expected:
            raise RuntimeError(f"writer expected tensor '{expected}' next, got '{name}'")
        data = memoryview(data).cast("B")
        if data.nbytes != self._tensors[name].out_bytes:
            raise RuntimeError(f"tensor '{name}' has {data.nbytes} bytes, plan says {self._tensors[name].out_bytes}")
        shard.file.write(data)
        shard.checksum.update(data)
        shard.written += data.nbytes
        shard.next_index += 1
        if shard.next_index == len(shard.plan.tensors):
            shard.file.flush()
            os.fsync(shard.file.fileno())
            shard.file.close()
            self._open = None
            self._shard_index += 1
            if self._on_done is not None:
                self._on_done(shard.plan.filename, shard.checksum.hexdigest())
        elif shard.written - shard.flushed >= WRITEBACK_BYTES:
            _start_writeback(shard)

    def close(self) -> None:
        if self._open is not None:
            self._open.file.close()
            self._open = None


class BackgroundWriter:
    """Run a :class:`ShardWriter` on its own thread so disk writes and hashing overlap the next tensor's
    compute. At most ``depth`` tensors wait in the queue (bounded memory); an error in the writer
    thread is raised again in the caller at its next ``write`` or at ``close``."""

    def __init__(self, writer: ShardWriter, *, depth: int = 2) -> None:
        self._writer = writer
        self._queue: queue.Queue[tuple[str, object] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mergebench-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                name, payload = item
                try:
                    self._writer.write(name, _as_bytes(payload))
                except BaseException as e:  # re-raised in the caller's thread
                    self._error = e

    def write(self, name: str, payload: object) -> None:
        """Queue a tensor (a ``torch.Tensor`` in the output dtype, or raw bytes) for writing."""
        self._raise_pending()
        self._queue.put((name, payload))

    def close(self) -> None:
        """Wait for every queued tensor to be written, then close the underlying writer."""
        self._queue.put(None)
        self._thread.join()
        self._writer.close()
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error


def _as_bytes(payload: object) -> memoryview | bytes:
    if isinstance(payload, torch.Tensor):
        return payload.reshape(-1).contiguous().view(torch.uint8).numpy().data
    return payload  # type: ignore[return-value]


def write_index(directory: Path, shards: Sequence[ShardSpec], total_size: int) -> None:
    """``model.safetensors.index.json`` as transformers writes it (only for sharded outputs)."""
    index = {
        "metadata": {"total_size": total_size},
        "weight_map": {name: shard.filename for shard in shards for name in shard.tensors},
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def patch_shard(path: Path, patches: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> str:
    """Overwrite entries of tensors in a finished shard, in place: ``{name: (flat indices, values)}`` with the
    values in the tensor's stored dtype. The file is mapped, written, fsynced; returns its new checksum.

    Used for the few entries a merge could only compute after the shard was written (an open top-k
    threshold); everything else in the file is untouched."""
    with open(path, "r+b") as f:
        prefix = f.read(8)
        n = header_length(prefix)
        tensors = parse_header(f.read(n)).tensors
        with mmap.mmap(f.fileno(), 0) as mapped:
            data = torch.frombuffer(mapped, dtype=torch.uint8)
            for name, (index, values) in patches.items():
                entry = tensors[name]
                if values.dtype != entry.torch_dtype:
                    raise TypeError(f"patch of '{name}' is {values.dtype}, the tensor is {entry.dtype}")
                start = 8 + n + entry.begin
                data[start:start + entry.nbytes].view(values.dtype)[index] = values
            del data
            mapped.flush()
        os.fsync(f.fileno())
    return checksum_file(path)


def checksum_file(path: Path, chunk: int = 16 << 20) -> str:
    """The checksum :class:`ShardWriter` reports for a finished shard (XXH3-128, hex)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
