"""Issue 20: the bad-input table, ``docs/bad-inputs.md``, written from real runs so that it cannot drift.

Run (from the repository root, with the project's venv)::

    .venv/bin/python benchmarks/bad_inputs.py            # prints the table
    .venv/bin/python benchmarks/bad_inputs.py --write    # also rewrites docs/bad-inputs.md

Each case writes its bad input into a fresh folder and runs the real ``mergebench`` console script there (a
whole process, ``HF_ENDPOINT`` on a loopback Hub started here, ``HOME`` a temporary folder); the table quotes
the ``Error:`` and ``Hint:`` lines it printed. A case that does not exit 1 with both lines, or prints a
traceback, stops the script: the table only lists handled inputs. The Space's submission form is not a
command: its rows are the message and hint the page shows, from the checks the form runs
(``space/submission.py``: ``validate_merge``/``validate_model``, then ``explain``).
``tests/fuzz/test_bad_inputs_table.py`` (slow) runs the same cases in-process and compares with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mergebench.hub.endpoint import endpoint_env  # noqa: E402
from mergebench.hubserver import LoopbackHub  # noqa: E402

TABLE = REPO / "docs" / "bad-inputs.md"
MERGEBENCH = str(Path(sys.executable).with_name("mergebench"))
PROCESS_SECONDS = 300
Runner = Callable[[list[str], Path, dict[str, str]], tuple[int, str]]
"""``(arguments, folder, environment) → (exit code, stderr)`` of one ``mergebench`` run."""


@dataclass(frozen=True)
class Case:
    """One bad input: ``files`` (name → text or bytes; a name ending in ``/`` is a folder) and the command."""

    what: str
    files: dict[str, str | bytes]
    args: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    title: str
    command: str
    cases: list[Case] = field(default_factory=list)


def _safetensors(header: dict | bytes, data_size: int, *, length: int | None = None) -> bytes:
    """A safetensors file: the 8-byte length (``length`` overrides it), the header, ``data_size`` zero bytes."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + bytes(data_size)


def _f32(*tensors: tuple[str, list[int], list[int]]) -> dict:
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": offsets} for name, shape, offsets in tensors}


RECIPE = "method: task_arithmetic\nbase_model: ./model\nmodels: [{model: ./model}]\n"
GOOD_HEADER = _f32(("a", [2], [0, 8]), ("b", [2], [8, 16]))
MERGE = ("merge", "recipe.yaml", "--out", "out")
PLAN = ("plan", "recipe.yaml")


def _recipe(what: str, text: str) -> Case:
    return Case(what, {"recipe.yaml": text}, MERGE)


def _model(what: str, data: bytes) -> Case:
    return Case(what, {"recipe.yaml": RECIPE, "model/model.safetensors": data, "model/config.json": "{}"}, PLAN)


TA = "method: task_arithmetic\nbase_model: ./base\nmodels: [{model: ./e0}, {model: ./e1}]\n"
TIES = TA.replace("task_arithmetic", "ties")
BENCH = ("run", "bench.yaml")
GOOD_BENCH = {"name": "b", "bases": [{"model": "./base", "experts": {d: f"./{d}" for d in
                                                                      ("instruction", "math", "multilingual",
                                                                       "coding", "safety")}}]}
SPACE = ("space", "--results", "results.json", "--work-dir", "state")


def _results(what: str, doc: object) -> Case:
    return Case(what, {"results.json": doc if isinstance(doc, str) else json.dumps(doc)}, SPACE)


def sections() -> list[Section]:
    """Every command-line case, grouped by the file the user gave."""
    good_results = {"schema_version": 1, "model": {"id": "org/m"}, "settings": {}, "run": {"id": "r1"},
                    "tasks": {}}
    return [
        Section("Merge recipes", "mergebench merge recipe.yaml --out out", [
            Case("the recipe file does not exist", {}, MERGE),
            Case("the recipe is a folder", {"recipe.yaml/": ""}, MERGE),
            Case("the recipe is a binary file", {"recipe.yaml": b"\x00\x01\x02"}, MERGE),
            _recipe("YAML syntax error (an unclosed bracket)", "method: [ties\n"),
            _recipe("a key given twice", TA + "method: ties\n"),
            _recipe("a list as a key (`? [a]`)", TA + "? [a]\n: b\n"),
            _recipe("a number of 5,000 digits", TA + "seed: " + "1" * 5000 + "\n"),
            _recipe("100,000 nested brackets", "[" * 100_000 + "]" * 100_000),
            _recipe("a list instead of a mapping", "- method: ties\n"),
            _recipe("an unknown key (`methd:`)", TA.replace("method:", "methd:")),
            _recipe("no `models:`", "method: task_arithmetic\nbase_model: ./base\n"),
            _recipe("an unknown method", TA.replace("task_arithmetic", "tie")),
            _recipe("an unknown parameter", TA + "parameters: {scalling: 0.5}\n"),
            _recipe("a parameter of the wrong type (`top_k: null`)", TIES + "parameters: {top_k: null}\n"),
            _recipe("a parameter out of range (`top_k: 1.5`)", TIES + "parameters: {top_k: 1.5}\n"),
            _recipe("NaN as a parameter", TA + "parameters: {scaling: .nan}\n"),
            _recipe("a weight of 400 digits", TA + "parameters: {weights: [" + "9" * 400 + ", 1]}\n"),
            _recipe("weights given twice (per model and in `parameters`)",
                    "method: task_arithmetic\nbase_model: ./base\nmodels: [{model: ./e0, weight: 1}, "
                    "{model: ./e1, weight: 1}]\nparameters: {weights: [1, 1]}\n"),
            _recipe("a data-dependent method without data", TA.replace("task_arithmetic", "regmean")),
            _recipe("a local model folder that does not exist", TA),
            _recipe("a Hub model that does not exist",
                    "method: task_arithmetic\nbase_model: org/no-such-model\nmodels: [{model: org/x}]\n"),
        ]),
        Section("Safetensors files", "mergebench plan recipe.yaml (a recipe on ./model)", [
            _model("an empty file", b""),
            _model("a header length past the end of the file", _safetensors(b"{}", 0, length=1000)),
            _model("an absurd header length", _safetensors(b"{}", 0, length=2**62)),
            _model("a header that is not JSON", _safetensors(b"not json", 0)),
            _model("NaN in the header", _safetensors(b'{"a": {"dtype": "F32", "shape": [NaN], '
                                                     b'"data_offsets": [0, 4]}}', 4)),
            _model("an unknown dtype", _safetensors({"a": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}}, 4)),
            _model("a shape written as a string", _safetensors(
                {"a": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}, 4)),
            _model("a tensor given twice", _safetensors(
                b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', 4)),
            _model("two tensors on the same bytes", _safetensors(_f32(("a", [2], [0, 8]), ("b", [2], [0, 8])), 8)),
            _model("a gap between tensors", _safetensors(_f32(("a", [2], [0, 8]), ("b", [2], [16, 24])), 24)),
            _model("the file is cut short", _safetensors(GOOD_HEADER, 12)),
            _model("bytes after the last tensor", _safetensors(GOOD_HEADER, 20)),
        ]),
        Section("Benchmark configurations", "mergebench run bench.yaml", [
            Case("a list instead of a mapping", {"bench.yaml": "- name: b\n"}, BENCH),
            Case("no `bases:`", {"bench.yaml": "name: b\n"}, BENCH),
            Case("a key given twice", {"bench.yaml": "name: a\nname: b\n"}, BENCH),
            Case("an unknown domain, a missing expert, an unknown method and task", {"bench.yaml": json.dumps({
                **GOOD_BENCH, "bases": [{"model": "./base", "experts": {"math": "./m", "cooking": "./c"}}],
                "methods": [{"method": "tiess"}], "evaluation": {"tasks": ["mb_no_such_task"]}})}, BENCH),
            Case("a grid value out of range", {"bench.yaml": json.dumps({
                **GOOD_BENCH, "methods": [{"method": "ties", "grid": {"top_k": [1.5]}}]})}, BENCH),
        ]),
        Section("Results files", "mergebench space --results results.json", [
            Case("the file does not exist", {}, SPACE),
            _results("not JSON (a cut file)", '{"schema_version": 1, "model": {'),
            _results("another schema version", {**good_results, "schema_version": 2}),
            _results("`tasks` is a list", {**good_results, "tasks": []}),
            _results("a score written as a string", {**good_results, "tasks": {"mb_x": {
                "name": "mb_x", "status": "ok", "domain": "math", "role": "test", "version": 1,
                "main_metric": "acc", "score": "0.5"}}}),
            _results('a block that is not an object (`model: "org/m"`)', {**good_results, "model": "org/m"}),
        ]),
    ]


def form_rows() -> list[tuple[str, str, str]]:
    """The Space's submission form: (bad input, message, hint) as the page shows them."""
    sys.path.insert(0, str(REPO / "space"))
    from submission import Catalogue, explain, validate_merge, validate_model

    from tests.space.fixture_results import BASES, fixture_results

    catalogue = Catalogue.from_results(fixture_results())
    base, experts = BASES[0], sorted(catalogue.experts[BASES[0]].values())

    def merge(**fields: object) -> Callable[[], object]:
        values = {"base": base, "experts": experts[:2], "method": "ties", "parameters": "", **fields}
        return lambda: validate_merge(catalogue, validation_data={}, **values)  # type: ignore[arg-type]

    cases: list[tuple[str, Callable[[], object]]] = [
        ("parameters that are not JSON", merge(parameters='{"top_k": 0.2')),
        ("parameters that are not an object", merge(parameters="[0.2]")),
        ("a parameter number of 5,000 digits", merge(parameters='{"top_k": ' + "1" * 5000 + "}")),
        ("a parameter out of range", merge(parameters='{"top_k": 1.5}')),
        ("a base that is not the benchmark's", merge(base="org/other")),
        ("one expert", merge(experts=experts[:1])),
        ("an expert that is not the benchmark's", merge(experts=[experts[0], "evil/expert"])),
        ("an unknown method", merge(method="tie")),
        ("a data-dependent method (no validation data configured)", merge(method="regmean")),
        ("a model id that is a path", lambda: validate_model(catalogue, model="../../etc/passwd", base=base,
                                                              method=None, parameters="")),
    ]
    rows = []
    for what, check in cases:
        try:
            check()
        except Exception as e:
            message, hint = explain(e)
            rows.append((what, message, hint or ""))
        else:
            raise AssertionError(f"the form accepted {what}")
    return rows


def run_process(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """The real console script, as a whole process."""
    proc = subprocess.run([MERGEBENCH, *args], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=PROCESS_SECONDS)
    return proc.returncode, proc.stderr


def _write(work: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = work / name
        if name.endswith("/"):
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def error_and_hint(code: int, stderr: str, what: str) -> tuple[str, str]:
    """The ``Error:`` text (all its lines) and the ``Hint:`` text of a run, which must have exited 1."""
    if code != 1 or "Traceback" in stderr or "\nHint: " not in f"\n{stderr}" or "Error: " not in stderr:
        raise RuntimeError(f"{what}: exit {code}, not an Error/Hint pair:\n{stderr[-3000:]}")
    error = stderr[stderr.index("Error: ") + len("Error: "):]
    error, _, hint = error.partition("\nHint: ")
    return error.strip(), hint.strip()


@contextmanager
def loopback_hub() -> Iterator[tuple[str, Path]]:
    """An empty loopback Hub (a Hub model id is then a clean 404) and a temporary home; yields (URL, home)."""
    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "hub", Path(tmp) / "home"
        root.mkdir()
        home.mkdir()
        with LoopbackHub(root) as hub:
            yield hub.url, home


def rows(run: Runner) -> list[tuple[Section, list[tuple[str, str, str]]]]:
    """Each section with its (bad input, error, hint) rows, from running every case with ``run``."""
    out = []
    with loopback_hub() as (url, home):
        env = {**endpoint_env(url, home / "hf"), "HOME": str(home)}
        for section in sections():
            found = []
            for case in section.cases:
                with tempfile.TemporaryDirectory() as tmp:
                    work = Path(tmp)
                    _write(work, case.files)
                    code, stderr = run(list(case.args), work, env)
                    error, hint = error_and_hint(code, stderr, case.what)
                    found.append((case.what, _relative(error, work, url), _relative(hint, work, url)))
            out.append((section, found))
    return out


def _relative(text: str, work: Path, url: str) -> str:
    """Machine-independent text: the case's folder as ``.``, the loopback Hub as ``$HF_ENDPOINT``."""
    for folder in {str(work), str(work.resolve())}:
        text = text.replace(folder + "/", "./").replace(folder, ".")
    return text.replace(url, "$HF_ENDPOINT")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def render(found: list[tuple[Section, list[tuple[str, str, str]]]], form: list[tuple[str, str, str]]) -> str:
    lines = ["# What MergeBench says about bad inputs", "",
             "<!-- Generated by `python benchmarks/bad_inputs.py --write`; do not edit by hand. -->", "",
             "Every row is a real run: the bad input was written into an empty folder and the `mergebench` command "
             "named in the section's title ran there (a whole process; its exit code was 1 and it printed no "
             "traceback). The error and hint columns are its `Error:` and `Hint:` lines, word for word; paths are "
             "relative to that folder and `$HF_ENDPOINT` is the Hub the run asked. The Space's submission form shows "
             "the same kind of message and hint on the page, before anything is queued. "
             "`tests/fuzz/test_bad_inputs_table.py` checks that this page is current, and the fuzz tests in "
             "`tests/fuzz/` check the same property on thousands of generated inputs.", ""]
    for section, table in found:
        lines += [f"## {section.title}: `{section.command}`", "", "| bad input | error | hint |", "|---|---|---|"]
        lines += [f"| {_cell(what)} | {_cell(error)} | {_cell(hint)} |" for what, error, hint in table]
        lines.append("")
    lines += ["## The Space's submission form", "", "| bad input | message | hint |", "|---|---|---|"]
    lines += [f"| {_cell(what)} | {_cell(message)} | {_cell(hint)} |" for what, message, hint in form]
    return "\n".join(lines) + "\n"


def table(run: Runner = run_process) -> str:
    return render(rows(run), form_rows())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"rewrite {TABLE.relative_to(REPO)}")
    args = parser.parse_args()
    text = table()
    print(text)
    if args.write:
        TABLE.write_text(text)


if __name__ == "__main__":
    main()
