"""The safetensors layout, as far as streaming needs it.

A file is ``[u64 little-endian N][N bytes of JSON header][data]``. The header maps each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the start of the data) plus an
optional ``"__metadata__"`` string map. A tensor's bytes are at ``8 + N + begin``. The header may be
padded with trailing spaces, which is what lets :mod:`mergebench.stream.writer` compute a header from
the plan, write it first, and then stream the tensors in order.
"""

from __future__ import annotations

import json
import math
import reprlib
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of one safetensors file. ``begin``/``end`` are offsets relative to the data section.

    Relative offsets are what the Hub's header API returns without the header length; a reader adds
    ``8 + N`` once it knows N."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class FileHeader:
    """A parsed header: tensors in file order and the ``__metadata__`` map."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def data_size(self) -> int:
        """Bytes of the data section: the end of its last tensor (the section holds exactly this many)."""
        return max((t.end for t in self.tensors.values()), default=0)


def check_layout(tensors: list[TensorEntry]) -> dict[str, TensorEntry]:
    """Check that tensors tile the data section as the format requires; return them in file order.

    The safetensors specification (and its reference implementation) accepts a header only if, sorted
    by offset, each tensor starts where the previous one ends, the first at 0, and each spans exactly
    ``numel × element size`` bytes: no gaps, no overlaps, no two tensors aliasing the same bytes (a merge
    of aliased tensors would silently read one tensor's weights as another's). The file must then end
    exactly at the last tensor's end, which the byte sources check against the file's size.

    Raises:
        ValueError: naming the first tensor at fault and its offsets.
    """
    ordered = sorted(tensors, key=lambda t: (t.begin, t.end))
    position = 0
    for t in ordered:
        expected = t.numel * element_size(t.dtype)
        if t.end - t.begin != expected:
            raise ValueError(f"tensor '{t.name}' spans bytes [{t.begin}, {t.end}) but "
                             f"{t.dtype}{list(t.shape)} needs {expected} bytes")
        if t.begin != position:
            problem = "overlaps the previous tensor" if t.begin < position else "leaves a gap after the previous one"
            raise ValueError(f"tensor '{t.name}' starts at byte {t.begin} of the data section, where {position} "
                             f"was expected: it {problem} (offsets must be contiguous and in order)")
        position = t.end
    return {t.name: t for t in ordered}


def element_size(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def tensor_view(raw: memoryview | bytes, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor's bytes as a tensor of its stored dtype, without a copy. Read-only buffers are fine as long as
    the tensor is only read (torch warns that it cannot protect them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(raw, dtype=DTYPES[dtype]).view(shape)


def header_length(prefix: bytes) -> int:
    """Decode the 8-byte little-endian header length, rejecting absurd values."""
    if len(prefix) < 8:
        raise ValueError(f"file is {len(prefix)} bytes long, shorter than the 8-byte header length")
    n: int = struct.unpack("<Q", prefix[:8])[0]
    if n == 0 or n > MAX_HEADER_BYTES:
        raise ValueError(f"header length {n} is not a valid safetensors header length")
    return n


def _no_constant(token: str) -> float:
    raise ValueError(f"header holds {token}, which JSON does not allow")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (a tensor or field given twice is ambiguous)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"header gives '{key}' twice")
        seen.add(key)
    return dict(pairs)


def _u64(value: object) -> bool:
    """An integer the format can hold (``u64``): never a bool, a float (``1.9``) or a string (``"1"``)."""
    return type(value) is int and 0 <= value < 2**64


def parse_header(raw: bytes) -> FileHeader:
    """Parse and check the JSON header (``raw`` = the N header bytes). Raises ``ValueError`` on any defect.

    As strict as the reference reader: the header is UTF-8 JSON without ``NaN``/``Infinity`` or a key given
    twice, and shapes and offsets are lists of ``u64`` integers."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique)
    except RecursionError:
        raise ValueError("header nests too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError("header is not a JSON object")
    metadata = doc.pop("__metadata__", None)
    tensors: dict[str, TensorEntry] = {}
    for name, info in doc.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise ValueError(f"tensor '{name}' has a malformed header entry: {reprlib.repr(info)}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValueError(f"tensor '{name}' has unsupported dtype {reprlib.repr(dtype)}")
        if not (isinstance(shape, list) and all(map(_u64, shape)) and isinstance(offsets, list)
                and len(offsets) == 2 and all(map(_u64, offsets))):
            raise ValueError(f"tensor '{name}' has negative or non-integer offsets or shape: {reprlib.repr(info)}")
        tensors[name] = TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("__metadata__ must map strings to strings")
    return FileHeader(tensors=check_layout(list(tensors.values())), metadata=dict(metadata))


def encode_header(
    tensors: list[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Build the header bytes for tensors laid out back to back in the given order.

    Returns the full prefix (8-byte length + JSON padded with spaces to a multiple of 8, as the reference
    writer aligns data). Tensors then follow back to back in the given order.
    """
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in tensors:
        size = math.prod(shape) * element_size(dtype)
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    body = json.dumps(doc, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body
