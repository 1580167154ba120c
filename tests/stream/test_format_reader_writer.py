"""The safetensors layout helpers, the coalescing reader and the sequential writer on real files."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergebench.hub.models import resolve
from mergebench.hub.refs import Ref
from mergebench.merge.plan import ShardPlan, TensorPlan
from mergebench.stream import reader as reader_module
from mergebench.stream.format import encode_header, header_length, parse_header
from mergebench.stream.reader import TensorStream, default_read_threads
from mergebench.stream.writer import ShardWriter


def test_encoded_header_is_read_back_by_safetensors(tmp_path: Path) -> None:
    tensors = {"b": torch.arange(6, dtype=torch.float32).view(2, 3), "a": torch.ones(4, dtype=torch.bfloat16)}
    header = encode_header([("b", "F32", (2, 3)), ("a", "BF16", (4,))], {"format": "pt"})
    assert len(header) % 8 == 0
    path = tmp_path / "x.safetensors"
    path.write_bytes(header + tensors["b"].numpy().tobytes() + tensors["a"].view(torch.int16).numpy().tobytes())
    loaded = load_file(path)
    assert torch.equal(loaded["b"], tensors["b"]) and torch.equal(loaded["a"], tensors["a"])
    n = header_length(header)
    parsed = parse_header(header[8: 8 + n])
    assert list(parsed.tensors) == ["b", "a"]
    assert (parsed.tensors["a"].begin, parsed.tensors["a"].end) == (24, 32)
    assert parsed.metadata == {"format": "pt"}


@pytest.mark.parametrize("raw, message", [
    (b"\x00" * 8, "not a valid safetensors header length"),
    (b"\x01", "shorter than the 8-byte header length"),
])
def test_bad_header_lengths(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        header_length(raw)


def test_parse_header_rejects_inconsistent_offsets() -> None:
    with pytest.raises(ValueError, match=r"spans bytes \[0, 3\) but F32\[2\] needs 8 bytes"):
        parse_header(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 3]}}')
    with pytest.raises(ValueError, match="unsupported dtype"):
        parse_header(b'{"w": {"dtype": "F8_E9", "shape": [2], "data_offsets": [0, 2]}}')


def test_reader_coalesces_adjacent_tensors_and_bounds_reads(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    tensors = {f"t{i:02d}": torch.full((256,), float(i)) for i in range(20)}  # 1 KiB each, back to back
    save_file(tensors, folder / "model.safetensors")
    model = resolve(Ref.parse(str(folder)))
    reads: list[tuple[int, int]] = []
    original = reader_module.LocalSource.read

    def spy(self, begin, end):
        reads.append((begin, end))
        return original(self, begin, end)

    monkeypatch.setattr(reader_module.LocalSource, "read", spy)
    order = [(name, (0,)) for name in sorted(tensors)]
    stream = TensorStream([model], order, chunk_bytes=4096, max_inflight_bytes=8192, threads=2)
    got = {item.name: torch.frombuffer(bytearray(item.raw[0]), dtype=torch.float32) for item in stream}
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert len(reads) == 5 and all(end - begin == 4096 for begin, end in reads)
    assert stream.bytes_to_read == 20 * 1024


def test_a_stream_stopped_early_does_not_wait_for_reads_in_flight(tmp_path: Path, monkeypatch) -> None:
    """Closing a stream (an error in the consumer, or the garbage collector finalizing a dropped one in whatever
    thread it runs) must not join its read threads: that join deadlocked against the interpreter's thread locks
    when the collector ran inside a new thread's start-up. A read still in flight ends on its own."""
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({f"t{i}": torch.full((256,), float(i)) for i in range(4)}, folder / "model.safetensors")
    model = resolve(Ref.parse(str(folder)))
    original = reader_module.LocalSource.read
    release = threading.Event()
    started = threading.Event()

    def slow(self, begin, end):
        if begin > 0:  # every read after the first waits until the test lets it go
            started.set()
            release.wait(30)
        return original(self, begin, end)

    monkeypatch.setattr(reader_module.LocalSource, "read", slow)
    stream = iter(TensorStream([model], [(f"t{i}", (0,)) for i in range(4)], chunk_bytes=1024, threads=2))
    assert next(stream).name == "t0"
    assert started.wait(10), "the next tensor's read is in flight"
    closer = threading.Thread(target=stream.close)  # type: ignore[attr-defined]
    closer.start()
    closer.join(5)
    stopped = not closer.is_alive()
    release.set()
    closer.join()
    assert stopped, "closing the stream waited for a read in flight"


def test_writer_enforces_plan_order_and_sizes(tmp_path: Path) -> None:
    plans = {n: TensorPlan(n, (2,), "F32", "F32", True) for n in ("a", "b", "c")}
    done: list[str] = []
    writer = ShardWriter(tmp_path, [ShardPlan("s1.safetensors", ("a", "b")), ShardPlan("s2.safetensors", ("c",))],
                         plans, on_shard_done=lambda f, sha: done.append(f))
    writer.write("a", torch.tensor([1.0, 2.0]).numpy().data)
    with pytest.raises(RuntimeError, match="expected tensor 'b' next, got 'c'"):
        writer.write("c", torch.tensor([1.0, 2.0]).numpy().data)
    with pytest.raises(RuntimeError, match="has 4 bytes, plan says 8"):
        writer.write("b", struct.pack("<f", 1.0))
    writer.write("b", torch.tensor([3.0, 4.0]).numpy().data)
    assert done == ["s1.safetensors"]
    writer.write("c", torch.tensor([5.0, 6.0]).numpy().data)
    assert done == ["s1.safetensors", "s2.safetensors"]
    assert torch.equal(load_file(tmp_path / "s1.safetensors")["b"], torch.tensor([3.0, 4.0]))


@pytest.mark.parametrize(("cores", "threads"), [(None, 2), (1, 2), (2, 2), (3, 3), (64, 4)])
def test_read_threads_default_to_one_per_core_between_two_and_four(tmp_path: Path, monkeypatch, cores, threads) -> None:
    """Receivers beyond the cores only hand the GIL around; fewer than two leave the link idle during a request."""
    monkeypatch.setattr(reader_module.os, "cpu_count", lambda: cores)
    started: list[int] = []
    original = reader_module.ThreadPoolExecutor

    def spy(max_workers: int, **kwargs):
        started.append(max_workers)
        return original(max_workers, **kwargs)

    monkeypatch.setattr(reader_module, "ThreadPoolExecutor", spy)
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"t": torch.arange(8, dtype=torch.float32)}, folder / "model.safetensors")
    model = resolve(Ref.parse(str(folder)))
    assert default_read_threads() == threads
    items = list(TensorStream([model], [("t", (0,))]))
    assert torch.equal(torch.frombuffer(bytearray(items[0].raw[0]), dtype=torch.float32), torch.arange(8.0))
    assert started == [threads]
