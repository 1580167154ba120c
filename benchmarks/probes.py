"""Issue #22 probe campaign: bad inputs, kills, network faults, hostile programs and secrets, run as a user would.

Run (from the repository root, with the project's venv)::

    .venv/bin/python benchmarks/probes.py                 # every category, prints a table
    .venv/bin/python benchmarks/probes.py --only kills    # one category (bad_inputs, kills, network, hostile, secrets)
    .venv/bin/python benchmarks/probes.py --write         # also rewrites the probes section of benchmarks/RESULTS.md

Every probe builds its own tiny inputs in a temporary folder and runs the real ``mergebench`` CLI, the real
loopback Hub server (``mergebench hub serve``) or a small driver process calling
``mergebench.eval.sandbox.run_program`` as whole subprocesses, each under a hard timeout: a hang is a failure
category, never a hung campaign. What counts as **handled**:

* **bad inputs**: exit code 1 (2 for usage errors) with an ``Error:`` (or usage) line on stderr, no
  ``Traceback``, no output folder and no ``.NAME.partial`` left, input files unchanged. A valid-but-edge input
  (zero weights, a negative scaling, a 1-byte shard size, ...) is handled when it exits 0 with tensors equal,
  to within one bf16 rounding, to an independent torch computation; "either" probes accept both.
* **kills**: ``kill -9`` of a merge (local and through the loopback Hub; task_arithmetic, global-top-k TIES,
  DARE) at a seeded random moment after its ``.partial`` folder appeared, then ``--resume`` exits 0 with shards
  byte-identical to a fresh, uninterrupted merge and no ``.partial`` left.
* **network faults**: a Hub merge under one armed fault either exits 0 with shards byte-identical to the local
  merge of the same models, or exits 1 with an ``Error:`` line within the time bound, leaving nothing but its
  resumable ``.NAME.partial`` (progress file + a ``--resume`` hint, as documented); the Hub cache
  (``HF_HOME``) holds no model file afterwards.
* **hostile programs**: the sandbox status is not ``passed`` for every program that does not legitimately
  pass (all of them end with a failing ``assert``), benign programs pass, the fake token never shows in the
  result, the driver survives with bounded RSS, no process of the program survives, nothing is written
  outside the sandbox and no connection reaches a loopback listener.
* **secrets**: with ``HF_TOKEN=hf_probeSecret...`` (and a token file in ``HOME``), the token appears in no
  stdout/stderr, no file written (outputs, ``.partial``, the pushed repo on the Hub server, caches), no log.

Failures are broken down as: wrong result with exit 0, traceback instead of an Error line, hang, forged
pass, leaked secret, partial output left behind, unclean error (wrong exit code or no ``Error:`` line),
sandbox escape (surviving process, file written outside, connection made, driver killed or bloated), other.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from tests.engine._build import base_tensors, expert_tensors, write_model  # noqa: E402

MERGEBENCH = str(Path(sys.executable).with_name("mergebench"))
if not Path(MERGEBENCH).exists():
    MERGEBENCH = str(REPO / ".venv" / "bin" / "mergebench")
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- probes:begin -->", "<!-- probes:end -->"
CATEGORIES = ("bad_inputs", "kills", "network", "hostile", "secrets")

Verdict = Literal["handled", "wrong_exit0", "traceback", "hang", "forged_pass", "leaked_secret", "partial_left",
                  "unclean_error", "escape", "other"]
FAILURE_LABELS: dict[str, str] = {
    "wrong_exit0": "wrong result, exit 0", "traceback": "traceback", "hang": "hang", "forged_pass": "forged pass",
    "leaked_secret": "leaked secret", "partial_left": "partial left", "unclean_error": "unclean error",
    "escape": "sandbox escape", "other": "other",
}


# --- the probe model ------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one probe observed: ``verdict`` is ``handled`` or a failure kind; ``detail`` says what happened."""

    verdict: Verdict
    detail: str = ""
    command: str = ""
    expected: str = ""
    seconds: float = 0.0

    @property
    def handled(self) -> bool:
        return self.verdict == "handled"


@dataclass
class Probe:
    category: str
    name: str
    run: Callable[[], Outcome]
    expected: str = ""


@dataclass
class Run:
    """One finished (or killed) subprocess."""

    cmd: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    @property
    def shown(self) -> str:
        return " ".join(self.cmd).replace(MERGEBENCH, "mergebench")


def run_cmd(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float, stdin: str | None = None) -> Run:
    """Run ``cmd`` in its own process group; on timeout the whole group is killed (the probe then says hang)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(stdin.encode() if stdin is not None else None, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc.pid)
        out, err = proc.communicate()
    return Run(cmd, proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
               time.monotonic() - start, timed_out)


def kill_group(pid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without tokens or Hub settings, with a private HOME and Hub cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING", "MERGEBENCH_")) and "TOKEN" not in k}
    env.update(HOME=str(home), HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_UPDATE_CHECK="1", MERGEBENCH_CACHE=str(home / "mbcache"), COLUMNS="200",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def hub_env(url: str, home: Path, token: str | None = None, **extra: str) -> dict[str, str]:
    env = base_env(home, HF_ENDPOINT=url, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", **extra)
    if token:
        env["HF_TOKEN"] = token
    return env


def has_error_line(stderr: str) -> bool:
    return bool(re.search(r"^\s*(Error:|Usage:)|│\s*Error|─ Error ─", stderr, re.MULTILINE))


def leftovers(out: Path) -> list[str]:
    """The output folder and any ``.NAME.partial`` next to it."""
    found = [str(p.name) for p in out.parent.glob(f".{out.name}*.partial")]
    if out.exists():
        found.append(out.name)
    return found


def kept_for_resume(out: Path, stderr: str) -> bool:
    """Whether what a failed merge left is only its resumable work folder, as documented for network failures:
    ``.NAME.partial`` with its progress file (verified shards), no output folder, and a hint to ``--resume``."""
    partial = out.parent / f".{out.name}.partial"
    return (not out.exists() and leftovers(out) == [partial.name]
            and (partial / ".mergebench_progress.json").is_file() and "--resume" in stderr)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def shard_digest(folder: Path) -> dict[str, str]:
    """Digests of the tensor files (and index) of a merge output: what must be byte-identical."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors*"))}


def load_dir(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def clean_error(run: Run, out: Path | None, *, inputs: tuple[Path, dict[str, str]] | None = None,
                preexisting: bool = False) -> Outcome:
    """Classify a run that must fail cleanly."""
    o = Outcome("handled", command=run.shown, seconds=run.seconds)
    if run.timed_out:
        o.verdict, o.detail = "hang", f"no exit within {run.seconds:.0f}s"
    elif "Traceback" in run.stderr or "Traceback" in run.stdout:
        o.verdict, o.detail = "traceback", last_lines(run.stderr)
    elif run.rc == 0:
        o.verdict, o.detail = "wrong_exit0", "exit 0 (" + last_lines(run.stdout + run.stderr, 1) + ")"
    elif run.rc not in (1, 2) or not has_error_line(run.stderr):
        o.verdict, o.detail = "unclean_error", f"exit {run.rc}, stderr: {last_lines(run.stderr)}"
    elif out is not None and (left := [x for x in leftovers(out) if preexisting is False or x.endswith(".partial")]):
        o.verdict, o.detail = "partial_left", f"left behind: {left}"
    elif inputs is not None and tree_digest(inputs[0]) != inputs[1]:
        o.verdict, o.detail = "other", "an input file was modified"
    else:
        o.detail = first_error(run.stderr)
    return o


def last_lines(text: str, n: int = 2) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])[:400]


def first_error(text: str) -> str:
    lines = text.splitlines()
    for line in [x for x in lines if x.lstrip().startswith("Error:")] + [x for x in lines if "Error" in x]:
        return line.strip()[:200]
    return last_lines(text, 1)


# --- inputs ---------------------------------------------------------------------------------------------------

def llama_tensors(hidden: int, layers: int, inter: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g) * 0.02}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q", "k", "v", "o"):
            t[p + f"self_attn.{name}_proj.weight"] = torch.randn(hidden, hidden, generator=g) * 0.02
        t[p + "mlp.gate_proj.weight"] = torch.randn(inter, hidden, generator=g) * 0.02
        t[p + "mlp.up_proj.weight"] = torch.randn(inter, hidden, generator=g) * 0.02
        t[p + "mlp.down_proj.weight"] = torch.randn(hidden, inter, generator=g) * 0.02
        t[p + "input_layernorm.weight"] = torch.ones(hidden)
        t[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
    t["model.norm.weight"] = torch.ones(hidden)
    t["lm_head.weight"] = torch.randn(vocab, hidden, generator=g) * 0.02
    return t


def build_llama_family(root: Path, *, hidden: int, layers: int, inter: int, vocab: int, experts: int,
                       shards: int) -> list[Path]:
    """A base and ``experts`` fine-tunes (base + 0.002·N(0,1)), bf16; returns [base, e0, e1, ...]."""
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 64),
              "vocab_size": vocab}
    base = llama_tensors(hidden, layers, inter, vocab, seed=0)
    folders = [write_model(root / "base", base, shards=shards, config=config)]
    for i in range(experts):
        g = torch.Generator().manual_seed(100 + i)
        tuned = {k: v + 0.002 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        folders.append(write_model(root / f"e{i}", tuned, shards=shards, config=config))
    return folders


def place_on_hub(folders: list[Path], hub_root: Path, org: str) -> list[str]:
    ids = []
    for folder in folders:
        dst = hub_root / "models" / org / folder.name
        dst.mkdir(parents=True, exist_ok=True)
        for src in folder.iterdir():
            if not (dst / src.name).exists():
                os.link(src, dst / src.name)
        ids.append(f"{org}/{folder.name}")
    return ids


def recipe_text(method: str, base: str, models: list[str], **extra: object) -> str:
    data = {"method": method, "base_model": base, "models": [{"model": m} for m in models], **extra}
    return yaml.safe_dump(data, sort_keys=False)


class HubServer:
    """``mergebench hub serve ROOT --port 0 OPTIONS`` in a subprocess; its stderr is kept in ``log``."""

    def __init__(self, root: Path, *options: str, home: Path, env: dict[str, str] | None = None) -> None:
        self.cmd = [MERGEBENCH, "-v", "hub", "serve", str(root), "--port", "0", *options]
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     env=env or base_env(home), start_new_session=True, text=True)
        self.log: list[str] = []
        self.url = ""
        deadline = time.monotonic() + 30
        assert self.proc.stderr is not None
        while not self.url and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            if m := re.search(r"export HF_ENDPOINT=(http://\S+)", line):
                self.url = m.group(1)
        if not self.url:
            self.stop()
            raise RuntimeError("the loopback Hub did not start: " + "".join(self.log))
        stderr = self.proc.stderr
        threading.Thread(target=lambda: [self.log.append(x) for x in stderr], daemon=True).start()

    def stop(self) -> None:
        kill_group(self.proc.pid)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- 1. bad inputs ----------------------------------------------------------------------------------------------

Expect = Literal["error", "ok", "either"]
Reference = Callable[[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]]
NON_MERGED = ("model.embed_tokens.weight", "lm_head.weight")


def ta_reference(scaling: float = 1.0, weights: list[float] | None = None, merge_embeddings: bool = False,
                 soup: bool = False) -> Reference:
    """Task Arithmetic θ₀ + λ Σ wᵢ τᵢ (Model Soup: weights normalised to sum 1), in float64."""
    def ref(base: dict[str, torch.Tensor], experts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        w = weights or [1.0] * len(experts)
        if soup:
            w = [x / sum(w) for x in w]
        out = {}
        for k, b in base.items():
            if k in NON_MERGED and not merge_embeddings:
                out[k] = b
            else:
                b64 = b.double()
                out[k] = b64 + scaling * sum(wi * (e[k].double() - b64) for wi, e in zip(w, experts, strict=True))
        return out
    return ref


@dataclass
class Invocation:
    args: list[str]
    out: str | None = "out"
    env: dict[str, str] = field(default_factory=dict)
    preexisting_out: bool = False
    inputs: list[str] = field(default_factory=lambda: ["base", "e0", "e1"])  # reference inputs (folder names)


Setup = Callable[[Path], Invocation]


def merge_args(recipe: str = "recipe.yaml", out: str = "out", *extra: str) -> list[str]:
    return ["merge", recipe, "--out", out, *extra]


def with_recipe(text: str, *extra: str, out: str = "out", inputs: list[str] | None = None) -> Setup:
    def setup(work: Path) -> Invocation:
        (work / "recipe.yaml").write_text(text)
        inv = Invocation(merge_args("recipe.yaml", out, *extra), out=out)
        if inputs:
            inv.inputs = inputs
        return inv
    return setup


def ta(**extra: object) -> str:
    return recipe_text(extra.pop("method", "task_arithmetic"), "./base", ["./e0", "./e1"], **extra)  # type: ignore[arg-type]


def raw(body: str) -> str:
    return f"method: task_arithmetic\nbase_model: ./base\nmodels: [{{model: ./e0}}, {{model: ./e1}}]\n{body}\n"


def then(edit: Callable[[Path], object], text: str | None = None, *extra: str) -> Setup:
    """Edit the copied inputs, then merge the default recipe (or ``text``)."""
    def setup(work: Path) -> Invocation:
        edit(work)
        (work / "recipe.yaml").write_text(text or ta())
        return Invocation(merge_args("recipe.yaml", "out", *extra))
    return setup


def rewrite_header(path: Path, edit: Callable[[dict], object]) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + data[8 + n:])


def by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def alias(header: dict) -> None:
    names = by_offset(header)
    for a, b in itertools.pairwise(names):
        if header[a]["shape"] == header[b]["shape"]:
            header[b]["data_offsets"] = list(header[a]["data_offsets"])
            return


def overlap(header: dict) -> None:
    b = by_offset(header)[1]
    start, end = header[b]["data_offsets"]
    header[b]["data_offsets"] = [start - 2, end - 2]


def gap(header: dict) -> None:
    for k in by_offset(header)[1:]:
        s, e = header[k]["data_offsets"]
        header[k]["data_offsets"] = [s + 16, e + 16]


def set_field(name_part: str, key: str, value: object) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        for k in header:
            if name_part in k:
                header[k][key] = value
                return
    return edit


def shard(work: Path, model: str = "e1") -> Path:
    return work / model / "model.safetensors"


def truncate(fraction: float) -> Callable[[Path], None]:
    def edit(work: Path) -> None:
        p = shard(work)
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * fraction)])
    return edit


def raw_header(length: int, body: bytes = b"") -> Callable[[Path], None]:
    def edit(work: Path) -> None:
        shard(work).write_bytes(struct.pack("<Q", length) + body)
    return edit


def poke_tensor(value: float) -> Callable[[Path], None]:
    def edit(work: Path) -> None:
        t = load_file(shard(work))
        k = "model.layers.0.self_attn.q_proj.weight"
        t[k] = t[k].clone()
        t[k][0, 0] = value
        save_file(t, shard(work), metadata={"format": "pt"})
    return edit


def reshape_tensor(work: Path) -> None:
    t = load_file(shard(work))
    t["model.layers.1.mlp.up_proj.weight"] = torch.zeros(16, 9, dtype=torch.bfloat16)
    save_file(t, shard(work), metadata={"format": "pt"})


def drop_tensor(work: Path) -> None:
    t = load_file(shard(work))
    del t["model.layers.1.mlp.up_proj.weight"]
    save_file(t, shard(work), metadata={"format": "pt"})


def extra_tensor(work: Path) -> None:
    t = load_file(shard(work))
    t["model.layers.9.extra.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
    save_file(t, shard(work), metadata={"format": "pt"})


def as_float32(work: Path) -> None:
    t = load_file(shard(work))
    save_file({k: v.float() for k, v in t.items()}, shard(work), metadata={"format": "pt"})


def write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def edit(work: Path) -> None:
        p = work / rel
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return edit


def remove(rel: str) -> Callable[[Path], None]:
    return lambda work: (work / rel).unlink()


def sharded(edit: Callable[[Path], object]) -> Callable[[Path], None]:
    """Use the 2-shard copy of the family (``base2``, ``e02``, ``e12``) for index probes."""
    def setup(work: Path) -> None:
        for name in ("base", "e0", "e1"):
            shutil.rmtree(work / name)
            shutil.copytree(work / f"{name}_sharded", work / name)
        edit(work)
    return setup


def index_edit(fn: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(work: Path) -> None:
        p = work / "e1" / "model.safetensors.index.json"
        data = json.loads(p.read_text())
        fn(data)
        p.write_text(json.dumps(data))
    return edit


def out_is(kind: str) -> Setup:
    def setup(work: Path) -> Invocation:
        (work / "recipe.yaml").write_text(ta())
        if kind == "file":
            (work / "out").write_text("precious")
            return Invocation(merge_args(), preexisting_out=True)
        if kind == "nonempty":
            (work / "out").mkdir()
            (work / "out" / "notes.txt").write_text("precious")
            return Invocation(merge_args(), preexisting_out=True)
        if kind == "dot":
            return Invocation(merge_args("recipe.yaml", "."), out=None)
        if kind == "base":
            return Invocation(merge_args("recipe.yaml", "base"), out="base", preexisting_out=True)
        raise ValueError(kind)
    return setup


def recipe_file(kind: str) -> Setup:
    def setup(work: Path) -> Invocation:
        p = work / "recipe.yaml"
        if kind == "folder":
            p.mkdir()
        elif kind == "binary":
            p.write_bytes(bytes(range(256)) * 4)
        elif kind == "empty":
            p.write_text("")
        elif kind == "list":
            p.write_text("- method: ties\n- base_model: ./base\n")
        elif kind == "scalar":
            p.write_text("just a string\n")
        elif kind == "nul":
            p.write_bytes(ta().encode() + b"\x00")
        elif kind == "bad_yaml":
            p.write_text("method: [ties\nbase_model: ./base\n")
        elif kind == "bomb":
            lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
            lines += [f"{c}: &{c} [*{p_},*{p_},*{p_},*{p_},*{p_},*{p_},*{p_},*{p_},*{p_}]"
                      for p_, c in zip("abcdefgh", "bcdefghi", strict=True)]
            p.write_text("\n".join(lines) + "\n" + ta().replace("method:", "parameters: {w: *i}\nmethod:", 1))
        elif kind == "missing":
            pass
        elif kind == "utf16":
            p.write_bytes(ta().encode("utf-16"))
        return Invocation(merge_args())
    return setup


def invoke(args: list[str], text: str | None = None, *, out: str | None = "out", env: dict[str, str] | None = None,
           edit: Callable[[Path], object] | None = None) -> Setup:
    """Write ``text`` as recipe.yaml (default: the Task Arithmetic recipe), apply ``edit``, run ``args``."""
    def setup(work: Path) -> Invocation:
        if edit is not None:
            edit(work)
        (work / "recipe.yaml").write_text(text if text is not None else ta())
        return Invocation(args, out=out, env=env or {})
    return setup


def bad_input_cases() -> list[tuple[str, Setup, Expect, Reference | None]]:
    """(name, setup, expectation, reference for exit-0 outcomes)."""
    error: Expect = "error"
    either: Expect = "either"
    ok: Expect = "ok"
    return [
        # recipe numbers
        ("scaling_nan", with_recipe(raw("parameters: {scaling: .nan}")), error, None),
        ("scaling_inf", with_recipe(raw("parameters: {scaling: .inf}")), error, None),
        ("scaling_neg_inf", with_recipe(raw("parameters: {scaling: -.inf}")), error, None),
        ("scaling_1e39_string", with_recipe(raw("parameters: {scaling: 1e39}")), error, None),
        ("scaling_1.0e+39", with_recipe(raw("parameters: {scaling: 1.0e+39}")), error, None),
        ("scaling_1e308_overflows", with_recipe(raw("parameters: {scaling: 1.0e+308}")), error, None),
        ("scaling_1e30_float16_overflows", with_recipe(raw("parameters: {scaling: 1.0e+30}\ndtype: float16")),
         error, None),
        ("scaling_negative", with_recipe(raw("parameters: {scaling: -1.5}")), either, ta_reference(-1.5)),
        ("scaling_zero", with_recipe(raw("parameters: {scaling: 0}")), either, ta_reference(0.0)),
        ("scaling_string", with_recipe(raw("parameters: {scaling: lots}")), error, None),
        ("scaling_list", with_recipe(raw("parameters: {scaling: [1, 2]}")), error, None),
        ("scaling_bool", with_recipe(raw("parameters: {scaling: true}")), either, ta_reference(1.0)),
        ("scaling_null", with_recipe(raw("parameters: {scaling: null}")), either, ta_reference(1.0)),
        ("ties_top_k_1.5", with_recipe(ta(method="ties", parameters={"top_k": 1.5})), error, None),
        ("ties_top_k_negative", with_recipe(ta(method="ties", parameters={"top_k": -0.1})), error, None),
        ("ties_top_k_nan", with_recipe(raw("parameters: {top_k: .nan}").replace("task_arithmetic", "ties")),
         error, None),
        ("ties_bad_aggregate", with_recipe(ta(method="ties", parameters={"aggregate": "median!"})), error, None),
        ("ties_bad_topk_scope", with_recipe(ta(method="ties", parameters={"topk_scope": "galactic"})), error, None),
        ("dare_drop_rate_1", with_recipe(ta(method="dare", parameters={"drop_rate": 1.0})), either,
         ta_reference(0.0)),
        ("dare_drop_rate_0", with_recipe(ta(method="dare", parameters={"drop_rate": 0.0})), either, ta_reference()),
        ("dare_drop_rate_1.5", with_recipe(ta(method="dare", parameters={"drop_rate": 1.5})), error, None),
        ("dare_drop_rate_negative", with_recipe(ta(method="dare", parameters={"drop_rate": -0.5})), error, None),
        ("dare_seed_2^70", with_recipe(ta(method="dare", parameters={"seed": 2**70})), either, None),
        ("consensus_k_string", with_recipe(ta(method="consensus", parameters={"k": "two"})), error, None),
        ("consensus_k_negative", with_recipe(ta(method="consensus", parameters={"k": -1})), error, None),
        ("recipe_seed_string", with_recipe(ta(seed="abc")), error, None),
        ("weight_nan_per_model", with_recipe(
            "method: task_arithmetic\nbase_model: ./base\nmodels: [{model: ./e0, weight: .nan}, "
            "{model: ./e1, weight: 1}]\n"), error, None),
        ("weights_length_mismatch", with_recipe(ta(parameters={"weights": [1.0]})), error, None),
        ("weights_and_per_model_weight", with_recipe(
            "method: task_arithmetic\nbase_model: ./base\nmodels: [{model: ./e0, weight: 1}, "
            "{model: ./e1, weight: 1}]\nparameters: {weights: [1, 1]}\n"), error, None),
        ("weights_zero_task_arithmetic", with_recipe(ta(parameters={"weights": [0, 0]})), either,
         ta_reference(weights=[0.0, 0.0])),
        ("weights_negative_task_arithmetic", with_recipe(ta(parameters={"weights": [-1, 0.5]})), either,
         ta_reference(weights=[-1.0, 0.5])),
        ("weights_zero_model_soup", with_recipe(ta(method="model_soup", parameters={"weights": [0, 0]})),
         error, None),
        ("weights_cancel_model_soup", with_recipe(ta(method="model_soup", parameters={"weights": [1, -1]})),
         error, None),
        ("weights_huge_model_soup", with_recipe(ta(method="model_soup", parameters={"weights": [1e308, 1e308]})),
         either, ta_reference(soup=True)),
        # recipe structure
        ("duplicate_key_method", with_recipe(raw("method: ties")), error, None),
        ("duplicate_param_key", with_recipe(raw("parameters: {scaling: 0.5, scaling: 2}")), error, None),
        ("unknown_method", with_recipe(ta(method="tie")), error, None),
        ("unknown_parameter", with_recipe(ta(parameters={"scalling": 0.5})), error, None),
        ("unknown_top_level_key", with_recipe(raw("methd: ties")), error, None),
        ("unknown_model_key", with_recipe(
            "method: task_arithmetic\nbase_model: ./base\nmodels: [{model: ./e0, wieght: 1}]\n"), error, None),
        ("models_empty", with_recipe("method: task_arithmetic\nbase_model: ./base\nmodels: []\n"), error, None),
        ("models_missing", with_recipe("method: task_arithmetic\nbase_model: ./base\n"), error, None),
        ("base_missing", with_recipe("method: task_arithmetic\nmodels: [{model: ./e0}]\n"), error, None),
        ("models_not_a_list", with_recipe("method: task_arithmetic\nbase_model: ./base\nmodels: ./e0\n"),
         error, None),
        ("bad_dtype_name", with_recipe(raw("dtype: float7")), error, None),
        ("merge_embeddings_maybe", with_recipe(raw("merge_embeddings: maybe")), error, None),
        ("merge_embeddings_true", with_recipe(raw("merge_embeddings: true")), ok,
         ta_reference(merge_embeddings=True)),
        ("dtype_float32_output", with_recipe(raw("dtype: float32")), ok, ta_reference()),
        ("single_expert", with_recipe(recipe_text("task_arithmetic", "./base", ["./e0"]), inputs=["base", "e0"]), ok,
         ta_reference()),
        ("base_listed_as_expert", with_recipe(recipe_text("task_arithmetic", "./base", ["./base", "./e1"]),
                                              inputs=["base", "base", "e1"]), either, ta_reference()),
        ("same_expert_twice", with_recipe(recipe_text("task_arithmetic", "./base", ["./e0", "./e0"]),
                                          inputs=["base", "e0", "e0"]), either, ta_reference()),
        ("regmean_without_data", with_recipe(ta(method="regmean")), error, None),
        ("localize_stitch_missing_jsonl", with_recipe(
            ta(method="localize_stitch", parameters={"mode": "trained"}, data={"math": "./nope.jsonl"})
            .replace("- model: ./e0", "- model: ./e0\n  domain: math")), error, None),
        ("tokenizer_source_missing", with_recipe(raw("tokenizer_source: ./nowhere")), error, None),
        # recipe file
        ("recipe_is_folder", recipe_file("folder"), error, None),
        ("recipe_is_binary", recipe_file("binary"), error, None),
        ("recipe_is_empty", recipe_file("empty"), error, None),
        ("recipe_is_list", recipe_file("list"), error, None),
        ("recipe_is_scalar", recipe_file("scalar"), error, None),
        ("recipe_has_nul", recipe_file("nul"), error, None),
        ("recipe_bad_yaml", recipe_file("bad_yaml"), error, None),
        ("recipe_billion_laughs", recipe_file("bomb"), error, None),
        ("recipe_missing", recipe_file("missing"), error, None),
        ("recipe_utf16", recipe_file("utf16"), error, None),
        # model folders
        ("base_folder_missing", with_recipe(recipe_text("task_arithmetic", "./nope", ["./e0"])), error, None),
        ("expert_folder_missing", with_recipe(recipe_text("task_arithmetic", "./base", ["./e0", "./gone"])),
         error, None),
        ("model_is_a_file", with_recipe(recipe_text("task_arithmetic", "./base", ["./recipe.yaml"])), error, None),
        ("empty_model_folder", then(lambda w: (w / "empty").mkdir(),
                                    recipe_text("task_arithmetic", "./base", ["./empty"])), error, None),
        ("local_path_with_revision", with_recipe(recipe_text("task_arithmetic", "./base", ["./e0@main"])),
         error, None),
        ("hub_unreachable", invoke(merge_args(), recipe_text("task_arithmetic", "org/base", ["org/e"]),
                                    env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}), error, None),
        ("config_json_broken", then(write("e1/config.json", "{broken")), error, None),
        ("config_json_missing", then(remove("e1/config.json")), either, ta_reference()),
        ("config_json_is_list", then(write("e1/config.json", "[1, 2]")), error, None),
        ("config_json_other_arch", then(write("e1/config.json", json.dumps(
            {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))), error, None),
        ("index_json_broken", then(sharded(write("e1/model.safetensors.index.json", "[1, 2"))), error, None),
        ("index_weight_map_not_dict", then(sharded(write("e1/model.safetensors.index.json",
                                                         '{"weight_map": 3}'))), error, None),
        ("index_names_missing_shard", then(sharded(index_edit(lambda d: d["weight_map"].update(
            {k: "model-00009-of-00009.safetensors" for k in list(d["weight_map"])[:1]})))), error, None),
        ("index_names_wrong_shard", then(sharded(index_edit(lambda d: d["weight_map"].update(
            {k: ("model-00002-of-00002.safetensors" if v.startswith("model-00001") else
                 "model-00001-of-00002.safetensors") for k, v in list(d["weight_map"].items())[:1]})))), error,
         ta_reference()),
        ("index_path_traversal", then(sharded(index_edit(lambda d: d["weight_map"].update(
            {k: "../../e0/model-00001-of-00002.safetensors" for k in list(d["weight_map"])[:1]})))), error, None),
        ("shard_truncated_half", then(truncate(0.5)), error, None),
        ("shard_truncated_in_header", then(truncate(0.01)), error, None),
        ("shard_zero_bytes", then(write("e1/model.safetensors", b"")), error, None),
        ("header_length_absurd", then(raw_header(2**62)), error, None),
        ("header_length_past_eof", then(raw_header(10_000, b"{}")), error, None),
        ("header_not_json", then(raw_header(8, b"notjson!")), error, None),
        ("header_is_json_list", then(raw_header(8, b"[1,2,3] ")), error, None),
        ("header_offsets_aliased", then(lambda w: rewrite_header(shard(w), alias)), error, None),
        ("header_offsets_overlap", then(lambda w: rewrite_header(shard(w), overlap)), error, None),
        ("header_offsets_gap", then(lambda w: rewrite_header(shard(w), gap)), error, None),
        ("header_trailing_bytes", then(lambda w: shard(w).write_bytes(shard(w).read_bytes() + b"\0" * 64)),
         error, None),
        ("header_bad_dtype", then(lambda w: rewrite_header(shard(w), set_field("q_proj", "dtype", "F7"))),
         error, None),
        ("header_shape_vs_offsets", then(lambda w: rewrite_header(shard(w), set_field("q_proj", "shape", [8, 9]))),
         error, None),
        ("header_negative_shape", then(lambda w: rewrite_header(shard(w), set_field("q_proj", "shape", [-8, -8]))),
         error, None),
        ("shape_mismatch_between_experts", then(reshape_tensor), error, None),
        ("tensor_missing_in_expert", then(drop_tensor), error, None),
        ("extra_tensor_in_expert", then(extra_tensor), error, None),
        ("expert_in_float32", then(as_float32), error, None),
        ("nan_inside_input_tensor", then(poke_tensor(float("nan"))), error, None),
        ("inf_inside_input_tensor", then(poke_tensor(float("inf"))), error, None),
        # command line
        ("out_is_a_file", out_is("file"), error, None),
        ("out_is_dot", out_is("dot"), error, None),
        ("out_nonempty_folder", out_is("nonempty"), error, None),
        ("out_is_an_input_folder", out_is("base"), error, None),
        ("shard_size_garbage", then(lambda w: None, None, "--shard-size", "lots"), error, None),
        ("shard_size_zero", then(lambda w: None, None, "--shard-size", "0"), error, ta_reference()),
        ("shard_size_negative", then(lambda w: None, None, "--shard-size", "-5MB"), error, None),
        ("shard_size_nan", then(lambda w: None, None, "--shard-size", "nan"), error, None),
        ("shard_size_1_byte", then(lambda w: None, None, "--shard-size", "1"), either, ta_reference()),
        ("shard_size_huge", then(lambda w: None, None, "--shard-size", "99999999TB"), ok, ta_reference()),
        ("threads_zero", then(lambda w: None, None, "--threads", "0"), either, ta_reference()),
        ("threads_negative", then(lambda w: None, None, "--threads", "-3"), error, ta_reference()),
        ("resume_without_partial", then(lambda w: None, None, "--resume"), either, ta_reference()),
        ("weights_strings", with_recipe(ta(parameters={"weights": ["a", 1]})), error, None),
        ("plan_with_nan_scaling", invoke(["plan", "recipe.yaml"], raw("parameters: {scaling: .nan}"), out=None),
         error, None),
        ("plan_truncated_shard", invoke(["plan", "recipe.yaml"], out=None, edit=truncate(0.5)), error, None),
        ("plan_shard_size_garbage", invoke(["plan", "recipe.yaml", "--shard-size", "1e999"], out=None), error, None),
    ]


def input_digest(work: Path) -> dict[str, str]:
    """Digests of the input files of a bad-input probe (not its output, HOME or hidden .partial folders)."""
    return {k: v for k, v in tree_digest(work).items() if not k.startswith(("out", "_home", "."))}


class BadInputs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pristine = root / "pristine"
        base = base_tensors()
        for name, tensors in (("base", base), ("e0", expert_tensors(base, 1)), ("e1", expert_tensors(base, 2))):
            write_model(self.pristine / name, tensors)
            write_model(self.pristine / f"{name}_sharded", tensors, shards=2)
        self.n = 0

    def probes(self) -> list[Probe]:
        return [Probe("bad_inputs", name, self._runner(name, setup, expect, ref),
                      {"error": "exit 1/2, Error line, nothing left", "ok": "exit 0, correct tensors",
                       "either": "clean error, or exit 0 with correct tensors"}[expect])
                for name, setup, expect, ref in bad_input_cases()]

    def _runner(self, name: str, setup: Setup, expect: Expect, ref: Reference | None) -> Callable[[], Outcome]:
        def run() -> Outcome:
            self.n += 1
            work = self.root / f"{self.n:03d}-{name}"
            shutil.copytree(self.pristine, work, symlinks=True)
            inv = setup(work)
            home = work / "_home"
            home.mkdir()
            inputs_snapshot = input_digest(work)
            r = run_cmd([MERGEBENCH, *inv.args], cwd=work, env=base_env(home, **inv.env), timeout=60)
            out = work / inv.out if inv.out else None
            inputs_now = input_digest(work)
            if expect == "error" and r.rc == 0 and ref is not None and not r.timed_out:
                o = self._check_ok(r, work, inv, ref)  # an invalid value accepted: wrong only if the output is
                if o.handled:
                    o.detail = "LENIENT: accepted without an error; " + o.detail
                return o
            if expect == "error" or (expect == "either" and r.rc != 0):
                o = clean_error(r, out, preexisting=inv.preexisting_out)
                if o.handled and inputs_now != inputs_snapshot:
                    changed = sorted(set(inputs_now.items()) ^ set(inputs_snapshot.items()))
                    o.verdict, o.detail = "other", f"input files changed: {[c[0] for c in changed][:4]}"
                return o
            return self._check_ok(r, work, inv, ref)
        return run

    def _check_ok(self, r: Run, work: Path, inv: Invocation, ref: Reference | None) -> Outcome:
        o = Outcome("handled", command=r.shown, seconds=r.seconds)
        if r.timed_out:
            o.verdict, o.detail = "hang", f"no exit within {r.seconds:.0f}s"
            return o
        if "Traceback" in r.stderr:
            o.verdict, o.detail = "traceback", last_lines(r.stderr)
            return o
        if r.rc != 0:
            o.verdict, o.detail = "unclean_error", f"a valid input failed: exit {r.rc}: {last_lines(r.stderr)}"
            return o
        out = work / (inv.out or "out")
        got = load_dir(out)
        if any(not torch.isfinite(v.float()).all() for v in got.values()):
            o.verdict, o.detail = "wrong_exit0", "exit 0 with NaN/Inf in the output"
            return o
        if left := [p.name for p in work.glob(".*.partial")]:
            o.verdict, o.detail = "partial_left", f"left behind after success: {left}"
            return o
        if ref is None:
            o.detail = "exit 0, finite output"
            return o
        loaded = [load_dir(work / name) for name in inv.inputs]
        f32 = [{k: v.float() for k, v in t.items()} for t in loaded]
        want = ref(f32[0], f32[1:])
        bad = []
        for k, w in want.items():
            if k not in got:
                bad.append(f"{k} missing")
                continue
            g = got[k].double()
            w_rounded = w.to(got[k].dtype).double()
            if not torch.allclose(g, w_rounded, rtol=2**-7, atol=1e-6):
                bad.append(f"{k}: max |diff| {float((g - w_rounded).abs().max()):.3g}")
        if bad:
            o.verdict, o.detail = "wrong_exit0", f"exit 0 but {len(bad)} tensor(s) differ from torch: {bad[:3]}"
        else:
            o.detail = f"exit 0, {len(want)} tensors match torch"
        return o


# --- 2. kills ---------------------------------------------------------------------------------------------------

KILL_METHODS = {"task_arithmetic": {"scaling": 0.7}, "ties": {"top_k": 0.3}, "dare": {"drop_rate": 0.5, "seed": 3}}


class Kills:
    """kill -9 at a seeded random moment after ``.out.partial`` appears, then ``--resume`` until done."""

    def __init__(self, root: Path, seed: int = 22) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.home = root / "home"
        self.home.mkdir(parents=True)
        folders = build_llama_family(root / "models", hidden=768, layers=6, inter=2048, vocab=4096, experts=2,
                                     shards=1)  # ~100 MB per model in bf16: a local merge takes a few seconds
        self.hub_root = root / "hub"
        self.ids = place_on_hub(folders, self.hub_root, "probe")
        self.reference: dict[str, dict[str, str]] = {}
        self.duration: dict[tuple[str, str], tuple[float, float]] = {}
        self.hub: HubServer | None = None
        self.n = 0

    def recipe(self, method: str, source: str) -> Path:
        path = self.root / f"{method}-{source}.yaml"
        if not path.exists():
            if source == "local":
                text = recipe_text(method, "./models/base", ["./models/e0", "./models/e1"],
                                   parameters=KILL_METHODS[method])
            else:
                text = recipe_text(method, self.ids[0], self.ids[1:], parameters=KILL_METHODS[method])
            path.write_text(text)
        return path

    def env(self, source: str) -> dict[str, str]:
        if source == "local":
            return base_env(self.home)
        if self.hub is None:
            self.hub = HubServer(self.hub_root, "--delay", "0.02", "--fault-times", "0", "--fault-path",
                                 "*.safetensors", home=self.home)
        return hub_env(self.hub.url, self.home)

    def cmd(self, method: str, source: str, out: Path, *extra: str) -> list[str]:
        return [MERGEBENCH, "merge", str(self.recipe(method, source)), "--out", str(out), "--shard-size", "10MB",
                *extra]

    def fresh(self, method: str, source: str) -> tuple[float, float]:
        """Run an uninterrupted merge once: the reference bytes and (seconds to .partial, seconds in total)."""
        if (method, source) not in self.duration:
            out = self.root / f"fresh-{method}-{source}"
            start = time.monotonic()
            proc = subprocess.Popen(self.cmd(method, source, out), cwd=self.root, env=self.env(source),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            t_partial = wait_for(lambda: proc.poll() is not None or bool(leftovers(out)), 120)
            try:
                _, err = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid)
                raise RuntimeError(f"fresh {method}/{source} merge hung") from None
            if proc.returncode != 0:
                raise RuntimeError(f"fresh {method}/{source} merge failed: {err.decode()[-800:]}")
            digest = shard_digest(out)
            if method in self.reference and self.reference[method] != digest:
                raise RuntimeError(f"{method}: the Hub merge differs from the local merge")
            self.reference.setdefault(method, digest)
            self.duration[(method, source)] = (t_partial - start, time.monotonic() - start)
        return self.duration[(method, source)]

    def probe(self, method: str, source: str, kills: int) -> Probe:
        name = f"{method}_{source}_{'double_' if kills > 1 else ''}kill_{self.n}"
        self.n += 1

        def run() -> Outcome:
            to_partial, total = self.fresh(method, source)
            out = self.root / f"out-{name}"
            landed = []
            for k in range(kills):
                extra = ("--resume",) if k else ()
                proc = subprocess.Popen(self.cmd(method, source, out, *extra), cwd=self.root, env=self.env(source),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                t0 = time.monotonic()
                wait_for(lambda p=proc: p.poll() is not None or bool(leftovers(out)), 120)
                delay = self.rng.uniform(0.0, max(0.05, 0.8 * (total - to_partial)))
                time.sleep(delay)
                running = proc.poll() is None
                finished = out.exists() and not any(x.endswith(".partial") for x in leftovers(out))
                kill_group(proc.pid)
                proc.wait()
                when = "after exit" if not running else "after the output was complete" if finished else "mid-merge"
                landed.append(f"{when} at {time.monotonic() - t0:.2f}s")
            if "mid-merge" not in landed[-1]:  # nothing to resume: the output must already be the fresh bytes
                r = Run(["(no resume: the merge had completed)"], 0, "", "", 0.0, False)
                o = Outcome("handled", command=" ".join(self.cmd(method, source, out)))
                if shard_digest(out) != self.reference[method]:
                    o.verdict, o.detail = "wrong_exit0", f"kill {landed[-1]}: output differs from a fresh merge"
                else:
                    resumed = run_cmd(self.cmd(method, source, out, "--resume"), cwd=self.root, env=self.env(source),
                                      timeout=240)
                    o.detail = (f"kill landed {landed[-1]}; the completed output is identical to a fresh merge; "
                                f"--resume on it then exits {resumed.rc}: {first_error(resumed.stderr) or 'ok'}")
                shutil.rmtree(out, ignore_errors=True)
                return o
            r = run_cmd(self.cmd(method, source, out, "--resume"), cwd=self.root, env=self.env(source), timeout=240)
            o = Outcome("handled", command=r.shown, seconds=r.seconds)
            if r.timed_out:
                o.verdict, o.detail = "hang", "the --resume run did not finish"
            elif "Traceback" in r.stderr:
                o.verdict, o.detail = "traceback", last_lines(r.stderr)
            elif r.rc != 0:
                o.verdict, o.detail = "unclean_error", f"--resume failed: exit {r.rc}: {last_lines(r.stderr)}"
            elif shard_digest(out) != self.reference[method]:
                o.verdict, o.detail = "wrong_exit0", "resumed shards differ from a fresh merge"
            elif left := [x for x in leftovers(out) if x.endswith(".partial")]:
                o.verdict, o.detail = "partial_left", f"left behind: {left}"
            else:
                o.detail = f"kill(s) {', '.join(landed)}; resumed to identical bytes"
            shutil.rmtree(out, ignore_errors=True)
            return o
        return Probe("kills", name, run, "--resume exits 0, shards byte-identical to a fresh merge, no .partial")

    def probes(self) -> list[Probe]:
        probes = []
        for source in ("local", "hub"):
            for method in KILL_METHODS:
                probes += [self.probe(method, source, 1) for _ in range(3)]
        probes += [self.probe("ties", "local", 2), self.probe("task_arithmetic", "hub", 2)]
        return probes

    def close(self) -> None:
        if self.hub:
            self.hub.stop()


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.005)
    return time.monotonic()


# --- 3. network faults ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    name: str
    options: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    method: str = "task_arithmetic"
    expect: Literal["either", "success", "error"] = "either"
    kill_server_after: float | None = None


def network_faults() -> list[Fault]:
    st = "*.safetensors"
    short = (("MERGEBENCH_READ_TIMEOUT", "2"), ("HF_HUB_DOWNLOAD_TIMEOUT", "2"))
    only_read = (("MERGEBENCH_READ_TIMEOUT", "2"),)
    return [
        Fault("drop_0_once", ("--drop-after-bytes", "0", "--fault-path", st), expect="success"),
        Fault("drop_8_three_times", ("--drop-after-bytes", "8", "--fault-times", "3", "--fault-path", st),
              expect="success"),
        Fault("drop_1000_five_times", ("--drop-after-bytes", "1000", "--fault-times", "5", "--fault-path", st),
              expect="success"),
        Fault("drop_100k_every_request", ("--drop-after-bytes", "100000", "--fault-times", "0", "--fault-path", st),
              expect="success"),
        Fault("drop_1M_every_request", ("--drop-after-bytes", "1000000", "--fault-times", "0", "--fault-path", st),
              expect="success"),
        Fault("drop_300k_every_request_ties", ("--drop-after-bytes", "300000", "--fault-times", "0",
                                               "--fault-path", st), method="ties", expect="success"),
        Fault("drop_0_every_request", ("--drop-after-bytes", "0", "--fault-times", "0", "--fault-path", st),
              expect="error"),
        Fault("drop_0_every_request_all_paths", ("--drop-after-bytes", "0", "--fault-times", "0"), expect="error"),
        Fault("drop_config_json_3_times", ("--drop-after-bytes", "0", "--fault-times", "3", "--fault-path",
                                           "config.json")),
        Fault("stall_0_forever_once", ("--stall-after-bytes", "0", "--fault-path", st), env=short,
              expect="success"),
        Fault("stall_50k_forever_twice", ("--stall-after-bytes", "50000", "--fault-times", "2", "--fault-path", st),
              env=short, expect="success"),
        Fault("stall_3s_once", ("--stall-after-bytes", "20000", "--stall-seconds", "3", "--fault-path", st),
              env=short, expect="success"),
        Fault("stall_1s_every_request", ("--stall-after-bytes", "20000", "--stall-seconds", "1", "--fault-times",
                                         "0", "--fault-path", st), env=short, expect="success"),
        Fault("stall_forever_every_request", ("--stall-after-bytes", "1000", "--fault-times", "0", "--fault-path",
                                              st), env=short, expect="error"),
        Fault("stall_forever_api_once", ("--stall-after-bytes", "0", "--fault-path", "/api/models/*"), env=short),
        Fault("stall_forever_config_json_read_timeout_only", ("--stall-after-bytes", "0", "--fault-times", "0",
                                                              "--fault-path", "config.json"), env=only_read),
        Fault("http_503_twice", ("--http-error", "503", "--fault-times", "2", "--fault-path", st), expect="success"),
        Fault("http_429_three_times", ("--http-error", "429", "--fault-times", "3", "--fault-path", st),
              expect="success"),
        Fault("http_500_once", ("--http-error", "500", "--fault-path", st), expect="success"),
        Fault("http_502_four_times", ("--http-error", "502", "--fault-times", "4", "--fault-path", st),
              expect="success"),
        Fault("http_503_every_request", ("--http-error", "503", "--fault-times", "0", "--fault-path", st),
              expect="error"),
        Fault("http_503_api_burst", ("--http-error", "503", "--fault-times", "3", "--fault-path", "/api/models/*")),
        Fault("http_429_api_every_request", ("--http-error", "429", "--fault-times", "0", "--fault-path",
                                             "/api/models/*"), expect="error"),
        Fault("http_404_one_shard", ("--http-error", "404", "--fault-times", "0", "--fault-path",
                                     "*e1/resolve/*model-00001-of-00002.safetensors"), expect="error"),
        Fault("http_404_model_api", ("--http-error", "404", "--fault-times", "0", "--fault-path", "/api/models/*"),
              expect="error"),
        Fault("http_401_everything", ("--http-error", "401", "--fault-times", "0"), expect="error"),
        Fault("http_403_config_json", ("--http-error", "403", "--fault-times", "0", "--fault-path", "config.json"),
              expect="error"),
        Fault("http_500_index_json_every_request", ("--http-error", "500", "--fault-times", "0", "--fault-path",
                                                    "*.index.json"), expect="error"),
        Fault("delay_0.05_every_request", ("--delay", "0.05", "--fault-times", "0"), expect="success"),
        Fault("delay_5s_headers_once", ("--delay", "5", "--fault-path", st), env=short, expect="success"),
        Fault("read_timeout_env_garbage", (), env=(("MERGEBENCH_READ_TIMEOUT", "soon"),), expect="error"),
        Fault("read_timeout_env_zero", (), env=(("MERGEBENCH_READ_TIMEOUT", "0"),), expect="error"),
        Fault("server_killed_mid_merge", ("--delay", "0.3", "--fault-times", "0"), kill_server_after=2.5,
              expect="error"),
    ]


class Network:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True)
        folders = build_llama_family(root / "models", hidden=256, layers=4, inter=512, vocab=1024, experts=2,
                                     shards=2)
        self.folders = folders
        self.ref: dict[str, dict[str, str]] = {}
        self.n = 0

    def local_reference(self, method: str) -> dict[str, str]:
        if method not in self.ref:
            path = self.root / f"local-{method}.yaml"
            path.write_text(recipe_text(method, "./models/base", ["./models/e0", "./models/e1"]))
            out = self.root / f"local-{method}"
            r = run_cmd([MERGEBENCH, "merge", str(path), "--out", str(out)], cwd=self.root,
                        env=base_env(self.home), timeout=120)
            if r.rc != 0:
                raise RuntimeError(f"local reference merge failed: {r.stderr[-800:]}")
            self.ref[method] = shard_digest(out)
        return self.ref[method]

    def probe(self, fault: Fault) -> Probe:
        def run() -> Outcome:
            self.n += 1
            work = self.root / f"{self.n:02d}-{fault.name}"
            hub_root = work / "hub"
            ids = place_on_hub(self.folders, hub_root, "probe")
            hf_home = work / "home"
            hf_home.mkdir()
            want = self.local_reference(fault.method)
            (work / "recipe.yaml").write_text(recipe_text(fault.method, ids[0], ids[1:]))
            bound = 90.0
            with HubServer(hub_root, *fault.options, home=hf_home) as server:
                env = hub_env(server.url, hf_home, **dict(fault.env))
                if fault.kill_server_after is not None:
                    threading.Timer(fault.kill_server_after, server.stop).start()
                r = run_cmd([MERGEBENCH, "merge", "recipe.yaml", "--out", "out"], cwd=work, env=env, timeout=bound)
            o = Outcome("handled", command=f"[hub serve {' '.join(fault.options)}] {r.shown}", seconds=r.seconds)
            cached = [str(p.relative_to(hf_home)) for p in hf_home.rglob("*")
                      if p.is_file() and (p.suffix == ".safetensors" or p.stat().st_size > 1_000_000)]
            if r.timed_out:
                o.verdict, o.detail = "hang", f"no exit within {bound:.0f}s"
            elif "Traceback" in r.stderr:
                o.verdict, o.detail = "traceback", last_lines(r.stderr)
            elif r.rc == 0:
                if shard_digest(work / "out") != want:
                    o.verdict, o.detail = "wrong_exit0", "exit 0 with shards that differ from the local merge"
                elif fault.expect == "error":
                    o.detail = "exit 0, identical to the local merge (an error was expected, but this is correct)"
                else:
                    o.detail = f"exit 0, identical to the local merge in {r.seconds:.1f}s"
            elif r.rc != 1 or not has_error_line(r.stderr):
                o.verdict, o.detail = "unclean_error", f"exit {r.rc}: {last_lines(r.stderr)}"
            elif leftovers(work / "out") and not kept_for_resume(work / "out", r.stderr):
                o.verdict, o.detail = "partial_left", f"left behind: {leftovers(work / 'out')}"
            elif fault.expect == "success":
                o.verdict = "other"
                o.detail = f"a recoverable fault failed the merge in {r.seconds:.1f}s: {first_error(r.stderr)}"
            else:
                o.detail = f"exit 1 in {r.seconds:.1f}s: {first_error(r.stderr)}"
            if o.handled and cached:
                o.verdict, o.detail = "other", f"model files left in the Hub cache: {cached[:3]}"
            return o
        expected = {"success": "exit 0 with identical shards", "error": "clean Error exit 1 in time",
                    "either": "identical shards, or a clean Error exit 1 in time"}[fault.expect]
        return Probe("network", fault.name, run, expected)

    def probes(self) -> list[Probe]:
        return [self.probe(f) for f in network_faults()]


# --- 4. hostile programs ----------------------------------------------------------------------------------------

DRIVER = r'''
import glob, json, os, sys, threading, time
from mergebench.eval.sandbox import SandboxConfig, run_program

source = open(sys.argv[1]).read()
pids, stop = set(), threading.Event()

def watch():  # the program appends its pid(s) to ./pids in its sandbox folder; copy them while it runs
    while not stop.is_set():
        for f in glob.glob(os.path.join(os.environ["TMPDIR"], "mergebench-sandbox-*", "pids")):
            try:
                pids.update(int(x) for x in open(f).read().split() if x.isdigit())
            except OSError:
                pass
        time.sleep(0.02)

threading.Thread(target=watch, daemon=True).start()
r = run_program(source, SandboxConfig(timeout_s=float(sys.argv[3])))
time.sleep(0.1); stop.set()
json.dump({"status": r.status, "detail": r.detail, "returncode": r.returncode, "stdout": r.stdout,
           "stderr": r.stderr, "seconds": r.seconds, "pids": sorted(pids),
           # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the (big) campaign process
           "maxrss_kb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])}, open(sys.argv[2], "w"))
'''

PRELUDE = "import os\nwith open('pids', 'a') as _f:\n    _f.write(str(os.getpid()) + '\\n')\n"


@dataclass(frozen=True)
class Hostile:
    """A program for the sandbox; ``{token_path}``, ``{project}``, ``{outside}``, ``{port}`` are filled in."""

    name: str
    source: str
    should_pass: bool = False


def hostile_programs() -> list[Hostile]:
    fail = "\nassert False, 'the end of a failing program'\n"

    def h(name: str, body: str) -> Hostile:
        return Hostile(name, textwrap.dedent(body) + fail)

    return [
        Hostile("benign_arithmetic", "assert sum(range(10)) == 45\nprint('ok')\n", should_pass=True),
        Hostile("benign_functions", textwrap.dedent("""
            import math, collections, json, re
            def f(n): return [i * i for i in range(n) if i % 2]
            assert f(6) == [1, 9, 25] and math.isclose(math.sqrt(2) ** 2, 2)
            assert collections.Counter('aab')['a'] == 2 and json.loads('[1]') == [1] and re.match('a', 'abc')
            """), should_pass=True),
        Hostile("benign_own_files", "open('x.txt', 'w').write('hi')\nassert open('x.txt').read() == 'hi'\n",
                should_pass=True),
        Hostile("plain_failing_assert", "assert 1 + 1 == 3\n"),
        h("read_token_file", "print(open({token_path!r}).read())"),
        h("read_token_os_open", "fd = os.open({token_path!r}, os.O_RDONLY)\nprint(os.read(fd, 200))"),
        h("read_token_via_dir_fd", """
            import os
            d = os.open(os.path.dirname({token_path!r}), os.O_RDONLY)
            print(os.read(os.open('token', os.O_RDONLY, dir_fd=d), 200))"""),
        h("read_token_via_stdlib_dir_fd_traversal", """
            import os, sysconfig
            d = os.open(sysconfig.get_paths()['stdlib'], os.O_RDONLY)
            rel = os.path.relpath({token_path!r}, sysconfig.get_paths()['stdlib'])
            print(os.read(os.open(rel, os.O_RDONLY, dir_fd=d), 200))"""),
        h("read_token_proc_parent_environ", """
            import os
            for pid in (os.getppid(), 1):
                try: print(open(f'/proc/{{pid}}/environ', 'rb').read())
                except Exception as e: print('no', e)"""),
        h("read_etc_shadow", "print(open('/etc/shadow').read())"),
        h("read_project_file", "print(open({project!r} + '/pyproject.toml').read()[:200])"),
        h("list_project_folder", "print(os.listdir({project!r}))"),
        h("write_outside", "open({outside!r}, 'w').write('escaped')"),
        h("write_outside_os_open", "fd = os.open({outside!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'escaped')"),
        h("write_outside_symlink", "os.symlink({outside!r}, 'link')\nopen('link', 'w').write('escaped')"),
        h("connect_loopback", """
            import socket
            s = socket.create_connection(('127.0.0.1', {port}), timeout=2)
            s.sendall(b'escaped')"""),
        h("connect_loopback_swallowed", """
            import socket
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'escaped')
            except Exception:
                pass"""),
        h("resolve_dns", "import socket\nprint(socket.getaddrinfo('huggingface.co', 443))"),
        h("fork_bomb", """
            import os
            while True:
                pid = os.fork()
                if pid == 0:
                    open('pids', 'a').write(str(os.getpid()) + '\\n')"""),
        h("thread_bomb", """
            import threading, time
            ts = [threading.Thread(target=time.sleep, args=(30,)) for _ in range(5000)]
            for t in ts: t.start()"""),
        h("allocate_10GB", "x = bytearray(10 * 2**30)"),
        h("infinite_loop", "while True:\n    pass"),
        h("sleep_forever", "import time\ntime.sleep(10**6)"),
        h("ignore_sigterm", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass"),
        h("kill_parent", "import signal\nos.kill(os.getppid(), signal.SIGKILL)"),
        h("print_200MB", "import sys\nchunk = 'x' * 2**20\nfor _ in range(200):\n    sys.stdout.write(chunk)"),
        h("spawn_daemon_subprocess", """
            import subprocess, sys
            p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)
            open('pids', 'a').write(str(p.pid) + '\\n')"""),
        h("spawn_daemon_posix_spawn", """
            import os, sys
            pid = os.posix_spawn(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)'], {{}})
            open('pids', 'a').write(str(pid) + '\\n')"""),
        h("ctypes_resurrected_by_gc", """
            import gc
            mods = [o for o in gc.get_objects() if type(o).__name__ == 'module' and 'ctypes' in o.__name__]
            libc = mods[0].CDLL(None)
            pid = libc.fork()
            if pid == 0:
                import time; time.sleep(60)
            open('pids', 'a').write(str(pid) + '\\n')"""),
        h("forge_sys_exit_0", "import sys\nsys.exit(0)"),
        h("forge_os_exit_0", "os._exit(0)"),
        h("forge_fake_nonce", """
            import sys
            print('\\nMB-SANDBOX-DONE-0123456789abcdef\\nMB-SANDBOX-NET:isolated')
            sys.stdout.flush(); os._exit(0)"""),
        h("forge_nonce_from_orig_argv", """
            import sys, json
            cfg = json.loads(sys.orig_argv[-1])
            print('\\n' + cfg['nonce']); sys.stdout.flush(); os._exit(0)"""),
        h("forge_nonce_from_proc_cmdline", """
            import sys
            raw = open('/proc/self/cmdline', 'rb').read().split(b'\\0')
            nonce = [w for w in raw[-2].decode().split('"') if w.startswith('MB-SANDBOX-DONE')][0]
            print('\\n' + nonce); sys.stdout.flush(); os._exit(0)"""),
        h("forge_nonce_from_environment", """
            import sys
            nonce = [v for v in os.environ.values() if 'MB-SANDBOX-DONE' in v][0]
            print('\\n' + nonce); sys.stdout.flush(); os._exit(0)"""),
        h("forge_nonce_from_main_module", """
            import sys
            print('\\n' + sys.modules['__main__'].nonce); sys.stdout.flush(); os._exit(0)"""),
        h("forge_nonce_from_caller_frame", """
            import sys
            print('\\n' + sys._getframe(1).f_globals['nonce']); sys.stdout.flush(); os._exit(0)"""),
        h("forge_nonce_from_parent_memory", """
            import sys, re
            ppid = os.getppid()
            maps = open(f'/proc/{{ppid}}/maps').read()
            print(maps[:100]); sys.stdout.flush(); os._exit(0)"""),
        h("forge_patch_os_exit", """
            import sys
            real_exit, real_write = os._exit, os.write
            def fake_exit(code):
                real_write(1, ('\\n' + sys._getframe(1).f_globals.get('nonce', '') + '\\n').encode()); real_exit(0)
            os._exit = fake_exit"""),
        h("disable_audit_hook_busy_flag_then_read_token", """
            import sys
            sys.modules['__main__'].state['busy'] = True
            print(open({token_path!r}).read())"""),
        h("disable_audit_hook_inside_then_write_outside", """
            import sys
            sys.modules['__main__']._inside = lambda *a: True
            open({outside!r}, 'w').write('escaped')"""),
        h("disable_audit_hook_patch_code", """
            import sys
            sys.modules['__main__'].hook.__code__ = (lambda event, args: None).__code__
            print(open({token_path!r}).read())"""),
        h("blocked_then_20KB_stderr", """
            import sys
            try:
                open('/etc/shadow').read()
            except Exception:
                pass
            sys.stderr.write('y' * 20000 + '\\n'); sys.stderr.flush()
            sys.exit(0)"""),
        h("blocked_caught_then_forge_exit", """
            import sys
            try:
                import socket; socket.socket()
            except Exception:
                pass
            print('\\n' + sys.modules['__main__'].nonce); sys.stdout.flush(); os._exit(0)"""),
        h("forge_done_record_on_every_fd", """
            import sys
            for fd in range(3, 64):
                try: os.write(fd, b'\\nMB-SANDBOX:DONE:0123456789abcdef\\n')
                except OSError: pass
            sys.stdout.flush(); os._exit(0)"""),
        h("read_key_named_in_orig_argv", """
            import sys, json
            cfg = json.loads(sys.orig_argv[-1])
            key = open(cfg['key']).read()
            os.write(cfg['verdict_fd'], ('\\nMB-SANDBOX:DONE:' + key + '\\n').encode()); os._exit(0)"""),
        h("key_path_from_proc_fd_links", """
            import sys
            links = []
            for fd in range(64):
                try: links.append(os.readlink(f'/proc/self/fd/{{fd}}'))
                except OSError: pass
            print(links); sys.stdout.flush()
            for link in links:
                if link.startswith('/') and 'key' in link:
                    print(open(link).read())"""),
        h("evil_stdout_flush_reads_key", """
            import sys, json
            cfg = json.loads(sys.orig_argv[-1])
            class Evil:
                def write(self, s): return len(s)
                def flush(self):
                    try:
                        k = open(cfg['key']).read()
                        os.write(cfg['verdict_fd'], ('\\nMB-SANDBOX:DONE:' + k + '\\n').encode()); os._exit(0)
                    except Exception:
                        pass
            sys.stdout = Evil()"""),
        h("custom_excepthook_exits_0", "import sys\nsys.excepthook = lambda *a: os._exit(0)"),
        h("close_every_fd_then_exit_0", """
            import sys
            for fd in range(3, 64):
                try: os.close(fd)
                except OSError: pass
            sys.exit(0)"""),
        h("dup_stdout_over_every_fd_then_fake_done", """
            import sys
            for fd in range(3, 20):
                try: os.dup2(1, fd)
                except OSError: pass
            print('\\nMB-SANDBOX:DONE:0123456789abcdef'); sys.stdout.flush(); os._exit(0)"""),
        h("thread_fakes_done_while_main_fails", """
            import threading, time
            def spam():
                time.sleep(0.01)
                for fd in range(3, 64):
                    try: os.write(fd, b'\\nMB-SANDBOX:DONE:x\\n')
                    except OSError: pass
            threading.Thread(target=spam).start()"""),
        h("atexit_exit_0", "import atexit\natexit.register(lambda: os._exit(0))"),
        h("print_secret_from_env", "print(dict(os.environ))"),
        h("fake_traceback_module", """
            import sys, types
            m = types.ModuleType('traceback')
            def print_exc():
                os.write(1, ('\\n' + sys._getframe(1).f_globals.get('nonce', '') + '\\n').encode()); os._exit(0)
            m.print_exc = print_exc
            sys.modules['traceback'] = m"""),
    ]


class HostilePrograms:
    def __init__(self, root: Path, secret: str) -> None:
        self.root = root
        self.secret = secret
        self.home = root / "home"
        token = self.home / ".cache" / "huggingface" / "token"
        token.parent.mkdir(parents=True)
        token.write_text(secret)
        for p in (root, self.home, self.home / ".cache", token.parent):
            p.chmod(0o755)
        token.chmod(0o644)  # world-readable, as a normal user's own files are to their own programs
        self.token_path = str(token)
        self.driver = root / "driver.py"
        self.driver.write_text(DRIVER)
        self.n = 0

    def probe(self, prog: Hostile) -> Probe:
        def run() -> Outcome:
            self.n += 1
            work = self.root / f"{self.n:02d}-{prog.name}"
            tmp = work / "tmp"
            tmp.mkdir(parents=True)
            work.chmod(0o755)
            tmp.chmod(0o755)
            outside = str(self.root / f"escaped-{self.n}.txt")
            with socket.socket() as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen(4)
                listener.settimeout(0.2)
                source = PRELUDE + prog.source.format(token_path=self.token_path, project=str(REPO),
                                                      outside=outside, port=listener.getsockname()[1])
                (work / "program.py").write_text(source)
                env = base_env(self.home, HF_TOKEN=self.secret, TMPDIR=str(tmp), PYTHONPATH=str(REPO))
                timeout_s = 4.0
                r = run_cmd([sys.executable, str(self.driver), str(work / "program.py"), str(work / "result.json"),
                             str(timeout_s)], cwd=work, env=env, timeout=60)
                connected = False
                with suppress(OSError):
                    conn, _ = listener.accept()
                    conn.close()
                    connected = True
            time.sleep(0.3)
            result = json.loads((work / "result.json").read_text()) if (work / "result.json").exists() else None
            survivors = sorted(probe_pids(tmp))
            for pid in survivors:  # processes this probe started (found by its own folder), by pid
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            o = Outcome("handled", command=f"run_program(<{prog.name}>)", seconds=r.seconds)
            text = (r.stdout + r.stderr + json.dumps(result or {}))
            if r.timed_out:
                o.verdict, o.detail = "hang", "the driver did not return within 60s"
            elif result is None:
                o.verdict, o.detail = "escape", f"the driver died (exit {r.rc}): {last_lines(r.stderr)}"
            elif self.secret in text:
                o.verdict, o.detail = "leaked_secret", f"status {result['status']}; the token is in the result"
            elif prog.should_pass and result["status"] != "passed":
                o.verdict, o.detail = "other", f"a benign program got {result['status']}: {result['detail']}"
            elif not prog.should_pass and result["status"] == "passed":
                o.verdict, o.detail = "forged_pass", "status passed for a program whose last line fails"
            elif survivors:
                o.verdict, o.detail = "escape", f"process(es) {survivors} survived the run"
            elif Path(outside).exists():
                o.verdict, o.detail = "escape", f"wrote {outside}"
            elif connected:
                o.verdict, o.detail = "escape", "connected to a loopback listener"
            elif result["maxrss_kb"] > 300 * 1024:
                o.verdict, o.detail = "escape", f"driver RSS grew to {result['maxrss_kb'] // 1024} MB"
            else:
                o.detail = f"status {result['status']}: {str(result['detail'])[:120]}"
            if not o.handled and result is not None and o.verdict != "escape":
                o.detail += f" (status {result['status']}, detail {str(result['detail'])[:100]!r})"
            return o
        return Probe("hostile", prog.name, run,
                     "passed" if prog.should_pass else "not passed, no secret, no survivor, driver intact")

    def probes(self) -> list[Probe]:
        return [self.probe(p) for p in hostile_programs()]


def probe_pids(tmp: Path) -> set[int]:
    """Live processes of one hostile probe: their command line (the sandbox's config names its folder) or their
    working directory lies under the probe's own TMPDIR, so other users' sandboxes are never counted or killed."""
    found, me = set(), os.getpid()
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == me:
            continue
        with suppress(OSError):
            ours = str(tmp) in (proc / "cmdline").read_bytes().decode(errors="replace") or \
                os.readlink(proc / "cwd").startswith(str(tmp))
            if ours and "State:\tZ" not in (proc / "status").read_text():
                found.add(pid)
    return found


# --- 5. secrets -------------------------------------------------------------------------------------------------

class Secrets:
    """Every command with a recognisable fake token in the environment (and in ``~/.cache/huggingface/token``)."""

    def __init__(self, root: Path, secret: str) -> None:
        self.root = root
        self.secret = secret
        self.home = root / "home"
        (self.home / ".cache" / "huggingface").mkdir(parents=True)
        (self.home / ".cache" / "huggingface" / "token").write_text(secret)
        base = base_tensors()
        folders = [write_model(root / "models" / n, t, shards=2) for n, t in
                   (("base", base), ("e0", expert_tensors(base, 1)), ("e1", expert_tensors(base, 2)))]
        self.hub_root = root / "hub"
        self.ids = place_on_hub(folders, self.hub_root, "probe")
        self.hub: HubServer | None = None
        self.n = 0

    def server(self) -> HubServer:
        if self.hub is None:
            self.hub = HubServer(self.hub_root, home=self.home, env=base_env(self.home, HF_TOKEN=self.secret))
        return self.hub

    def scan(self, paths: list[Path], texts: list[str]) -> list[str]:
        token_file = self.home / ".cache" / "huggingface" / "token"
        found = [f"process output #{i}" for i, t in enumerate(texts) if self.secret in t]
        for root in paths:
            for p in [root] if root.is_file() else root.rglob("*"):
                if p.is_file() and p != token_file:
                    with suppress(OSError):
                        if self.secret.encode() in p.read_bytes():
                            found.append(str(p.relative_to(self.root)))
        return found

    def probe(self, name: str, args: list[str], *, hub: bool, recipe: str | None = None,
              server_options: tuple[str, ...] = (), kill_after: float | None = None,
              expect_rc: tuple[int, ...] = (0,), extra_env: dict[str, str] | None = None) -> Probe:
        def run() -> Outcome:
            self.n += 1
            work = self.root / f"{self.n:02d}-{name}"
            work.mkdir()
            if recipe is not None:
                (work / "recipe.yaml").write_text(recipe)
            texts: list[str] = []
            own: HubServer | None = None
            if hub:
                own = HubServer(self.hub_root, *server_options, home=self.home,
                                env=base_env(self.home, HF_TOKEN=self.secret)) if server_options else None
                server = own or self.server()
                env = hub_env(server.url, self.home, self.secret, **(extra_env or {}))
                log_start = len(server.log)
            else:
                server = None
                env = base_env(self.home, HF_TOKEN=self.secret, **(extra_env or {}))
            cmd = [MERGEBENCH, *args]
            if kill_after is not None:
                proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True)
                time.sleep(kill_after)
                kill_group(proc.pid)
                out, err = proc.communicate()
                r = Run(cmd, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                        kill_after, False)
            else:
                r = run_cmd(cmd, cwd=work, env=env, timeout=120)
            texts += [r.stdout, r.stderr]
            if server is not None:
                time.sleep(0.2)
                texts.append("".join(server.log[log_start:]))
            if own is not None:
                own.stop()
            found = self.scan([work, self.hub_root, self.home], texts)
            o = Outcome("handled", command=r.shown, seconds=r.seconds)
            if r.timed_out:
                o.verdict, o.detail = "hang", "no exit within 120s"
            elif found:
                o.verdict, o.detail = "leaked_secret", f"the token is in: {found[:5]}"
            elif "Traceback" in r.stderr and "MERGEBENCH_DEBUG" not in (extra_env or {}):
                o.verdict, o.detail = "traceback", last_lines(r.stderr)
            elif kill_after is None and r.rc not in expect_rc:
                o.verdict, o.detail = "other", f"exit {r.rc} (expected {expect_rc}): {last_lines(r.stderr)}"
            else:
                o.detail = f"exit {r.rc}; token absent from {len(texts)} outputs and every file written"
            return o
        return Probe("secrets", name, run, "the token appears nowhere")

    def probes(self) -> list[Probe]:
        local = recipe_text("task_arithmetic", "../models/base", ["../models/e0", "../models/e1"])
        hub = recipe_text("ties", self.ids[0], self.ids[1:])
        missing = recipe_text("task_arithmetic", self.ids[0], ["probe/does-not-exist"])
        bad = local + "parameters: {scaling: .nan}\n"
        merge = ["merge", "recipe.yaml", "--out", "out"]
        return [
            self.probe("local_merge", merge, hub=False, recipe=local),
            self.probe("local_merge_verbose", ["-v", *merge], hub=False, recipe=local),
            self.probe("local_plan_json", ["plan", "recipe.yaml", "--format", "json"], hub=False, recipe=local),
            self.probe("hub_merge", merge, hub=True, recipe=hub),
            self.probe("hub_merge_verbose", ["-v", *merge], hub=True, recipe=hub),
            self.probe("hub_plan_verbose", ["-v", "plan", "recipe.yaml"], hub=True, recipe=hub),
            self.probe("hub_merge_push_verbose", ["-v", *merge, "--push-to", "probe/pushed-secret"], hub=True,
                       recipe=hub),
            self.probe("hub_merge_push_private", [*merge, "--push-to", "probe/pushed-private", "--private",
                                                  "--format", "json"], hub=True, recipe=hub),
            self.probe("failing_bad_recipe_verbose", ["-v", *merge], hub=False, recipe=bad, expect_rc=(1,)),
            self.probe("failing_missing_hub_model_verbose", ["-v", *merge], hub=True, recipe=missing,
                       expect_rc=(1,)),
            self.probe("failing_hub_401_verbose", ["-v", *merge], hub=True, recipe=hub,
                       server_options=("--http-error", "401", "--fault-times", "0"), expect_rc=(1,)),
            self.probe("failing_push_500_verbose", ["-v", *merge, "--push-to", "probe/pushed-fail"], hub=True,
                       recipe=hub, server_options=("--http-error", "500", "--fault-times", "0", "--fault-path",
                                                   "/api/repos/create"), expect_rc=(1,)),
            self.probe("failing_hub_debug_traceback", ["-v", *merge], hub=True, recipe=missing, expect_rc=(1,),
                       extra_env={"MERGEBENCH_DEBUG": "1"}),
            self.probe("killed_hub_merge_partial", [*merge, "--shard-size", "2KB"], hub=True, recipe=hub,
                       server_options=("--delay", "0.2", "--fault-times", "0"), kill_after=3.0),
            self.probe("methods_ls_verbose", ["-v", "methods", "ls"], hub=False),
        ]

    def sandbox_probe(self, hostile_root: Path) -> Probe:
        def run() -> Outcome:
            hp = HostilePrograms(hostile_root, self.secret)
            prog = Hostile("secrets_sandbox_env_and_files", PRELUDE + textwrap.dedent("""
                import os
                print(sorted(os.environ.items()))
                for p in ({token_path!r}, os.path.expanduser('~/.cache/huggingface/token')):
                    try:
                        print(open(p).read())
                    except Exception as e:
                        print(type(e).__name__)
                """))
            return hp.probe(prog).run()
        return Probe("secrets", "sandbox_env_and_token_file", run, "the token appears nowhere")

    def close(self) -> None:
        if self.hub:
            self.hub.stop()


# --- the campaign ------------------------------------------------------------------------------------------------

@contextmanager
def category_root(base: Path, name: str) -> Iterator[Path]:
    root = base / name
    root.mkdir(parents=True, exist_ok=True)
    yield root


def build_probes(category: str, root: Path, secret: str) -> tuple[list[Probe], Callable[[], None]]:
    if category == "bad_inputs":
        return BadInputs(root).probes(), lambda: None
    if category == "kills":
        k = Kills(root)
        return k.probes(), k.close
    if category == "network":
        return Network(root).probes(), lambda: None
    if category == "hostile":
        return HostilePrograms(root, secret).probes(), lambda: None
    s = Secrets(root, secret)
    return [*s.probes(), s.sandbox_probe(root / "sandbox")], s.close


def run_probe(probe: Probe) -> Outcome:
    start = time.monotonic()
    try:
        o = probe.run()
    except Exception as e:  # a defect of the campaign itself, reported rather than hidden
        o = Outcome("other", f"the probe itself raised {type(e).__name__}: {e}")
    o.seconds = o.seconds or time.monotonic() - start
    o.expected = o.expected or probe.expected
    return o


def summarise(results: list[tuple[Probe, Outcome]]) -> dict[str, Counter[str]]:
    table: dict[str, Counter[str]] = {}
    for probe, o in results:
        c = table.setdefault(probe.category, Counter())
        c["run"] += 1
        c["handled" if o.handled else "failed"] += 1
        if not o.handled:
            c[o.verdict] += 1
    return table


def render(table: dict[str, Counter[str]]) -> str:
    kinds = list(FAILURE_LABELS)
    head = ["category", "run", "handled", "failed", *FAILURE_LABELS.values()]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total: Counter[str] = Counter()
    for cat in CATEGORIES:
        if cat in table:
            c = table[cat]
            total.update(c)
            rows.append("| " + " | ".join([cat.replace("_", " "), *(str(c[k]) for k in
                                                                    ("run", "handled", "failed", *kinds))]) + " |")
    rows.append("| **total** | " + " | ".join(f"**{total[k]}**" for k in ("run", "handled", "failed", *kinds)) + " |")
    return "\n".join(rows)


def failures_text(results: list[tuple[Probe, Outcome]]) -> str:
    lines = []
    for probe, o in results:
        if not o.handled:
            lines.append(f"- `{probe.category}/{probe.name}` — **{FAILURE_LABELS[o.verdict]}**. Command: "
                         f"`{o.command}`. Expected: {o.expected}. Observed: {o.detail}")
    return "\n".join(lines) or "None."


def lenient_text(results: list[tuple[Probe, Outcome]]) -> str:
    lines = [f"- `{p.category}/{p.name}`: `{o.command}` — {o.detail.removeprefix('LENIENT: ')}"
             for p, o in results if o.handled and o.detail.startswith("LENIENT")]
    return "\n".join(lines) or "None."


def write_results(text: str) -> None:
    current = RESULTS.read_text()
    section = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        RESULTS.write_text(head + section + tail)
    else:
        RESULTS.write_text(current.rstrip("\n") + "\n\n" + section + "\n")


def report(results: list[tuple[Probe, Outcome]], load: tuple[tuple[float, ...], tuple[float, ...]],
           seconds: float, categories: list[str]) -> str:
    table = summarise(results)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    fmt = lambda t: "/".join(f"{x:.2f}" for x in t)  # noqa: E731
    return "\n".join([
        "## Probe campaign (issue #22)",
        "",
        f"`.venv/bin/python benchmarks/probes.py --write` ({', '.join(categories)}), run {when} on "
        f"{os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{'root' if os.geteuid() == 0 else 'non-root'}); load average (1/5/15 min) {fmt(load[0])} before, "
        f"{fmt(load[1])} after; {seconds / 60:.1f} min in all. Every probe is a whole subprocess (the CLI, "
        "`mergebench hub serve`, or a driver calling `run_program`) under a hard timeout; what counts as handled "
        "is in the script's docstring.",
        "",
        render(table),
        "",
        "Failing probes:",
        "",
        failures_text(results),
        "",
        "Invalid values accepted without an error, counted as handled because the output was still correct:",
        "",
        lenient_text(results),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the probes section of benchmarks/RESULTS.md")
    parser.add_argument("--only", choices=CATEGORIES, action="append", help="run only this category (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    categories = args.only or list(CATEGORIES)
    secret = "hf_probeSecret" + os.urandom(12).hex()
    load_before = os.getloadavg()
    start = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="mergebench-probes-"))
    base.chmod(0o755)  # the sandbox runs programs as nobody (when root), in folders under this one
    results: list[tuple[Probe, Outcome]] = []
    try:
        for category in categories:
            t0 = time.monotonic()
            with category_root(base, category) as root:
                probes, close = build_probes(category, root, secret)
                try:
                    for probe in probes:
                        o = run_probe(probe)
                        results.append((probe, o))
                        mark = "ok  " if o.handled else "FAIL"
                        print(f"{mark} {category:<10} {probe.name:<48} {o.seconds:6.1f}s  "
                              f"{'' if o.handled else FAILURE_LABELS[o.verdict] + ': '}{o.detail[:160]}", flush=True)
                finally:
                    close()
            print(f"-- {category}: {time.monotonic() - t0:.0f}s", flush=True)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    seconds = time.monotonic() - start
    text = report(results, (load_before, os.getloadavg()), seconds, categories)
    print()
    print(render(summarise(results)))
    print()
    print(failures_text(results))
    print(f"\n{len(results)} probes in {seconds:.0f}s")
    if args.write:
        write_results(text)
        print(f"wrote the probes section of {RESULTS}")
    return 0 if all(o.handled for _, o in results) else 1


if __name__ == "__main__":
    sys.exit(main())
