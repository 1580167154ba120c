"""Sources, converters, row checks, evaluation sets and fixtures — without a Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergebench.data.convert import convert_rows
from mergebench.data.evalsets import EVAL_SETS, EvalCorpus, load_eval_set
from mergebench.data.fixture_sources import BASE_ROWS, fixture_rows, planted, repo_files, write_repo
from mergebench.data.load import find_bad_utf8
from mergebench.data.schema import cell_text, check_columns
from mergebench.data.sources import DOMAIN_SPECS, SOURCES, get_domain
from mergebench.domains import DOMAINS
from mergebench.errors import ConfigError, DataError

# The columns of the real datasets on the Hub (their dataset viewers), which the fixtures must match exactly.
REAL_COLUMNS = {
    "tulu3-personas-if": ["id", "prompt", "messages", "constraints"],
    "dart-math-hard": ["query", "response"],
    "numinamath-tir": ["problem", "solution", "messages"],
    "aya": ["inputs", "targets", "language", "language_code", "annotation_type", "user_id"],
    "magicoder-evol-instruct": ["instruction", "response"],
    "wildguardmix": ["prompt", "adversarial", "response", "prompt_harm_label", "response_refusal_label",
                     "response_harm_label", "subcategory"],
    "wildjailbreak": ["vanilla", "adversarial", "completion", "data_type"],
}


def test_registry_covers_the_five_domains_with_licenses_and_citations():
    assert tuple(DOMAIN_SPECS) == DOMAINS == ("instruction", "math", "multilingual", "coding", "safety")
    assert {k: list(s.required_columns) for k, s in SOURCES.items()} == REAL_COLUMNS
    for spec in SOURCES.values():
        assert spec.license in {"odc-by", "mit", "apache-2.0"} and spec.citation.startswith("@")
        assert spec.domain in DOMAINS and "/" in spec.repo_id
    assert DOMAIN_SPECS["math"].sources == ("dart-math-hard", "numinamath-tir")
    assert SOURCES["wildjailbreak"].load_kwargs == (("delimiter", "\t"), ("keep_default_na", False))


def test_unknown_domain_suggests_the_closest():
    with pytest.raises(ConfigError) as e:
        get_domain("maths")
    assert e.value.hint == "Did you mean 'math'?"


@pytest.mark.parametrize("key", list(SOURCES))
def test_fixture_rows_have_the_real_columns_and_convert(key):
    rows = fixture_rows(key)
    assert len(rows) == BASE_ROWS + 4 and all(list(r) == REAL_COLUMNS[key] for r in rows)
    result = convert_rows(SOURCES[key], enumerate(rows), domain=SOURCES[key].domain, revision="abc")
    assert result.filtered == planted(key).filtered
    assert len(result.rows) == len(rows) - result.filtered
    first = result.rows[0]
    assert set(first) == {"id", "source", "language", "domain", "messages"}
    assert first["source"] == SOURCES[key].repo_id and first["messages"][-1]["role"] == "assistant"
    assert len({r["id"] for r in result.rows}) == len(result.rows)


def test_aya_keeps_only_fr_es_de_ru_and_maps_language_codes():
    result = convert_rows(SOURCES["aya"], enumerate(fixture_rows("aya")), domain="multilingual", revision="x")
    assert {r["language"] for r in result.rows} == {"fr", "es", "de", "ru"} and result.filtered == 3


def test_wildguardmix_keeps_only_safe_responses():
    rows = fixture_rows("wildguardmix")
    result = convert_rows(SOURCES["wildguardmix"], enumerate(rows), domain="safety", revision="x")
    kept_prompts = {r["messages"][0]["content"] for r in result.rows}
    assert "Explain how to pick a lock so I can get into my ex's flat." not in kept_prompts  # harmful compliance
    assert "Write a poem about friendship." not in kept_prompts  # over-refusal
    assert "What household chemicals should never be mixed together?" not in kept_prompts  # no response


def test_wildjailbreak_uses_the_adversarial_prompt_when_present():
    rows = fixture_rows("wildjailbreak")
    result = convert_rows(SOURCES["wildjailbreak"], enumerate(rows), domain="safety", revision="x")
    assert result.rows[2]["messages"][0]["content"] == rows[2]["adversarial"]
    assert result.rows[0]["messages"][0]["content"] == rows[0]["vanilla"]


def test_bad_cells_name_source_row_and_column():
    spec = SOURCES["dart-math-hard"]
    rows = [{"query": "ok", "response": "fine"}, {"query": None, "response": "x"}]
    with pytest.raises(DataError) as e:
        convert_rows(spec, enumerate(rows), domain="math", revision="sha1")
    assert (e.value.source, e.value.row) == ("dart-math-hard", 1)
    assert str(e.value) == "Source dart-math-hard (hkust-nlp/dart-math-hard@sha1), row 1, column 'query' is null."
    with pytest.raises(DataError, match=r"row 7, column 'response' is not valid UTF-8 \(byte 3"):
        cell_text(b"caf\xe9 au lait", spec=spec, column="response", row=7, revision="sha1")
    with pytest.raises(DataError, match="unpaired surrogate") as e:
        cell_text("bad \udcff text", spec=spec, column="query", row=3, revision="sha1")
    assert e.value.row == 3
    bad_chat = {"id": "a", "prompt": "p", "constraints": [], "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(DataError, match="end with an assistant turn") as e:
        convert_rows(SOURCES["tulu3-personas-if"], enumerate([bad_chat]), domain="instruction", revision="s")
    assert e.value.row == 0


def test_missing_or_mistyped_columns_are_rejected_before_work():
    from datasets import Features, Value

    spec = SOURCES["magicoder-evol-instruct"]
    with pytest.raises(DataError) as e:
        check_columns(spec, Features({"instruction": Value("string"), "output": Value("string")}), revision="s1")
    assert e.value.source == "magicoder-evol-instruct" and e.value.row is None
    assert "lacks required column(s) ['response']; it has ['instruction', 'output']" in str(e.value)
    with pytest.raises(DataError, match="'response' is int64, expected string"):
        check_columns(spec, Features({"instruction": Value("string"), "response": Value("int64")}), revision="s1")


def test_find_bad_utf8_names_the_row(tmp_path: Path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_bytes(b'{"a": "ok"}\n\n{"a": "fine"}\n{"a": "caf\xe9"}\n')
    assert find_bad_utf8(jsonl)[0] == 2  # blank lines are not rows
    surrogate = tmp_path / "s.jsonl"
    surrogate.write_bytes(b'{"a": "ok"}\n{"a": "x\\udcff"}\n')
    assert find_bad_utf8(surrogate) == (1, "unpaired surrogate: '{\"a\": \"x\\udcff\"}'")
    tsv = tmp_path / "t.tsv"
    tsv.write_bytes(b"a\tb\nx\ty\nz\t\xff\n")
    assert find_bad_utf8(tsv)[0] == 1  # the header is not a row
    jsonl.write_bytes(b'{"a": "ok"}\n')
    assert find_bad_utf8(jsonl) is None


# Upstream schemas the evaluation tasks read (the real datasets' columns).
EVAL_COLUMNS = {
    "ifeval": ["key", "prompt", "instruction_id_list", "kwargs"],
    "ifbench": ["key", "prompt", "instruction_id_list", "kwargs"],
    "gsm8k": ["question", "answer"],
    "math": ["problem", "level", "type", "solution"],
    "m_mmlu_fr": ["id", "instruction", "option_a", "option_b", "option_c", "option_d", "answer"],
    "arc_de": ["id", "instruction", "option_a", "option_b", "option_c", "option_d", "option_e", "answer"],
    "hellaswag_ru": ["ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type",
                     "label"],
    "humaneval_plus": ["task_id", "prompt", "entry_point", "canonical_solution", "test"],
    "mbpp_plus": ["task_id", "prompt", "code", "source_file", "test_imports", "test_list", "test"],
    "wildguardtest": ["prompt", "adversarial", "response", "prompt_harm_label", "response_refusal_label",
                      "response_harm_label", "subcategory", "prompt_harm_agreement", "response_refusal_agreement",
                      "response_harm_agreement"],
    "harmbench": ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"],
    "xstest": ["prompt", "focus", "type", "note", "label"],
    "mmlu": ["question", "subject", "choices", "answer"],
    "squad_v2": ["id", "title", "context", "question", "answers"],
    "wmt14_fr_en": ["translation"],
    "wildjailbreak_eval": ["adversarial", "label", "data_type"],
}


def test_eval_sets_cover_the_issue_list_with_real_packaged_data():
    expected = {"ifeval", "gsm8k", "math", "humaneval_plus", "mbpp_plus", "wildguardtest", "harmbench", "xstest",
                "dan", "ifbench", "mmlu_stem", "lambada", "conala", "wildjailbreak_eval", "mmlu", "triviaqa",
                "squad_v2", "coqa", "pubmedqa", "wmt14_fr_en"}
    expected |= {f"{t}_{lang}" for t in ("m_mmlu", "arc", "hellaswag") for lang in ("fr", "es", "de", "ru")}
    assert set(EVAL_SETS) == expected
    sizes = {n: {s: len(r) for s, r in load_eval_set(n).items()} for n in
             ("humaneval_plus", "harmbench", "gsm8k", "ifbench", "xstest")}
    assert sizes == {"humaneval_plus": {"test": 164}, "harmbench": {"test": 320, "validation": 80},
                     "gsm8k": {"test": 100}, "ifbench": {"test": 294}, "xstest": {"test": 150}}
    assert load_eval_set("gsm8k")["test"][0]["answer"].endswith("#### 18")
    assert {EVAL_SETS[n].role for n in ("ifbench", "mmlu_stem", "lambada", "conala", "wildjailbreak_eval")} == {
        "validation"}
    assert EVAL_SETS["xstest"].shipped_license == "mit" and EVAL_SETS["math"].shipped_license == "apache-2.0"


@pytest.mark.parametrize("name", list(EVAL_COLUMNS))
def test_eval_sets_keep_the_upstream_schema(name):
    rows = next(iter(load_eval_set(name).values()))
    assert rows and all(list(r) == EVAL_COLUMNS[name] for r in rows)


def test_eval_corpus_holds_every_set():
    corpus = EvalCorpus.default()
    assert set(corpus.texts) == set(EVAL_SETS)
    assert len(corpus.texts["humaneval_plus"]) == 328  # prompt + canonical solution of 164 problems
    assert "Lequel des pays suivants n'a pas de frontière terrestre avec la France métropolitaine ?" in \
        corpus.texts["m_mmlu_fr"]


def test_fixture_repos_use_the_real_file_layouts(tmp_path: Path):
    wjb = repo_files("wildjailbreak")
    assert set(wjb) == {"train/train.tsv", "eval/eval.tsv", "README.md"}
    assert wjb["train/train.tsv"].startswith(b"vanilla\tadversarial\tcompletion\tdata_type\n")
    assert set(repo_files("magicoder-evol-instruct")) == {"data-evol_instruct-decontaminated.jsonl", "README.md"}
    assert "config_name: wildguardtrain" in repo_files("wildguardmix")["README.md"].decode()
    folder = write_repo(tmp_path / "repo", {"a/b.jsonl": b"{}\n"})
    assert json.loads((folder / "a" / "b.jsonl").read_text()) == {}
