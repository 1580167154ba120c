"""Card validation through the loopback Hub's /api/validate-yaml, with the real client's card classes."""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    RepoCard,
    SpaceCard,
)

from mergebench.hubserver import validate_card


def _model_card(**data: object) -> ModelCard:
    return ModelCard.from_template(ModelCardData(**data), template_str="---\n{{ card_data }}\n---\n# Card\n")


def test_good_model_card_with_eval_results_passes(hub) -> None:
    card = _model_card(
        base_model=["org/base", "org/math-expert"], base_model_relation="merge", license="llama3.1",
        tags=["merge"], library_name="transformers", model_name="org/merged", datasets=["org/data"],
        eval_results=[EvalResult(task_type="text-generation", dataset_type="gsm8k", dataset_name="GSM8K",
                                 metric_type="accuracy", metric_value=0.42)],
    )
    card.validate()
    assert hub.stats.count("POST", "/api/validate-yaml") == 1


@pytest.mark.parametrize(("data", "message"), [
    ({"license": "not-a-license"}, '"license" with value "not-a-license" must be one of'),
    ({"base_model": "org/base", "base_model_relation": "fused"},
     '"base_model_relation" with value "fused" must be one of [adapter, merge, quantized, finetune]'),
    ({"base_model": ["org/ok", "not a repo id!"]}, '"base_model[1]" with value "not a repo id!" is not a valid'),
    ({"base_model_relation": "merge"}, '"base_model_relation" requires "base_model"'),
    ({"pipeline_tag": "text-gen"}, '"pipeline_tag" with value "text-gen" is not a known task'),
])
def test_bad_model_cards_raise_with_reasons(hub, data, message) -> None:
    with pytest.raises(ValueError) as info:
        _model_card(**data).validate()
    assert message in str(info.value)
    assert str(info.value).startswith("Invalid metadata in README.md.")


def test_model_index_structure_errors_name_the_field(hub) -> None:
    # ModelCard would refuse to parse this locally; RepoCard keeps the raw mapping and validates as a model.
    card = RepoCard("---\nmodel-index:\n- name: m\n  results:\n  - task: {}\n    dataset: {type: gsm8k}\n"
                     "    metrics:\n    - {type: accuracy}\n---\n")
    with pytest.raises(ValueError) as info:
        card.validate(repo_type="model")
    text = str(info.value)
    assert '"model-index[0].results[0].task.type" is required' in text
    assert '"model-index[0].results[0].dataset.name" is required' in text
    assert '"model-index[0].results[0].metrics[0].value" is required' in text


def test_unparseable_and_non_mapping_front_matter(hub) -> None:
    # The card classes cannot even load this; POST it the way `RepoCard.validate` does.
    r = httpx.post(f"{hub.url}/api/validate-yaml", headers={"Accept": "text/plain"},
                   json={"content": "---\nlicense: [mit\n---\n# x\n", "repoType": "model"})
    assert r.status_code == 400 and "Error parsing YAML metadata" in r.text
    r = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": "---\nlicense: x\n---\n", "repoType": "model"})
    assert r.status_code == 400 and r.json()["errors"][0]["message"].startswith('"license" with value "x"')
    report = validate_card("---\n- just\n- a list\n---\n")
    assert report.errors == ["YAML metadata must be a mapping (key: value), got a list"]
    empty = validate_card("# no front matter\n")
    assert empty.ok and "Empty or missing yaml metadata" in empty.warnings[0]


def test_dataset_cards(hub) -> None:
    good = DatasetCard.from_template(DatasetCardData(
        license=["mit", "odc-by"], language=["en", "fr"], task_categories=["text-generation"],
        size_categories=["1K<n<10K"], pretty_name="Pairs",
        configs=[{"config_name": "default", "default": True,
                  "data_files": [{"split": "train", "path": "data/train-*"}]},
                 {"config_name": "gsm8k", "data_files": "gsm8k/*.parquet"}]),
        template_str="---\n{{ card_data }}\n---\n# Data\n")
    good.validate()
    bad = DatasetCard("---\nconfigs:\n- config_name: a\n  data_files: [{path: x}]\n- config_name: a\n"
                      "size_categories: [huge]\ntask_categories: [chatting]\n---\n")
    with pytest.raises(ValueError) as info:
        bad.validate()
    text = str(info.value)
    assert '"configs[0].data_files[0].split" is required' in text
    assert '"configs[1].config_name" with value "a" is used more than once' in text
    assert '"size_categories[0]" with value "huge" must be one of' in text
    assert '"task_categories[0]" with value "chatting"' in text


def test_space_cards(hub) -> None:
    SpaceCard("---\nsdk: gradio\ncolorFrom: blue\ncolorTo: red\napp_file: app.py\n---\n").validate()
    with pytest.raises(ValueError, match='"sdk" is required'):
        SpaceCard("---\ntitle: x\n---\n").validate()


def test_create_commit_refuses_a_bad_readme_before_uploading(hub) -> None:
    api = HfApi()
    api.create_repo("alice/carded")
    with pytest.raises(ValueError, match='"license" with value "nope"') as info:
        api.upload_file(path_or_fileobj=b"---\nlicense: nope\n---\n", path_in_repo="README.md", repo_id="alice/carded")
    assert "Invalid metadata in README.md" in str(info.value)
    assert not (hub.repo_dir("alice/carded") / "README.md").exists()
    with pytest.warns(UserWarning, match="Empty or missing yaml metadata"):
        api.upload_file(path_or_fileobj=b"# plain\n", path_in_repo="README.md", repo_id="alice/carded")
    assert (hub.repo_dir("alice/carded") / "README.md").read_bytes() == b"# plain\n"
