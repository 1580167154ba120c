"""Fuzzed safetensors files: header parsing and layout checks, read from disk and as served by the loopback Hub.

Cases are noise, headers built from parts (a valid layout, then dtypes, shapes, offsets, metadata, the length
prefix or the data size perturbed; keys repeated; JSON tokens Python reads but the format forbids) and
edited real files. Properties:

* ``parse_header``/``header_length`` raise ``ValueError`` only (their documented contract);
* a local file gives a header or a :class:`CorruptFileError` with a hint, and the same bytes served by the
  Hub give the same header or the same kind of error (never a network error: the server is healthy);
  ``mergebench plan`` on a model of that file exits 1 with ``Error:`` and ``Hint:``, or plans it;
* an accepted file is exactly what the safetensors specification allows: its tensors tile the data section
  in order and the file ends at the last one, and the reference reader (``safetensors.safe_open``) reads
  the same names, dtypes and shapes; a file the reference reader accepts with dtypes MergeBench supports
  is accepted too, unless a key is given twice (the reference lets the last one win; MergeBench refuses
  to guess).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save

from mergebench.errors import CorruptFileError, MergeBenchError
from mergebench.hub.models import read_local_header, resolve
from mergebench.hub.refs import Ref
from mergebench.stream.format import DTYPES, FileHeader, element_size, header_length, parse_header
from tests.fuzz._checks import CLI_SAMPLE, FuzzHub, check_cli_error, deadline, outcome, run_cli
from tests.fuzz.strategies import JSON_TOKENS, Obj, documents, encoded, render, text_edits

NAMES = st.sampled_from(["a", "b", "model.layers.0.mlp.up_proj.weight", "__metadata__", ""]) | st.text(max_size=6)
DTYPE_NAMES = st.sampled_from(sorted(DTYPES)) | st.sampled_from(["F8_E4M3", "U16", "C64", "f32", ""])
SHAPES = st.lists(st.integers(0, 4), max_size=3)
ODD_VALUES = documents("json", max_leaves=3)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, int]:
    """A header's JSON bytes and the data size its tensors describe (before any perturbation)."""
    pairs: list[tuple[object, object]] = []
    offset = 0
    for name in draw(st.lists(NAMES, max_size=4)):
        dtype, shape = draw(DTYPE_NAMES), draw(SHAPES)
        size = math.prod(shape) * (element_size(dtype) if dtype in DTYPES else 4)
        entry: dict[str, object] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
        if draw(st.integers(0, 3)) == 0:  # perturb one field of this entry
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(
                ODD_VALUES | st.lists(st.integers(-(2**65), 2**65), max_size=3))
        if draw(st.integers(0, 9)) == 0:
            del entry[draw(st.sampled_from(sorted(entry)))]
        pairs.append((name, Obj(tuple(entry.items()))))
    if draw(st.booleans()):
        metadata = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2) | ODD_VALUES)
        pairs.insert(draw(st.integers(0, len(pairs))), ("__metadata__", metadata))
    text = render(Obj(tuple((k, _tree(v)) for k, v in pairs)), "json")
    if draw(st.integers(0, 4)) == 0:
        text = draw(text_edits(text, JSON_TOKENS))
    if draw(st.booleans()):
        text = draw(st.sampled_from(["", " ", "\n", "\t"])) + text + " " * draw(st.integers(0, 8))
    return encoded(text), offset


def _tree(value: object) -> object:
    if isinstance(value, dict):
        return Obj(tuple((k, _tree(v)) for k, v in value.items()))
    if isinstance(value, list):
        return [_tree(v) for v in value]
    return value


@st.composite
def built_files(draw: st.DrawFn) -> bytes:
    """Length prefix + header + data section, each possibly off."""
    header, data_size = draw(headers())
    n = draw(st.sampled_from([len(header)] * 6 + [0, 1, 2**63, 100_000_001]) | st.integers(0, len(header) + 16))
    data = bytes(max(0, data_size + draw(st.sampled_from([0] * 6 + [-1, 1, 8]) | st.integers(-8, 8))))
    return struct.pack("<Q", n) + header + data


@st.composite
def edited_real_files(draw: st.DrawFn) -> bytes:
    """A file written by the reference writer, with bytes overwritten, cut or added."""
    tensors = {f"t{i}": torch.zeros(shape, dtype=dtype) for i, (shape, dtype) in enumerate(draw(st.lists(
        st.tuples(st.lists(st.integers(0, 3), max_size=2), st.sampled_from([torch.float32, torch.bfloat16,
                                                                            torch.int8])), max_size=3)))}
    raw = bytearray(save(tensors, metadata={"format": "pt"}))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(["overwrite", "cut", "append"]))
        if kind == "overwrite" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[at:]
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


def _file(header: bytes, data_size: int) -> bytes:
    return struct.pack("<Q", len(header)) + header + bytes(data_size)


FILES = st.one_of(st.binary(max_size=64), built_files(), built_files(), edited_real_files())


def _reference(path: Path) -> dict[str, tuple[str, list[int]]] | None:
    """Names → (dtype, shape) as the reference reader sees the file, or None if it refuses it."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: _ref_entry(f.get_slice(k)) for k in f.keys()}  # noqa: SIM118  # safe_open has no __iter__
    except Exception:  # the reference reader's errors are not ours to classify
        return None


def _ref_entry(view: object) -> tuple[str, list[int]]:
    return str(view.get_dtype()), list(view.get_shape())  # type: ignore[attr-defined]


def _check_accepted(header: FileHeader, path: Path) -> None:
    position = 0
    for t in header.tensors.values():  # file order = offset order
        assert (t.begin, t.nbytes) == (position, t.numel * element_size(t.dtype)), t
        position = t.end
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert path.stat().st_size == 8 + n + header.data_size
    reference = _reference(path)
    assert reference is not None, "MergeBench accepted a file the reference reader refuses"
    assert reference == {k: (t.dtype, list(t.shape)) for k, t in header.tensors.items()}


def _contract(raw: bytes) -> None:
    """``header_length`` and ``parse_header`` raise ``ValueError`` and nothing else."""
    with deadline(), contextlib.suppress(ValueError):
        parse_header(raw[8: 8 + header_length(raw[:8])])


_case = itertools.count()


@pytest.mark.fuzz
@given(FILES, CLI_SAMPLE)
@example(_file(b'{"a":{"dtype":"F32","shape":[Infinity],"data_offsets":[0,4]}}', 4), 0)  # OverflowError
@example(_file(b'{"a":{"dtype":[],"shape":[1],"data_offsets":[0,4]}}', 4), 0)  # TypeError: unhashable dtype
@example(_file(b"[" * 100_000 + b"]" * 100_000, 0), 0)  # RecursionError
@example(_file(b'{"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}', 4), 1)  # shape "1" read as [1]
@example(_file(b'{"a":{"dtype":"F32","shape":[1.9],"data_offsets":[0,4]}}', 4), 1)  # shape 1.9 read as 1
@example(_file(b'{"a":{"dtype":null,"shape":[0]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4),
         1)  # a tensor given twice: the last one won, and the first, malformed, went unchecked
@example(_file(b'{"__metadata__":[],"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4), 1)  # [] read as {}
def test_safetensors_files(fuzz_hub: FuzzHub, raw: bytes, sample: int) -> None:
    """Every case from disk; one in ten (``sample == 0``) also served by the Hub and through ``mergebench plan``
    on a recipe whose base and expert are the fuzzed model."""
    _contract(raw)
    repo = f"fuzz/m{next(_case)}"
    folder = fuzz_hub.root / "models" / repo
    folder.mkdir(parents=True)
    path = folder / "model.safetensors"
    path.write_bytes(raw)
    local = outcome(lambda: read_local_header(path, model="fuzz"))
    if isinstance(local, FileHeader):
        _check_accepted(local, path)
    else:
        assert isinstance(local, CorruptFileError), local
        reference = _reference(path)
        dtypes = {d for d, _ in (reference or {}).values()}
        stricter = "twice" in str(local)  # a key given twice: the reference reader lets the last one win
        assert reference is None or not dtypes <= set(DTYPES) or stricter, f"the reference reader accepts it: {local}"
    if sample == 0:
        served = outcome(lambda: resolve(Ref.parse(repo)))
        if isinstance(local, FileHeader):
            assert not isinstance(served, MergeBenchError), served
            assert served.files["model.safetensors"] == local
        else:  # the same verdict, never a network error: the server is healthy
            assert isinstance(served, CorruptFileError), f"local: {local!r}; served: {served!r}"
        (folder / "recipe.yaml").write_text("method: task_arithmetic\nbase_model: ./\nmodels: [{model: ./}]\n")
        run = run_cli(["plan", "recipe.yaml"], cwd=folder)
        if run.code != 0 or not isinstance(local, FileHeader):  # an accepted file may still not plan (no tensors)
            check_cli_error(run)
    shutil.rmtree(folder)
