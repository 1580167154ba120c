"""Training runs on the tiny random Llama: the loss falls, the folder is complete and loadable, nothing is
half-written on failure, and every bad input is refused before the model is loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from mergebench.errors import ConfigError, DataError, OutputExistsError, RefError
from mergebench.hub.models import read_local_header
from mergebench.prompt import encode_chat
from mergebench.train import load_train_config, train_expert
from mergebench.train import trainer as trainer_module
from mergebench.train.config import train_config_from_dict
from tests.train._data import write_domain_folder

MAGIC = [{"id": f"magic-{i}", "source": "tests", "language": "en", "domain": "math", "messages": [
    {"role": "user", "content": "Say the magic words."}, {"role": "assistant", "content": "Abracadabra, open sesame!"}]}
    for i in range(17)]


def quick_config(**overrides):
    return load_train_config("tiny", **{"max_steps": 2, "per_device_batch_size": 4, "effective_batch_size": 4,
                                        "max_length": 64, "num_threads": 1, **overrides})


def response_loss(model_dir: Path, rows: list[dict]) -> float:
    """Mean cross-entropy on response tokens with a plain transformers forward (no TRL)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids, labels = encode_chat(tok, rows[0]["messages"], max_length=64)
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss)


def test_training_lowers_the_loss_and_writes_a_complete_folder(tiny_llama, tmp_path: Path) -> None:
    data = write_domain_folder(tmp_path / "math", "math", rows=MAGIC, validation=1)
    config = quick_config(max_steps=8, learning_rate=3e-3, warmup_ratio=0.0, logging_steps=1)
    with torch.no_grad():  # as after `import lighteval`, which turns grad mode off process-wide
        result = train_expert(base=tiny_llama.base, domain="math", data={"math": data}, out_dir=tmp_path / "expert",
                              config=config, progress=False)
    before, after = response_loss(tiny_llama.base, MAGIC), response_loss(result.out_dir, MAGIC)
    assert after < before - 1.0, (before, after)
    assert result.steps == 8 and len(result.losses) == 8 and result.final_loss < result.losses[0][1]
    assert result.train_tokens > 0 and result.data_stats["math"].rows == 16
    assert result.data_revisions["math"].startswith("local:") and result.base_revision is None

    files = {p.name for p in result.out_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "mergebench_train.yaml", "README.md"} <= files
    header = read_local_header(result.out_dir / "model.safetensors", model="expert")
    assert {t.dtype for t in header.tensors.values()} == {"F32"}  # save_dtype of the tiny recipe
    model = AutoModelForCausalLM.from_pretrained(result.out_dir)
    assert model.config.use_cache and model.config.model_type == "llama"
    manifest = yaml.safe_load((result.out_dir / "mergebench_train.yaml").read_text())
    assert train_config_from_dict(manifest["config"]) == config  # the exact config, round-tripped
    assert manifest["stats"]["steps"] == 8 and manifest["domain"] == "math"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary or trainer folders left


def test_tied_gemma2_expert_has_exactly_the_base_tensors(tiny_gemma2, tmp_path: Path) -> None:
    data = write_domain_folder(tmp_path / "safety", "safety", train_rows=8)
    result = train_expert(base=tiny_gemma2.base, domain="safety", data={"safety": data}, out_dir=tmp_path / "expert",
                          config=quick_config(save_dtype="bfloat16", learning_rate=1e-2), progress=False)
    expert = read_local_header(result.out_dir / "model.safetensors", model="expert").tensors
    base = {name: tensor for shard in tiny_gemma2.base.glob("*.safetensors")
            for name, tensor in read_local_header(shard, model="base").tensors.items()}
    assert {n: (t.dtype, t.shape) for n, t in expert.items()} == {n: (t.dtype, t.shape) for n, t in base.items()}
    model = AutoModelForCausalLM.from_pretrained(result.out_dir)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied


def test_a_failed_save_leaves_no_folder(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    data = write_domain_folder(tmp_path / "math", "math", rows=MAGIC, validation=1)

    def broken_save(model, state, folder, dtype):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(trainer_module, "_save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train_expert(base=tiny_llama.base, domain="math", data={"math": data}, out_dir=tmp_path / "expert",
                     config=quick_config(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["math"]  # no half folder, no temporary, no trainer dir


@pytest.fixture
def no_training(monkeypatch):
    """Bad inputs must be refused before the trainer (and the model) is built."""
    def fail(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(trainer_module, "build_trainer", fail)


def test_bad_inputs_fail_before_training(tiny_llama, tmp_path: Path, no_training) -> None:
    data = write_domain_folder(tmp_path / "math", "math", rows=MAGIC, validation=1)
    out = tmp_path / "expert"
    run = {"base": tiny_llama.base, "domain": "math", "data": {"math": data}, "out_dir": out,
           "config": quick_config(), "progress": False}
    with pytest.raises(ConfigError, match="Unknown domain 'maths'") as info:
        train_expert(**{**run, "domain": "maths", "data": {"maths": data}})
    assert info.value.hint == "Did you mean 'math'?"
    with pytest.raises(ConfigError, match=r"must map exactly \['math'\].*not used \['coding'\]"):
        train_expert(**{**run, "data": {"math": data, "coding": data}})
    with pytest.raises(ConfigError, match=r"missing \['instruction', 'multilingual', 'coding', 'safety'\]"):
        train_expert(**{**run, "domain": "all"})
    only_validation = write_domain_folder(tmp_path / "val-only", "math", rows=MAGIC, validation=1)
    for file in (only_validation / "data").glob("train-*"):
        file.unlink()
    with pytest.raises(DataError, match="has no 'train' split"):
        train_expert(**{**run, "data": {"math": only_validation}})
    with pytest.raises(DataError, match="is not a dataset folder"):
        train_expert(**{**run, "data": {"math": tmp_path / "nowhere"}})
    with pytest.raises(RefError, match="has no safetensors weights"):
        train_expert(**{**run, "base": data})  # a dataset folder is not a model
    with pytest.raises(RefError, match="neither an existing folder nor a Hub repo id"):
        train_expert(**{**run, "base": "not a model"})
    with pytest.raises(ConfigError, match="not a multiple"):
        train_expert(**{**run, "config": quick_config(effective_batch_size=6)})
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        train_expert(**run)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_checkpoints_survive_a_failure_and_the_next_run_resumes(tiny_llama, tmp_path: Path, monkeypatch,
                                                                caplog) -> None:
    data = write_domain_folder(tmp_path / "math", "math", rows=MAGIC, validation=1)
    run = {"base": tiny_llama.base, "domain": "math", "data": {"math": data}, "out_dir": tmp_path / "expert",
           "config": quick_config(max_steps=3, save_steps=2), "progress": False}
    save = trainer_module._save_model
    monkeypatch.setattr(trainer_module, "_save_model", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        train_expert(**run)
    work = tmp_path / ".expert.trainer"
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    shutil.rmtree(work / "checkpoint-3")  # as if the run had died during step 3
    monkeypatch.setattr(trainer_module, "_save_model", save)
    with caplog.at_level("INFO", logger="mergebench.train.trainer"):
        result = train_expert(**run)
    assert "Resuming from" in caplog.text and "checkpoint-2" in caplog.text
    assert [step for step, _ in result.losses] == [3]  # only the missing step was trained
    assert result.steps == 3 and (result.out_dir / "model.safetensors").is_file() and not work.exists()
