"""End to end through the loopback Hub: fixture sources → build → push → ``hf download`` / ``load_dataset``.

Every source is loaded by ``datasets.load_dataset`` from a dataset repo served by the loopback Hub under its
real id, exactly as a real build would, and every result is read back the way users read it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard, HfApi

from mergebench.data.build import BuildOptions, build_domain
from mergebench.data.evalrepo import build_eval_repo
from mergebench.data.fixture_sources import fixture_rows, planted, publish_fixture_sources, write_repo
from mergebench.data.sources import get_domain
from mergebench.domains import DOMAINS
from mergebench.errors import DataError, OutputExistsError

HF = str(Path(sys.executable).with_name("hf"))


@pytest.fixture
def sources_hub(hub, hub_root: Path):
    """The loopback Hub with every fixture source published under its real repo id."""
    publish_fixture_sources(hub_root)
    return hub


def _download(repo_id: str, dest: Path) -> list[str]:
    subprocess.run([HF, "download", repo_id, "--repo-type", "dataset", "--local-dir", str(dest)], check=True,
                   env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and ".cache" not in p.parts)


@pytest.mark.parametrize("domain", DOMAINS)
def test_build_push_download_and_load(domain: str, sources_hub, tmp_path: Path):
    push_to = f"mergebench/mergebench-{domain}"
    result = build_domain(domain, tmp_path / "out", options=BuildOptions(cache_dir=tmp_path / "cache"),
                          push_to=push_to)
    keys = get_domain(domain).sources
    api = HfApi()

    # sources pinned to the commit the Hub reports, and recorded in the card
    for src in result.report["sources"]:
        assert len(src["sha"]) == 40 and src["sha"] == api.dataset_info(src["repo_id"]).sha
        assert src["requested_revision"] == "main"
    # planted duplicates and the planted evaluation overlap are exactly what was removed
    dup_ids = {d["id"]: d["kind"] for d in result.report["dedup"]["duplicates"]}
    assert dup_ids == {i: kind for k in keys for kind, ids in (("exact", planted(k).exact), ("near", planted(k).near))
                       for i in ids}
    removed = result.report["decontamination"]["removed_ids"]
    assert removed == {i: [name] for k in keys for i, name in planted(k).contaminated.items()}
    for name in {n for k in keys for n in planted(k).contaminated.values()}:
        assert result.report["decontamination"]["eval_sets"][name]["removed"] == 1

    # the pushed repo, fetched with the hf CLI
    files = _download(push_to, tmp_path / "dl")
    assert files == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet",
                     "data/validation-00000-of-00001.parquet", "mergebench_build.json"]
    # ...and opened with datasets, by repo id
    ds = datasets.load_dataset(push_to, cache_dir=str(tmp_path / "cache2"))
    assert set(ds) == {"train", "validation"}
    assert (len(ds["train"]), len(ds["validation"])) == (result.train_rows, result.validation_rows)
    n = sum(s["rows_kept"] for s in result.report["sources"])
    assert result.validation_rows == n // 5 > 0 and result.train_rows == n - n // 5
    train_ids, val_ids = set(ds["train"]["id"]), set(ds["validation"]["id"])
    assert not train_ids & val_ids
    prompts = {split: {m[0]["content"] for m in ds[split]["messages"]} for split in ds}
    assert not prompts["train"] & prompts["validation"]
    assert not (train_ids | val_ids) & (set(dup_ids) | set(removed))
    assert set(ds["train"]["domain"]) == {domain}
    assert ds["train"].features["messages"].feature["role"].dtype == "string"

    # a valid card, checked by the Hub, with the metadata the issue asks for
    card = DatasetCard.load(push_to, repo_type="dataset")
    card.validate()
    assert card.data.configs == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "validation", "path": "data/validation-*"}]}]
    licenses = {s["license"] for s in result.report["sources"]}
    assert card.data.license == (licenses.pop() if len(licenses) == 1 else sorted(licenses))
    assert card.data.task_categories == ["text-generation"] and card.data.size_categories == ["n<1K"]
    assert [s["sha"] for s in card.data.mergebench["sources"]] == [s["sha"] for s in result.report["sources"]]
    assert "## Decontamination" in card.text and result.report["sources"][0]["sha"] in card.text
    assert card.data.source_datasets == [s["repo_id"] for s in result.report["sources"]]


def test_source_revision_is_pinned_and_recorded(sources_hub, tmp_path: Path):
    sha = HfApi().dataset_info("ise-uiuc/Magicoder-Evol-Instruct-110K").sha
    result = build_domain("coding", tmp_path / "out", options=BuildOptions(
        revisions={"magicoder-evol-instruct": sha}, cache_dir=tmp_path / "cache"))
    assert result.report["sources"][0]["requested_revision"] == sha == result.report["sources"][0]["sha"]
    assert result.commit_url is None and (tmp_path / "out" / "README.md").is_file()


def test_eval_repo_push_and_load(hub, tmp_path: Path):
    result = build_eval_repo(tmp_path / "eval", push_to="mergebench/mergebench-eval")
    assert result.commit_url
    gsm8k = datasets.load_dataset("mergebench/mergebench-eval", "gsm8k", split="test", cache_dir=str(tmp_path / "c"))
    assert len(gsm8k) == 100 and gsm8k.column_names == ["question", "answer"]
    harm = datasets.load_dataset("mergebench/mergebench-eval", "harmbench", cache_dir=str(tmp_path / "c"))
    assert {s: len(d) for s, d in harm.items()} == {"test": 320, "validation": 80}
    he = datasets.load_dataset("mergebench/mergebench-eval", "humaneval_plus", split="test",
                               cache_dir=str(tmp_path / "c"))
    assert he[0]["task_id"] == "HumanEval/0" and len(he) == 164
    card = DatasetCard.load("mergebench/mergebench-eval", repo_type="dataset")
    card.validate()
    assert len(card.data.configs) == len(result.configs) == 32
    assert card.data.mergebench["configs"]["xstest"]["origin"] == "package"
    assert "Mazeika" in card.text and "Röttger" in card.text


# ---------------------------------------------------------------- bad input: clear error, nothing pushed

PUSH = "mergebench/should-not-exist"


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _assert_nothing_pushed(out: Path) -> None:
    assert not HfApi().repo_exists(PUSH, repo_type="dataset")
    assert not out.exists()


def _build_bad(domain: str, tmp_path: Path, **options) -> DataError:
    with pytest.raises(DataError) as e:
        build_domain(domain, tmp_path / "out", options=BuildOptions(cache_dir=tmp_path / "cache", **options),
                     push_to=PUSH)
    _assert_nothing_pushed(tmp_path / "out")
    return e.value


def test_missing_column(sources_hub, hub_root: Path, tmp_path: Path):
    rows = [{"instruction": r["instruction"], "output": r["response"]} for r in fixture_rows("magicoder-evol-instruct")]
    write_repo(hub_root / "datasets" / "broken" / "no-response", {"data.jsonl": _jsonl(rows)})
    err = _build_bad("coding", tmp_path, repos={"magicoder-evol-instruct": "broken/no-response"})
    assert err.source == "magicoder-evol-instruct" and err.row is None
    assert str(err).startswith("Source magicoder-evol-instruct (broken/no-response@")
    assert "lacks required column(s) ['response']; it has ['instruction', 'output']" in str(err)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_empty_source(fmt: str, sources_hub, hub_root: Path, tmp_path: Path):
    if fmt == "parquet":  # a parquet file with the right schema and no rows
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(fixture_rows("aya")).schema.empty_table(), buf)
        files = {"data/train-00000-of-00001.parquet": buf.getvalue()}
    else:
        files = {"data/train.jsonl": b""}
    write_repo(hub_root / "datasets" / "broken" / f"aya-empty-{fmt}", files)
    err = _build_bad("multilingual", tmp_path, repos={"aya": f"broken/aya-empty-{fmt}"})
    assert err.source == "aya" and err.row is None
    assert str(err).startswith(f"Source aya (broken/aya-empty-{fmt}@")
    assert "is empty" in str(err)


def test_nonexistent_source_revision(sources_hub, tmp_path: Path):
    err = _build_bad("safety", tmp_path, revisions={"wildjailbreak": "v9.9-does-not-exist"})
    assert err.source == "wildjailbreak"
    assert str(err) == ("Source wildjailbreak (allenai/wildjailbreak:train): revision 'v9.9-does-not-exist' does not "
                        "exist in dataset repo 'allenai/wildjailbreak'.")


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_non_utf8_text_names_the_row(fmt: str, sources_hub, hub_root: Path, tmp_path: Path):
    if fmt == "jsonl":
        lines = _jsonl(fixture_rows("magicoder-evol-instruct")).split(b"\n")
        lines[5] = lines[5][:-2] + b' caf\xe9"}'  # Latin-1 "é" at the end of row 5's response
        repo, key, domain, path = "broken/magicoder-latin1", "magicoder-evol-instruct", "coding", "data.jsonl"
        write_repo(hub_root / "datasets" / repo, {path: b"\n".join(lines)})
    else:
        from mergebench.data.fixture_sources import repo_files

        files = repo_files("wildjailbreak")
        lines = files["train/train.tsv"].split(b"\n")
        lines[6] = lines[6].replace(b"a", b"\xe0", 1)  # data row 5 (line 1 is the header)
        files["train/train.tsv"] = b"\n".join(lines)
        repo, key, domain, path = "broken/wildjailbreak-latin1", "wildjailbreak", "safety", "train/train.tsv"
        write_repo(hub_root / "datasets" / repo, files)
    err = _build_bad(domain, tmp_path, repos={key: repo})
    assert (err.source, err.row) == (key, 5)
    # pyarrow's JSON reader keeps the bytes and fails per cell; pandas' TSV reader fails on the file
    where = "row 5, column 'response' is not valid UTF-8" if fmt == "jsonl" else \
        f"row 5 of '{path}' is not valid UTF-8 text"
    assert str(err).startswith(f"Source {key} ({repo}") and where in str(err)


def test_the_build_does_not_depend_on_its_batch_size(sources_hub, tmp_path: Path):
    """Two rows at a time (every planted duplicate in another batch than its original) writes the same files."""
    outs = {}
    for batch_rows in (2, 10_000):
        out = tmp_path / f"out-{batch_rows}"
        build_domain("safety", out, options=BuildOptions(cache_dir=tmp_path / "cache", batch_rows=batch_rows))
        outs[batch_rows] = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert list(outs[2]) == ["README.md", "data/train-00000-of-00001.parquet",
                             "data/validation-00000-of-00001.parquet", "mergebench_build.json"]
    assert outs[2] == outs[10_000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out-10000", "out-2"]  # no scratch folder left


def test_a_build_clears_what_a_killed_build_left_and_refuses_to_run_beside_another(sources_hub, tmp_path: Path):
    out = tmp_path / "math"
    leftovers = [tmp_path / ".math.scratch-k1ll3d", tmp_path / ".math.a1b2c3"]  # scratch, unfinished output
    for folder in leftovers:
        folder.mkdir()
        (folder / "converted.arrow").write_bytes(b"0" * 1000)
    (tmp_path / ".math.lock").touch()  # the killed build's lock file: unlocked, since its process is gone
    options = BuildOptions(cache_dir=tmp_path / "cache")
    build_domain("math", out, options=options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "math"]  # nothing hidden beside the output

    with open(tmp_path / ".math.lock", "a") as held:  # a build of the same folder in another process
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputExistsError, match="Another build is writing") as e:
            build_domain("math", out, options=dataclasses.replace(options, overwrite=True))
    assert "another --out" in (e.value.hint or "") and (out / "README.md").is_file()


def test_source_files_cut_short_by_the_network_are_downloaded_again(sources_hub, tmp_path: Path):
    short = sources_hub.faults.short_body(100, times=2, path_glob="/datasets/*")
    faulted, clean = tmp_path / "faulted", tmp_path / "clean"
    build_domain("math", faulted, options=BuildOptions(cache_dir=tmp_path / "cache-1"))
    assert short.fired == 2
    build_domain("math", clean, options=BuildOptions(cache_dir=tmp_path / "cache-2"))
    files = {out: {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
             for out in (faulted, clean)}
    assert files[faulted] == files[clean]
