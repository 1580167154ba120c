"""Offline stand-ins for the training sources, in each real dataset's exact schema and file layout.

None of the real training sets can be downloaded here, so the pipeline is tested on small fixtures that
the converters cannot tell from the real thing: the same columns and types, the same file formats and
repo layouts (parquet shards, Magicoder's single JSON Lines file, WildJailbreak's TSV configs read with
``delimiter="\\t"``, WildGuardMix's two parquet configs), published under the *real* repo ids on a
loopback Hub, so a build runs exactly the ``datasets.load_dataset`` path it runs online.

The hand-written base rows live in ``fixtures/sources/{key}.jsonl``. :func:`fixture_rows` appends, to every
source, four *planted* rows whose fate the tests assert :

* an exact duplicate of base row 1;
* a duplicate of base row 2 differing only in case and whitespace (still "exact" after normalisation);
* a near duplicate of base row 0 (one word inserted into its long response: Jaccard ≈ 0.9);
* a row whose prompt contains an evaluation item (IFBench, GSM8K, MATH, m_mmlu_fr, HumanEval,
  HarmBench, XSTest stand-in), which decontamination must remove.

:func:`planted` says which row ids the build must drop and why.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mergebench.data.evalsets import load_eval_set
from mergebench.data.sources import SOURCES

logger = logging.getLogger(__name__)
SOURCE_DIR = Path(__file__).parent / "fixtures" / "sources"
BASE_ROWS = 15


@dataclass(frozen=True)
class Planted:
    """What the build must remove from one fixture source, by project row id."""

    exact: tuple[str, ...]
    near: tuple[str, ...]
    contaminated: dict[str, str]  # row id → evaluation set it overlaps
    filtered: int  # rows the source's filter drops (other languages, unsafe responses)


def _row_id(key: str, index: int, native: str | None = None) -> str:
    return f"{key}-{native}" if native else f"{key}-train-{index:07d}"


# The response column of each source, where the near-duplicate edit goes; the prompt column for overlaps.
_RESPONSE = {"tulu3-personas-if": "messages", "dart-math-hard": "response", "numinamath-tir": "solution",
             "aya": "targets", "magicoder-evol-instruct": "response", "wildguardmix": "response",
             "wildjailbreak": "completion"}
_TULU_IDS = ("personas_IF_fxd001", "personas_IF_fxd002", "personas_IF_fxd003", "personas_IF_fxc004")
_FILTERED = {"aya": 3, "wildguardmix": 3}


def _contaminated_row(key: str) -> tuple[dict, str]:
    """A new source row embedding a real evaluation item, and the evaluation set it comes from."""
    if key == "tulu3-personas-if":
        prompt = load_eval_set("ifbench")["test"][0]["prompt"].strip()
        reply = "A thoughtful answer that follows every constraint in the request."
        return {"id": _TULU_IDS[3], "prompt": prompt, "messages": [{"content": prompt, "role": "user"},
                {"content": reply, "role": "assistant"}], "constraints": ["Include the requested keywords."]}, "ifbench"
    if key == "dart-math-hard":
        item = load_eval_set("gsm8k")["test"][0]
        return {"query": item["question"], "response": item["answer"].replace("####", "The answer is:")}, "gsm8k"
    if key == "numinamath-tir":
        item = load_eval_set("math")["test"][2]
        return {"problem": item["problem"], "solution": item["solution"],
                "messages": [{"content": item["problem"], "role": "user"},
                             {"content": item["solution"], "role": "assistant"}]}, "math"
    if key == "aya":
        question = load_eval_set("m_mmlu_fr")["test"][0]["instruction"]
        return {"inputs": f"Question de biologie : {question}",
                "targets": "Ils transportent l'oxygène vers les tissus.",
                "language": "French", "language_code": "fra", "annotation_type": "original-annotations",
                "user_id": "0" * 64}, "m_mmlu_fr"
    if key == "magicoder-evol-instruct":
        item = load_eval_set("humaneval_plus")["test"][2]
        return {"instruction": "Complete the following Python function.\n" + item["prompt"],
                "response": "```python\n" + item["prompt"] + item["canonical_solution"] + "```"}, "humaneval_plus"
    if key == "wildguardmix":
        behavior = load_eval_set("harmbench")["test"][0]["Behavior"]
        return {"prompt": behavior, "adversarial": False,
                "response": "I can't write propaganda that misrepresents how the Korean War began.",
                "prompt_harm_label": "harmful", "response_refusal_label": "refusal",
                "response_harm_label": "unharmful", "subcategory": "misinformation"}, "harmbench"
    if key == "wildjailbreak":
        probe = load_eval_set("xstest")["test"][0]["prompt"]
        return {"vanilla": probe, "adversarial": "",
                "completion": "Check with a pharmacist: many painkillers, antibiotics and supplements interact.",
                "data_type": "vanilla_benign"}, "xstest"
    raise KeyError(key)


def _edit_response(key: str, row: dict, edit) -> dict:
    row = copy.deepcopy(row)
    col = _RESPONSE[key]
    if col == "messages":
        row["messages"][-1]["content"] = edit(row["messages"][-1]["content"])
    else:
        row[col] = edit(row[col])
        if key == "numinamath-tir":
            row["messages"][-1]["content"] = row[col]
    return row


def _insert_word(text: str) -> str:
    parts = text.split(" ")
    return " ".join([*parts[:10], "really", *parts[10:]])


def _shout_and_space(text: str) -> str:
    return "  " + text.upper().replace(" ", "   ") + " \n"


def base_rows(key: str) -> list[dict]:
    """The hand-written rows of one fixture source, in the real schema."""
    with (SOURCE_DIR / f"{key}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def fixture_rows(key: str) -> list[dict]:
    """Base rows plus the four planted rows (exact dup, normalised dup, near dup, eval overlap), in order."""
    rows = base_rows(key)
    exact = copy.deepcopy(rows[1])
    normalised = _edit_response(key, rows[2], _shout_and_space)
    near = _edit_response(key, rows[0], _insert_word)
    contaminated, _ = _contaminated_row(key)
    if key == "tulu3-personas-if":  # real Tulu ids are unique: a duplicate arrives under a new id
        exact["id"], normalised["id"], near["id"] = _TULU_IDS[:3]
    return [*rows, exact, normalised, near, contaminated]


@cache
def planted(key: str) -> Planted:
    """The ids the build must drop from fixture source ``key`` (see :func:`fixture_rows`)."""
    native = _TULU_IDS if key == "tulu3-personas-if" else (None,) * 4
    ids = [_row_id(key, BASE_ROWS + i, native[i]) for i in range(4)]
    return Planted(exact=(ids[0], ids[1]), near=(ids[2],), contaminated={ids[3]: _contaminated_row(key)[1]},
                   filtered=_FILTERED.get(key, 0))


# ---------------------------------------------------------------- writing repos in the real layouts


def parquet_bytes(rows: list[dict]) -> bytes:
    """One parquet file of ``rows`` (schema inferred by pyarrow, as ``datasets``' ``push_to_hub`` writes it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def jsonl_bytes(rows: list[dict]) -> bytes:
    """``rows`` as JSON Lines (UTF-8, one object per line)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def tsv_bytes(rows: list[dict]) -> bytes:
    """``rows`` as a tab-separated file with a header line (WildJailbreak's format)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _readme(repo_id: str, license: str, configs: str = "") -> bytes:
    return (f"---\nlicense: {license}\n{configs}---\n\n# {repo_id} (MergeBench offline fixture)\n\n"
            f"A small stand-in written in the exact schema of the real `{repo_id}`, with planted duplicates "
            f"and an evaluation overlap. See `mergebench/data/fixture_sources.py`.\n").encode()


def repo_files(key: str, rows: list[dict] | None = None) -> dict[str, bytes]:
    """The files of fixture source ``key`` as its real repo lays them out: ``{path in repo: bytes}``."""
    spec = SOURCES[key]
    rows = fixture_rows(key) if rows is None else rows
    if key == "magicoder-evol-instruct":
        return {"data-evol_instruct-decontaminated.jsonl": jsonl_bytes(rows),
                "README.md": _readme(spec.repo_id, spec.license)}
    if key == "wildguardmix":
        test = load_eval_set("wildguardtest")["test"]
        configs = ("configs:\n- config_name: wildguardtrain\n  data_files:\n  - split: train\n"
                   "    path: train/wildguard_train.parquet\n- config_name: wildguardtest\n  data_files:\n"
                   "  - split: test\n    path: test/wildguard_test.parquet\n")
        return {"train/wildguard_train.parquet": parquet_bytes(rows),
                "test/wildguard_test.parquet": parquet_bytes(test),
                "README.md": _readme(spec.repo_id, spec.license, configs)}
    if key == "wildjailbreak":
        evals = load_eval_set("wildjailbreak_eval")["test"]
        configs = ("configs:\n- config_name: train\n  data_files: train/train.tsv\n"
                   "- config_name: eval\n  data_files: eval/eval.tsv\n")
        return {"train/train.tsv": tsv_bytes(rows), "eval/eval.tsv": tsv_bytes(evals),
                "README.md": _readme(spec.repo_id, spec.license, configs)}
    return {"data/train-00000-of-00001.parquet": parquet_bytes(rows), "README.md": _readme(spec.repo_id, spec.license)}


def write_repo(folder: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` under ``folder`` (a dataset repo as a plain folder)."""
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def publish_fixture_sources(hub_root: Path, keys: Iterable[str] | None = None) -> dict[str, Path]:
    """Write fixture sources as dataset repos ``hub_root/datasets/{org}/{name}`` of a loopback Hub.

    Returns ``{source key: repo folder}``. The repos take the real ids (``allenai/wildguardmix``...), so a
    build needs no ``--source`` override.
    """
    out = {}
    for key in keys or SOURCES:
        out[key] = write_repo(Path(hub_root) / "datasets" / SOURCES[key].repo_id, repo_files(key))
        logger.info("fixture source %s → %s", key, out[key])
    return out
