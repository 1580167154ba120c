"""``mergebench data eval-sets --from-hub`` against the loopback Hub serving the upstream repos' fixtures.

The fixtures (:mod:`mergebench.fixtures.upstream`) sit under the real repo ids in the real file layouts, so
these builds make exactly the ``datasets.load_dataset`` calls a build against huggingface.co makes.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard, HfApi
from typer.testing import CliRunner

from mergebench.cli.data import data_app
from mergebench.data.evalrepo import build_eval_repo
from mergebench.data.evalsets import EVAL_SETS, EvalCorpus, load_eval_set
from mergebench.data.fixture_sources import parquet_bytes, publish_fixture_sources, repo_files, write_repo
from mergebench.data.upstream import REPOS, TASK_SOURCES
from mergebench.data.upstream.convert import LETTERS, PartRows, ai2_arc_to_okapi
from mergebench.data.upstream.load import HubBuild, Pins
from mergebench.data.upstream.table import NO_SHA
from mergebench.errors import ConfigError, DataError
from mergebench.fixtures import upstream_rows as fx
from mergebench.fixtures.upstream import publish_upstream_fixtures, repo_fixture

TASKS = ["gsm8k", "arc_fr", "harmbench", "dan", "conala", "mmlu_stem"]


@pytest.fixture
def upstream_hub(hub, hub_root: Path):
    """The loopback Hub serving every upstream repo's fixture under its real id."""
    publish_upstream_fixtures(hub_root)
    return hub


def _rows(out: Path, name: str) -> list[dict]:
    return [r for path in sorted((out / name).glob("test-*.parquet")) for r in pq.read_table(path).to_pylist()]


def _build(out: Path, tasks: list[str], *extra: str):
    return CliRunner().invoke(data_app, ["eval-sets", "--from-hub", "--out", str(out), "--tasks", ",".join(tasks),
                                         "--cache-dir", str(out.parent / "cache"), "--format", "json", *extra])


def test_unpinned_build_holds_exactly_the_fixture_rows_and_records_every_commit(upstream_hub, tmp_path: Path):
    out = tmp_path / "eval"
    result = _build(out, TASKS, "--unpinned")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    api = HfApi()
    heads = {r: api.dataset_info(r).sha for t in TASKS for r in TASK_SOURCES[t].repos}
    assert summary["upstream"] == {t: [f"{r}@{heads[r]}" for r in TASK_SOURCES[t].repos] for t in TASKS}
    assert {t: rows for t, rows in summary["configs"].items()} == {
        "gsm8k": {"test": 3}, "arc_fr": {"test": 3}, "harmbench": {"test": 4}, "dan": {"test": 3},
        "conala": {"test": 3}, "mmlu_stem": {"test": 3}}

    assert _rows(out, "gsm8k") == fx.GSM8K_TEST  # the test split only, not train
    assert _rows(out, "conala") == load_eval_set("conala")["test"]  # read past the loading script, from the JSON
    assert _rows(out, "mmlu_stem") == load_eval_set("mmlu_stem")["test"]  # the non-STEM validation row is dropped
    # ARC from AI2's schema (the fixture's second row has numeric labels) back to the Okapi columns the task reads
    assert _rows(out, "arc_fr") == load_eval_set("arc_fr")["test"]
    harm = _rows(out, "harmbench")
    assert [(r["Behavior"], r["FunctionalCategory"], r["SemanticCategory"]) for r in harm] == [
        (r["prompt"], config, r["category"]) for config, rows in fx.HARMBENCH.items() for r in rows]
    assert [r["ContextString"] for r in harm] == ["", "", fx.HARMBENCH["contextual"][0]["context"], ""]
    picks = np.random.default_rng(0).integers(0, len(fx.ITW_JAILBREAK), size=len(fx.FORBIDDEN_QUESTIONS))
    assert _rows(out, "dan") == [
        {"id": f"dan-{q['q_id']}", "platform": fx.ITW_JAILBREAK[i]["platform"],
         "jailbreak_prompt": fx.ITW_JAILBREAK[i]["prompt"], "content_policy_name": q["content_policy_name"],
         "question": q["question"], "prompt": f"{fx.ITW_JAILBREAK[i]['prompt']}\n{q['question']}"}
        for q, i in zip(fx.FORBIDDEN_QUESTIONS, picks.tolist(), strict=True)]

    # the card names every part's repo, config, split and commit, in the front matter and in the table
    card = DatasetCard.load(out / "README.md")
    parts = card.data.mergebench["configs"]["harmbench"]["upstream_parts"]
    assert parts == [{"repo_id": "walledai/HarmBench", "config": c, "split": "train",
                      "sha": heads["walledai/HarmBench"], "rows": len(fx.HARMBENCH[c])} for c in fx.HARMBENCH]
    assert card.data.mergebench["configs"]["gsm8k"]["origin"] == "hub"
    for task in TASKS:
        for part in TASK_SOURCES[task].parts:
            row = (f"| `{task}` | [`{part.repo_id}`](https://huggingface.co/datasets/{part.repo_id})"
                   f"{' (gated)' if REPOS[part.repo_id].gated else ''} | {part.config or 'default'} | {part.split}")
            assert row in card.text and heads[part.repo_id] in card.text
    assert "kept the 3 of 4 rows whose subject is one of the 19 STEM" in card.text
    manifest = json.loads((out / "mergebench_eval.json").read_text())
    assert {c["name"]: c["upstream_parts"][0]["chosen_by"] for c in manifest} == dict.fromkeys(TASKS,
                                                                                                "main (unpinned)")


def test_a_missing_upstream_column_names_repo_config_and_column_and_writes_nothing(upstream_hub, hub_root: Path,
                                                                                   tmp_path: Path):
    contextual = [{k: v for k, v in r.items() if k != "category"} for r in fx.HARMBENCH["contextual"]]
    write_repo(hub_root / "datasets" / "walledai" / "HarmBench",
               {"contextual/train-00000-of-00001.parquet": parquet_bytes(contextual)})
    out = tmp_path / "eval"
    with pytest.raises(DataError) as e:
        build_eval_repo(out, names=["gsm8k", "harmbench"], from_hub=HubBuild(unpinned=True, cache_dir=tmp_path / "c"))
    message = str(e.value)
    assert message.startswith("Upstream walledai/HarmBench (config 'contextual', split 'train') at commit ")
    assert "lacks column(s) ['category'] of the walledai/HarmBench schema that 'harmbench' reads" in message
    assert e.value.source == "walledai/HarmBench"
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "c"]


def test_a_pins_file_rebuilds_the_recorded_commits_and_a_row_count_mismatch_fails(upstream_hub, tmp_path: Path):
    first = tmp_path / "first"
    assert _build(first, ["gsm8k", "xstest"], "--unpinned").exit_code == 0
    pins = first / "mergebench_eval.json"
    again = tmp_path / "again"
    result = _build(again, ["gsm8k", "xstest"], "--pins", str(pins))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["upstream"] == json.loads(_build(tmp_path / "x", ["gsm8k", "xstest"],
                                                                        "--unpinned").stdout)["upstream"]
    assert _rows(again, "xstest") == _rows(first, "xstest") == fx.XSTEST
    chosen = {p["chosen_by"] for c in json.loads((again / "mergebench_eval.json").read_text())
              for p in c["upstream_parts"]}
    assert chosen == {f"pins file {pins}"}

    manifest = json.loads(pins.read_text())
    next(c for c in manifest if c["name"] == "gsm8k")["upstream_parts"][0]["rows"] = 4
    tampered = tmp_path / "pins.json"
    tampered.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as e:
        build_eval_repo(tmp_path / "bad", names=["gsm8k"], from_hub=HubBuild(pins=tampered, cache_dir=tmp_path / "c"))
    sha = HfApi().dataset_info("openai/gsm8k").sha
    assert str(e.value) == (f"Row count mismatch in upstream openai/gsm8k (config 'main', split 'test') at commit "
                            f"{sha}: expected 4 (recorded by the pins file {tampered}), found 3.")
    assert not (tmp_path / "bad").exists()


def test_a_pinned_build_refuses_sets_whose_commit_is_unknown(tmp_path: Path):
    with pytest.raises(DataError) as e:
        build_eval_repo(tmp_path / "eval", names=["mmlu", "mmlu_stem", "ifeval"], from_hub=HubBuild())
    assert str(e.value) == ("No pinned commit for cais/mmlu, needed by evaluation set(s) mmlu, mmlu_stem: the pin "
                            "table records no commit sha for them.")
    assert "--unpinned" in e.value.hint and "--pins" in e.value.hint
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("status", [401, 403])
def test_a_gated_repo_without_access_names_the_repo_and_where_to_accept_its_terms(status: int, upstream_hub,
                                                                                   tmp_path: Path):
    upstream_hub.faults.http_error(status, times=None, path_glob="/api/datasets/walledai/XSTest/auth-check")
    out = tmp_path / "eval"
    result = _build(out, ["gsm8k", "xstest"], "--unpinned")
    err = result.exception
    assert isinstance(err, DataError), result.output
    assert str(err) == (f"Dataset walledai/XSTest (needed by 'xstest') cannot be read: it is gated and the token's "
                        f"user has no access to it (HTTP {status}).")
    assert f"Open {upstream_hub.url}/datasets/walledai/XSTest while logged in, accept the dataset's terms" in err.hint
    assert not out.exists()


def test_decontaminating_a_domain_against_the_pushed_evaluation_repo(upstream_hub, hub_root: Path, tmp_path: Path):
    build_eval_repo(tmp_path / "eval", names=["gsm8k", "math"], push_to="mergebench/mergebench-eval",
                    from_hub=HubBuild(unpinned=True, cache_dir=tmp_path / "c"))
    eval_sha = HfApi().dataset_info("mergebench/mergebench-eval").sha
    publish_fixture_sources(hub_root, ["dart-math-hard", "numinamath-tir"])
    # a training row quoting a GSM8K item of the Hub-built set (not one of the packaged stand-ins)
    dart = [{"query": r["query"], "response": r["response"]} for r in pq.read_table(
        hub_root / "datasets/hkust-nlp/dart-math-hard/data/train-00000-of-00001.parquet").to_pylist()]
    leak = {"query": fx.GSM8K_TEST[0]["question"], "response": "42 - 30 = 12 muffins are left. The answer is: 12"}
    write_repo(hub_root / "datasets" / "mergebench-test" / "dart-leak",
               {"data/train-00000-of-00001.parquet": parquet_bytes([*dart, leak])})

    result = CliRunner().invoke(data_app, [
        "build", "math", "--out", str(tmp_path / "math"), "--source", "dart-math-hard=mergebench-test/dart-leak",
        "--eval-sets", "mergebench/mergebench-eval", "--cache-dir", str(tmp_path / "c"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["eval_sets"] == f"mergebench/mergebench-eval@{eval_sha}"
    report = json.loads((tmp_path / "math" / "mergebench_build.json").read_text())["decontamination"]
    assert set(report["eval_sets"]) == {"gsm8k", "math"}
    # the leaked GSM8K row, and NuminaMath's planted copy of the MATH stand-in (a row of the Hub-built math set);
    # DART's planted copy of a *packaged* GSM8K item is not in this evaluation repo, so it stays
    assert {k: v["removed"] for k, v in report["eval_sets"].items()} == {"gsm8k": 1, "math": 1}
    assert sorted(report["removed_ids"].values()) == [["gsm8k"], ["math"]]
    card = (tmp_path / "math" / "README.md").read_text()
    assert f"Evaluation sets:\nmergebench/mergebench-eval@{eval_sha}" in card
    assert "| `gsm8k` | 6 | 6 | 0 | 1 |" in card  # question and answer of 3 items


def test_eval_corpus_from_a_built_folder_reads_the_recorded_text_fields(upstream_hub, tmp_path: Path):
    build_eval_repo(tmp_path / "eval", names=["wmt14_fr_en", "xstest"],
                    from_hub=HubBuild(unpinned=True, cache_dir=tmp_path / "c"))
    corpus = EvalCorpus.from_repo(str(tmp_path / "eval"))
    stand_in = load_eval_set("wmt14_fr_en")["test"]
    assert corpus.texts == {"wmt14_fr_en": [t for r in stand_in for t in (r["translation"]["fr"],
                                                                          r["translation"]["en"])],
                            "xstest": [r["prompt"] for r in fx.XSTEST]}
    assert corpus.origin.startswith("local:")
    with pytest.raises(DataError, match=r"hold no mergebench_eval\.json"):
        EvalCorpus.from_repo(str(tmp_path / "c"))


# ---------------------------------------------------------------- converters, options, fixtures (no Hub)


def test_ai2_arc_rows_map_numeric_and_letter_keys_and_reject_an_unknown_key():
    rows = [{"id": "a", "question": "Q?", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]},
             "answerKey": "3"},
            {"id": "b", "question": "R?", "choices": {"text": ["u", "v"], "label": ["A", "B"]}, "answerKey": "A"}]
    out = ai2_arc_to_okapi([PartRows("jon-tow/okapi_arc_challenge", "fr", "test", rows)]).rows
    assert out == [{"id": "a", "instruction": "Q?", "option_a": "x", "option_b": "y", "option_c": "z",
                    "option_d": None, "option_e": None, "answer": "C"},
                   {"id": "b", "instruction": "R?", "option_a": "u", "option_b": "v", "option_c": None,
                    "option_d": None, "option_e": None, "answer": "A"}]
    rows[1]["answerKey"] = "E"
    with pytest.raises(DataError) as e:
        ai2_arc_to_okapi([PartRows("jon-tow/okapi_arc_challenge", "fr", "test", rows)])
    assert (e.value.source, e.value.row) == ("jon-tow/okapi_arc_challenge", 1)
    assert "answerKey 'E' is not one of the labels ['A', 'B']" in str(e.value)


def test_pin_table_covers_every_evaluation_set_and_cites_its_definition():
    assert set(TASK_SOURCES) == set(EVAL_SETS)
    for task in TASK_SOURCES.values():
        assert task.defined_by and all(p.repo_id in REPOS for p in task.parts)
    for repo in REPOS.values():  # a sha only with the record it was read from
        assert repo.sha is None or (re.fullmatch("[0-9a-f]{40}", repo.sha) and repo.sha_evidence != NO_SHA)
    assert {r for r, repo in REPOS.items() if repo.gated} == {
        "allenai/wildguardmix", "allenai/wildjailbreak", "walledai/HarmBench", "walledai/XSTest"}


def test_every_fixture_serves_the_parts_its_tasks_read():
    """Each part a task reads is a file of its repo's fixture (as a config of its card, or a named data file)."""
    for repo_id in REPOS:
        files = repo_fixture(repo_id)
        card = files["README.md"].decode()
        assert f"license: {REPOS[repo_id].license}" in card
        for task in (t for t in TASK_SOURCES.values() if repo_id in t.repos):
            for part in (p for p in task.parts if p.repo_id == repo_id):
                if part.data_files:
                    assert part.data_files in files
                elif part.config:
                    assert f"config_name: {part.config}" in card
    assert set(repo_fixture("allenai/wildjailbreak")) == set(repo_files("wildjailbreak"))
    assert b"datasets >= 4 no longer runs" in repo_fixture("neulab/conala")["conala.py"]
    arc = [r["answerKey"] for r in pq.read_table(io.BytesIO(
        repo_fixture("jon-tow/okapi_arc_challenge")["fr/test-00000-of-00001.parquet"])).to_pylist()]
    assert arc[1] in "12345" and arc[0] in LETTERS


def test_humaneval_plus_fixture_has_a_solution_that_passes_the_base_inputs_and_fails_the_plus_ones():
    for row in fx.HUMANEVAL_PLUS:  # every canonical solution passes its own test
        exec(row["prompt"] + row["canonical_solution"] + row["test"] + f"\ncheck({row['entry_point']})\n", {})
    row = fx.HUMANEVAL_PLUS[0]
    naive = row["prompt"] + "    return all(n % k for k in range(2, n))\n"
    base = {n: n > 1 and all(n % k for k in range(2, n)) for n in (2, 3, 4, 15, 17)}  # HumanEval-style inputs
    scope: dict = {}
    exec(naive, scope)
    assert all(scope["is_prime"](n) == expected for n, expected in base.items())
    with pytest.raises(AssertionError, match="True != False"):
        exec(naive + row["test"] + "\ncheck(is_prime)\n", {})


def test_hub_build_options_are_checked(tmp_path: Path):
    with pytest.raises(ConfigError, match="choose one"):
        HubBuild(unpinned=True, pins=tmp_path / "p.json")
    (tmp_path / "p.json").write_text(json.dumps([{"name": "gsm8k"}]))
    with pytest.raises(ConfigError, match="records no upstream commits"):
        Pins.read(tmp_path / "p.json")
    result = CliRunner().invoke(data_app, ["eval-sets", "--out", str(tmp_path / "o"), "--unpinned"])
    assert isinstance(result.exception, ConfigError)
    assert result.exception.hint == "Add --from-hub, or drop them to build from the packaged data and stand-ins."
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_every_evaluation_set_builds_from_its_upstream_fixture_and_pushes_a_valid_card(upstream_hub, tmp_path: Path):
    result = build_eval_repo(tmp_path / "eval", push_to="mergebench/mergebench-eval",
                             from_hub=HubBuild(unpinned=True, cache_dir=tmp_path / "c"))
    hub_configs = {c["name"]: c for c in result.configs if c["origin"] == "hub"}
    assert set(hub_configs) == set(TASK_SOURCES)
    for name, config in hub_configs.items():
        assert config["rows"]["test"] == len(_rows(tmp_path / "eval", name)) > 0
        assert [p["sha"] for p in config["upstream_parts"]] == [HfApi().dataset_info(p.repo_id).sha
                                                               for p in TASK_SOURCES[name].parts]
    DatasetCard.load("mergebench/mergebench-eval", repo_type="dataset").validate()


def upstream_table() -> str:
    """The task table README.md and mergebench/eval/README.md show, from the pin table and the task registry."""
    from mergebench.eval.tasks import TASKS

    lines = ["| eval set | task (`mb_*`) | upstream: repo · config · split | pinned commit | upstream rows | "
             "main metric |", "|---|---|---|---|---|---|"]
    for name, source in TASK_SOURCES.items():
        tasks = [t for t in TASKS.values() if t.eval_set == name and t.role != "tiny"]
        first = source.parts[0]
        if len(source.repos) == 1:  # several configs of one repo (MATH, HarmBench) on one line
            configs = ", ".join(p.config or "default" for p in source.parts)
            where = f"`{first.repo_id}` · {configs} · {first.split}"
        else:
            where = "<br>".join(f"`{p.repo_id}` · {p.config or 'default'} · {p.split}" for p in source.parts)
        shas = list(dict.fromkeys(f"`{REPOS[r].sha[:12]}`" if REPOS[r].sha else "unpinned" for r in source.repos))
        rows = [p.rows for p in source.parts]
        total = ("—" if None in rows else f"{sum(r for r in rows if r is not None):,}" if len(source.repos) == 1
                 else "; ".join(f"{r:,}" for r in rows if r is not None))
        metric = ", ".join(dict.fromkeys(f"{t.main_metric}" for t in tasks))
        lines.append(f"| `{name}` | {', '.join(t.name.removeprefix('mb_') for t in tasks)} | {where} | "
                     f"{', '.join(shas)} | {total} | {metric} |")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("readme", ["README.md", "mergebench/eval/README.md"])
def test_readmes_show_the_pin_table(readme: str):
    text = (Path(__file__).parents[2] / readme).read_text(encoding="utf-8")
    assert upstream_table() in text, "regenerate the table with tests.data.test_eval_sets_hub.upstream_table()"
    command = "data eval-sets --from-hub --unpinned --out build/mergebench-eval --push-to ORG/mergebench-eval"
    assert f"mergebench {command}" in text
